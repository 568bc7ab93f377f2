"""Stage 2: image prototypes (docs/method.md, "3. Image prototypes").

Each image is resized to a square, scaled to [-1, 1] and VAE-encoded (one latent sample x scaling factor). Per class,
LocalOutlierFactor drops outliers and k-means (k-means++ init, best of `n_init`) clusters the inliers; the cluster
centres are the prototypes. LOF and k-means are written in torch so they run wherever the tensors are (GPU or CPU);
tests hold them to scikit-learn's results. One float64 Gram matrix per class serves both: LOF's distances, and an
n-dim embedding with the same distances on which k-means runs all its restarts at once (benchmarks/prototypes.py).

Example:
    >>> latents = encode_images(vae, images, resolution=512, seeds=[0, 1, 2])
    >>> result = build_prototypes(latents.flatten(1), ipc=10, contamination=0.1, seed=0)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from PIL import Image

from ..configs.distill import DataConfig, PrototypeConfig  # the defaults of the settings below: declared once, there
from ..core import seeding

logger = logging.getLogger(__name__)


def preprocess(images: list[Image.Image], resolution: int) -> torch.Tensor:
    """Resizes to resolution x resolution (aspect not kept, bilinear with antialiasing) and scales to [-1, 1]."""
    from torchvision.transforms.functional import pil_to_tensor, resize

    tensors = [resize(pil_to_tensor(im.convert("RGB")), [resolution, resolution], antialias=True) for im in images]
    return torch.stack(tensors).float() / 127.5 - 1.0


@torch.no_grad()
def encode_images(vae, images: list[Image.Image], *, resolution: int, seeds: list[int] | None = None,
                  seed: int = 0, batch_size: int = PrototypeConfig.encode_batch_size) -> torch.Tensor:
    """VAE-encodes images into scaled latents (4 x resolution/8 x resolution/8 for SD v1.5).

    Args:
        vae: an `AutoencoderKL`; its device and dtype are used as they are.
        images: RGB images of any size.
        resolution: square size the images are resized to before encoding.
        seeds: one key per image (e.g. its source row) for its latent sample; defaults to 0..n-1.
        seed: the run seed, mixed into every image's generator.
        batch_size: images per VAE call.

    Returns:
        float32 CPU tensor of shape (n, C, h, w), already multiplied by `vae.config.scaling_factor`.
    """
    keys = list(range(len(images))) if seeds is None else list(seeds)
    if len(keys) != len(images):
        raise ValueError(f"got {len(keys)} seeds for {len(images)} images")
    out = []
    for start in range(0, len(images), batch_size):
        pixels = preprocess(images[start:start + batch_size], resolution).to(vae.device, vae.dtype)
        generators = seeding.generators(seed, seeding.VAE_SAMPLE, keys[start:start + batch_size], vae.device)
        dist = vae.encode(pixels).latent_dist
        out.append((dist.sample(generator=generators) * vae.config.scaling_factor).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def _centered_gram(x: torch.Tensor, strips: int = 4) -> torch.Tensor:
    """Inner products of the rows of `x` (n, d) about their mean, in float64: the bulk of LOF's and k-means' work.

    The matrix is symmetric, so each strip of rows is multiplied only from the diagonal on and mirrored: 5/8 of the
    full product's flops for 4 strips.
    """
    x64 = x.to(torch.float64, copy=True)
    x64 -= x64.mean(0)
    n = x64.shape[0]
    step = max(1, -(-n // strips))
    gram = x64.new_empty(n, n)
    for i in range(0, n, step):
        strip = x64[i:i + step] @ x64[i:].T
        gram[i:i + step, i:] = strip
        gram[i + step:, i:i + step] = strip[:, step:].T
    return gram


def _recenter(gram: torch.Tensor) -> torch.Tensor:
    """The Gram matrix of the same rows centred on their own mean (for a subset of an already centred Gram)."""
    rows = gram.mean(1)
    return gram - rows[:, None] - rows[None, :] + rows.mean()


def _lof_from_gram(gram: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    n = gram.shape[0]
    k = max(1, min(n_neighbors, n - 1))
    sq = gram.diagonal()
    d2 = sq[:, None] + sq[None, :] - 2.0 * gram
    dist = d2.clamp_min_(0).sqrt_().fill_diagonal_(float("inf"))  # each point excluded from its own neighbours
    dist, idx = dist.topk(k, dim=1, largest=False)
    k_distance = dist[:, -1]
    reach = torch.maximum(dist, k_distance[idx])
    lrd = 1.0 / (reach.mean(1) + 1e-10)
    return lrd[idx].mean(1) / lrd


def local_outlier_factor(x: torch.Tensor, n_neighbors: int = PrototypeConfig.lof_neighbors) -> torch.Tensor:
    """Local outlier factor of every row of `x` (n, d) against the others, as scikit-learn computes it.

    Distances are computed in float64, as scikit-learn does for float32 input.

    Returns the LOF scores (float64, shape (n,)); scikit-learn's `negative_outlier_factor_` is their negation.
    """
    return _lof_from_gram(_centered_gram(x), n_neighbors)


def _outliers_from_lof(lof: torch.Tensor, contamination: float) -> torch.Tensor:
    negative = -lof
    offset = torch.quantile(negative, contamination)  # linear interpolation, as np.percentile
    return negative < offset


def outlier_mask(x: torch.Tensor, contamination: float, n_neighbors: int = PrototypeConfig.lof_neighbors
                 ) -> torch.Tensor:
    """Boolean mask of the outliers LocalOutlierFactor(n_neighbors, contamination).fit_predict(x) flags.

    contamination 0 flags none (the paper's setting for CIFAR).
    """
    if contamination <= 0 or x.shape[0] < 3:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    return _outliers_from_lof(local_outlier_factor(x, n_neighbors), contamination)


@dataclass
class KMeansResult:
    centers: torch.Tensor  # (k, d)
    labels: torch.Tensor  # (n,) cluster of every row
    inertia: float  # sum of squared distances of rows to their centre
    n_iter: int  # Lloyd iterations of the winning restart


def _sq_dist(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances (n, m) of rows `x` (with squared norms `x_sq`) to rows `c`: one GEMM."""
    return torch.addmm((c * c).sum(1), x, c.T, alpha=-2.0).add_(x_sq[:, None]).clamp_min_(0)


def _embed(gram: torch.Tensor) -> torch.Tensor:
    """Rows (n, n) with the inner products `gram` holds: a Cholesky factor, so pairwise distances are kept exactly.

    k-means only ever needs distances between rows and means of rows, so it can run on these n-dim rows instead of
    the d-dim originals: for a class of 1,300 latents of 16,384 values, every GEMM shrinks 12-fold.
    """
    # A jitter far below float32 resolution makes the (singular, since centred) matrix positive definite.
    jitter = 1e-9 * float(gram.diagonal().mean()) + 1e-30
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(gram + jitter * eye)
    if int(info) != 0:  # only if rounding left it indefinite
        values, vectors = torch.linalg.eigh(gram)
        factor = vectors * values.clamp_min(0).sqrt()
    return factor.float().contiguous()  # LAPACK returns column-major; row-major keeps row gathers and sums fast


def _kmeans_plusplus(x: torch.Tensor, x_sq: torch.Tensor, k: int, n_init: int,
                     generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (2 + log k candidates per step, the best kept), as scikit-learn's default init.

    All `n_init` restarts are drawn at once, so each step's candidate distances are one GEMM. Returns the (n_init, k)
    indices of the chosen rows.
    """
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    rows = torch.arange(n_init, device=x.device)
    chosen = torch.empty(n_init, k, dtype=torch.long, device=x.device)
    chosen[:, 0] = torch.randint(n, (n_init,), generator=generator, device=generator.device).to(x.device)
    closest = _sq_dist(x, x_sq, x[chosen[:, 0]]).T  # (n_init, n)
    for step in range(1, k):
        # a restart with fewer distinct points than clusters takes any
        weights = torch.where(closest.sum(1, keepdim=True) > 0, closest, 1.0).to(generator.device)
        cand = torch.multinomial(weights, trials, replacement=True, generator=generator).to(x.device)
        dist = _sq_dist(x, x_sq, x[cand.flatten()]).T.reshape(n_init, trials, n)
        cand_closest = torch.minimum(closest[:, None, :], dist)
        best = cand_closest.sum(2).argmin(1)
        closest = cand_closest[rows, best]
        chosen[:, step] = cand[rows, best]
    return chosen


def _means(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster means (r, k, d) and sizes (r, k) of r labelings (r, n) of the rows of `x` at once.

    The sums are one sparse (r*k, n) x (n, d) product: far cheaper than `index_add_` or a dense one-hot GEMM.
    """
    r, n = labels.shape
    slots = (labels + torch.arange(r, device=labels.device)[:, None] * k).flatten()
    rows = torch.arange(n, device=labels.device).repeat(r)
    member = torch.sparse_coo_tensor(torch.stack([slots, rows]), torch.ones(r * n, dtype=x.dtype, device=x.device),
                                     (r * k, n), check_invariants=False)
    counts = torch.bincount(slots, minlength=r * k)
    means = (member @ x) / counts.clamp_min(1)[:, None].to(x.dtype)
    return means.reshape(r, k, -1), counts.reshape(r, k)


def _lloyd(x, x_sq, centers, max_iter, tol_abs):
    """Lloyd iterations for all restarts at once (`centers` (n_init, k, d)): one GEMM per iteration, each restart stops
    on its own (labels unchanged, or centre shift <= tol_abs) and leaves the batch.

    Returns, per restart: the labels that made its final centres, the empty clusters it moved to far rows then
    ((clusters, rows), or None), and its iteration count.
    """
    n_init, k, _ = centers.shape
    n = x.shape[0]
    labels = torch.full((n_init, n), -1, dtype=torch.long, device=x.device)
    moves: list = [None] * n_init
    n_iter = [0] * n_init
    active = torch.arange(n_init, device=x.device)
    for it in range(1, max_iter + 1):
        current = centers[active]
        dist = _sq_dist(x, x_sq, current.flatten(0, 1)).reshape(n, len(active), k)
        new_labels = dist.argmin(2).T  # (a, n)
        new_centers, counts = _means(x, new_labels, k)
        for j, r in enumerate(active.tolist()):
            n_iter[r], moves[r] = it, None
            empty = counts[j] == 0
            if empty.any():  # relocate empty clusters to the rows farthest from their centres, as scikit-learn
                far = dist[:, j].gather(1, new_labels[j, :, None]).squeeze(1).topk(int(empty.sum())).indices
                new_centers[j, empty] = x[far]
                moves[r] = (empty.nonzero().squeeze(1), far)
        shift = ((new_centers - current) ** 2).sum((1, 2))
        same = (labels[active] == new_labels).all(1)
        centers[active] = new_centers
        labels[active] = new_labels
        active = active[~same & (shift > tol_abs)]
        if len(active) == 0:
            break
    return labels, moves, n_iter


def kmeans(x: torch.Tensor, n_clusters: int, *, n_init: int = PrototypeConfig.n_init,
           max_iter: int = PrototypeConfig.max_iter, tol: float = PrototypeConfig.tol, seed: int = 0) -> KMeansResult:
    """k-means (k-means++ init, Lloyd iterations, best of `n_init` restarts by inertia), like scikit-learn's KMeans.

    When there are fewer rows than dimensions (latents: 1,300 x 16,384), the iterations run on an n-dim embedding with
    the same pairwise distances; the restarts run batched. The centres, labels and inertia returned are computed on
    `x` itself.

    Args:
        x: (n, d) data on any device.
        n_clusters: number of clusters; must be <= n.
        n_init: restarts; the lowest inertia wins.
        max_iter: Lloyd iterations per restart.
        tol: convergence threshold on the squared centre shift, relative to the mean per-feature variance.
        seed: seeds the k-means++ draws.
    """
    _check_clusters(n_clusters, x.shape[0])
    return _kmeans(x, n_clusters, None, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed)


def _check_clusters(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"`n_clusters` must be in [1, {n}] for {n} samples, got {k}")


def _kmeans(x, n_clusters, gram, *, n_init, max_iter, tol, seed) -> KMeansResult:
    """`kmeans`, given (or not) the Gram matrix of `x` about any centre (float64)."""
    x = x.float()
    mean = x.mean(0)
    xc = x - mean  # centring, as scikit-learn does, for precision of the squared-distance expansion
    x_sq = (xc * xc).sum(1)
    tol_abs = float(x_sq.mean()) / x.shape[1] * tol  # mean per-feature variance x tol
    if x.shape[0] < x.shape[1]:
        # Duplicate rows share one embedded row, so their distance ties break as they would on x.
        unique, inverse = torch.unique(x, dim=0, return_inverse=True)
        if gram is None:
            gram = _centered_gram(unique)
        else:
            first = torch.empty(len(unique), dtype=torch.long, device=x.device)
            first[inverse] = torch.arange(len(x), device=x.device)
            gram = _recenter(gram[first][:, first])
        y = _embed(gram)[inverse]
    else:
        y = xc
    y_sq = (y * y).sum(1)

    # 1. k-means++ and Lloyd for every restart, on y.
    generator = torch.Generator("cpu").manual_seed(seed)
    centers = y[_kmeans_plusplus(y, y_sq, n_clusters, n_init, generator)]
    labels, moves, n_iter = _lloyd(y, y_sq, centers, max_iter, tol_abs)

    # 2. Pick the restart with the lowest inertia (its rows against their nearest final centre).
    dist = _sq_dist(y, y_sq, centers.flatten(0, 1)).reshape(len(y), n_init, n_clusters)
    best = int(dist.min(2).values.sum(0).argmin())

    # 3. Rebuild its centres on x from the labels (and moves) that made them; assign and score on x.
    center_x = _means(xc, labels[best, None], n_clusters)[0][0]
    if moves[best] is not None:
        center_x[moves[best][0]] = xc[moves[best][1]]
    final = _sq_dist(xc, x_sq, center_x).argmin(1)
    inertia = float(((xc - center_x[final]) ** 2).sum())
    return KMeansResult(center_x + mean, final, inertia, n_iter[best])


@dataclass
class ClassPrototypes:
    """The image prototypes of one class and how its images fell into them."""

    centers: torch.Tensor  # (k, C, h, w) prototype latents, already scaled by the VAE scaling factor
    assignment: torch.Tensor  # (n,) cluster of every image, -1 for LOF outliers
    cluster_sizes: list[int]  # images per cluster
    inertia: float  # k-means inertia on the inliers

    @property
    def n_outliers(self) -> int:
        return int((self.assignment < 0).sum())


def build_prototypes(latents: torch.Tensor, ipc: int, *, contamination: float,
                     n_neighbors: int = PrototypeConfig.lof_neighbors, n_init: int = PrototypeConfig.n_init,
                     max_iter: int = PrototypeConfig.max_iter, tol: float = PrototypeConfig.tol,
                     seed: int = 0) -> ClassPrototypes:
    """Drops LOF outliers from one class's latents and clusters the inliers into `ipc` prototypes.

    Args:
        latents: (n, C, h, w) scaled latents of one class.
        ipc: number of prototypes; must not exceed the number of inliers.
        contamination: fraction flagged as outliers; 0 keeps every image. No default: a run's is derived from its
            dataset (`DistillConfig.resolve`).
        n_neighbors: LOF neighbourhood size.
        n_init, max_iter, tol, seed: k-means settings (see `kmeans`).
    """
    flat = latents.flatten(1)
    # One float64 GEMM serves both LOF's distances and k-means' embedding.
    gram = _centered_gram(flat) if flat.shape[0] < flat.shape[1] or contamination > 0 else None
    if contamination > 0 and len(flat) >= 3:
        outliers = _outliers_from_lof(_lof_from_gram(gram, n_neighbors), contamination)
    else:
        outliers = torch.zeros(len(flat), dtype=torch.bool, device=flat.device)
    inliers = (~outliers).nonzero().squeeze(1)
    if ipc > len(inliers):
        raise ValueError(f"cannot build {ipc} prototypes from {len(inliers)} inlier images "
                         f"({len(flat)} images, {int(outliers.sum())} outliers)")
    _check_clusters(ipc, len(inliers))
    if gram is not None:
        gram = gram[inliers][:, inliers]
    result = _kmeans(flat[inliers], ipc, gram, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed)
    assignment = torch.full((len(flat),), -1, dtype=torch.long)
    assignment[inliers.cpu()] = result.labels.cpu()
    sizes = torch.bincount(result.labels.cpu(), minlength=ipc).tolist()
    centers = result.centers.reshape(ipc, *latents.shape[1:]).cpu()
    return ClassPrototypes(centers, assignment, sizes, result.inertia)


def clusters_per_class(counts: dict[int, int], class_names: list[str], *, ipc: int, contamination: float,
                       too_few: str = DataConfig.too_few_images) -> dict[int, int]:
    """How many prototypes each class gets: IPC, or (with `too_few="reduce"`) what its LOF inliers allow.

    Args:
        counts: images per label.
        class_names: every label's name, for messages.
        ipc, contamination: the run's images per class and LOF contamination.
        too_few: "error" raises, naming every class with fewer inliers than IPC; "reduce" gives them fewer clusters.
    """
    plan, short = {}, []
    for label, n in counts.items():
        usable = count_inliers(n, contamination)
        plan[label] = min(ipc, usable)
        if usable < ipc:
            short.append(f"{class_names[label]!r} ({n} images, {usable} after outlier removal)")
    if short and too_few == "error":
        raise ValueError(f"IPC {ipc} needs at least {ipc} inlier images per class; too few in: {', '.join(short)}. "
                         "Lower --ipc, add images, or set data.too_few_images=reduce")
    for line in short:
        logger.warning("class %s: fewer clusters than IPC %d", line, ipc)
    empty = [class_names[label] for label, k in plan.items() if k < 1]
    if empty:
        raise ValueError(f"classes {empty} have no usable image")
    return plan


def count_inliers(n_images: int, contamination: float) -> int:
    """How many images LOF keeps: its threshold is the `contamination` quantile, so ceil(c x (n - 1)) fall below."""
    if contamination <= 0 or n_images < 3:
        return n_images
    return n_images - math.ceil(round(contamination * (n_images - 1), 9))


def decode_latents(vae, latents: torch.Tensor) -> list[Image.Image]:
    """Decodes scaled latents to images (to show prototypes)."""
    with torch.no_grad():
        pixels = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
    arrays = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]
