"""Image prototypes: torch LOF and k-means held to scikit-learn, and the per-class prototype builder."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.neighbors import LocalOutlierFactor

from vldd.stages.prototypes import build_prototypes, count_inliers, kmeans, local_outlier_factor, outlier_mask


def clustered(n, d, k=5, seed=0, spread=3.0, far=False):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * spread
    x = centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    if far:
        x[: max(1, n // 20)] *= 4  # a few far points for LOF to find
    return x.astype(np.float32)


@pytest.mark.parametrize("n, d, contamination", [(30, 64, 0.1), (120, 1024, 0.1), (57, 256, 0.2), (200, 4096, 0.05)])
def test_lof_flags_the_same_outliers_as_sklearn(n, d, contamination):
    x = clustered(n, d, k=max(2, n // 25), seed=n, far=True)  # clusters of ~25: no exact LOF ties
    reference = LocalOutlierFactor(n_neighbors=10, contamination=contamination).fit(x)
    flagged = reference.fit_predict(x) == -1
    mine = outlier_mask(torch.from_numpy(x), contamination, n_neighbors=10).numpy()
    np.testing.assert_array_equal(mine, flagged)
    np.testing.assert_allclose(-local_outlier_factor(torch.from_numpy(x)).numpy(), reference.negative_outlier_factor_,
                               rtol=1e-4)
    assert mine.sum() == n - count_inliers(n, contamination)


def test_contamination_zero_keeps_everything():
    x = torch.from_numpy(clustered(40, 32))
    assert not outlier_mask(x, 0.0).any()


@pytest.mark.parametrize("n, d, k", [(60, 128, 3), (150, 512, 10), (300, 2048, 10)])
def test_kmeans_inertia_within_one_percent_of_sklearn(n, d, k):
    x = clustered(n, d, k=k + 2, seed=k)
    reference = KMeans(n_clusters=k, n_init=10, random_state=0).fit(x)
    result = kmeans(torch.from_numpy(x), k, n_init=10, seed=0)
    assert result.inertia <= reference.inertia_ * 1.01
    # the returned inertia is the true sum of squared distances to the returned centres
    true = ((torch.from_numpy(x) - result.centers[result.labels]) ** 2).sum().item()
    assert true == pytest.approx(result.inertia, rel=1e-4)
    assert (torch.cdist(torch.from_numpy(x), result.centers).argmin(1) == result.labels).all()


def test_kmeans_on_an_embedding_equals_kmeans_on_the_rows():
    """With fewer rows than dimensions, k-means runs on an n-dim embedding with the same distances: same answer."""
    x = torch.from_numpy(clustered(80, 40, k=6, seed=3))  # n >= d: clustered as given
    rotation = torch.linalg.qr(torch.randn(240, 240, generator=torch.Generator().manual_seed(0)))[0]
    wide = torch.cat([x, torch.zeros(80, 200)], dim=1) @ rotation  # n < d: same distances, via the embedding
    direct, embedded = kmeans(x, 5, seed=0), kmeans(wide, 5, seed=0)
    assert torch.equal(direct.labels, embedded.labels)
    assert embedded.inertia == pytest.approx(direct.inertia, rel=1e-4)
    torch.testing.assert_close((embedded.centers @ rotation.T)[:, :40], direct.centers, rtol=1e-4, atol=1e-4)


def test_kmeans_finds_known_centres():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    offsets = torch.tensor([[0.5, 0.0], [-0.5, 0.0], [0.0, 0.5], [0.0, -0.5]])
    x = (centres[:, None, :] + offsets[None]).reshape(-1, 2)
    result = kmeans(x, 3, seed=1)
    found = sorted(map(tuple, result.centers.tolist()))
    expected = sorted(map(tuple, centres.tolist()))
    assert np.allclose(found, expected, atol=1e-5)
    assert result.inertia == pytest.approx(12 * 0.25, rel=1e-5)


def test_kmeans_is_seeded():
    x = torch.from_numpy(clustered(100, 64, k=8))
    a, b = kmeans(x, 6, seed=3), kmeans(x, 6, seed=3)
    assert torch.equal(a.centers, b.centers) and torch.equal(a.labels, b.labels)


def test_kmeans_rejects_more_clusters_than_points():
    with pytest.raises(ValueError, match="must be in \\[1, 4\\]"):
        kmeans(torch.zeros(4, 3), 5)


def test_build_prototypes_drops_outliers_then_clusters():
    latents = torch.from_numpy(clustered(50, 4 * 4 * 4, k=2, far=True)).reshape(50, 4, 4, 4)
    protos = build_prototypes(latents, 5, contamination=0.1, seed=0)
    assert protos.centers.shape == (5, 4, 4, 4)
    assert protos.n_outliers == 50 - count_inliers(50, 0.1) == 5
    assert sum(protos.cluster_sizes) == 45 and min(protos.cluster_sizes) >= 1
    # each centre is the mean of its members
    flat = latents.flatten(1)
    for c in range(5):
        members = flat[protos.assignment == c]
        torch.testing.assert_close(protos.centers[c].flatten(), members.mean(0), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="cannot build 48 prototypes from 45 inlier"):
        build_prototypes(latents, 48, contamination=0.1)
