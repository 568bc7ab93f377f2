"""Stage 2: image prototypes (DESIGN.md §3 step 3).

Each image is resized to a square, scaled to [-1, 1] and VAE-encoded (one latent sample x scaling factor). Per class,
LocalOutlierFactor drops outliers and k-means (k-means++ init, best of `n_init`) clusters the inliers; the cluster
centres are the prototypes. LOF and k-means are written in torch so they run wherever the tensors are (GPU or CPU);
tests hold them to scikit-learn's results.

Example:
    >>> latents = encode_images(vae, images, resolution=512, seeds=[0, 1, 2])
    >>> result = build_prototypes(latents.flatten(1), ipc=10, contamination=0.1, seed=0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image


def image_generators(seed: int, keys: list[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per item, seeded from (seed, key): results do not depend on batching or process sharding."""
    return [torch.Generator(device).manual_seed(seed * 1_000_003 + key) for key in keys]


def preprocess(images: list[Image.Image], resolution: int) -> torch.Tensor:
    """Resizes to resolution x resolution (aspect not kept, bilinear with antialiasing) and scales to [-1, 1]."""
    from torchvision.transforms.functional import pil_to_tensor, resize

    tensors = [resize(pil_to_tensor(im.convert("RGB")), [resolution, resolution], antialias=True) for im in images]
    return torch.stack(tensors).float() / 127.5 - 1.0


@torch.no_grad()
def encode_images(vae, images: list[Image.Image], *, resolution: int, seeds: list[int] | None = None,
                  seed: int = 0, batch_size: int = 16) -> torch.Tensor:
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
        generators = image_generators(seed, keys[start:start + batch_size], vae.device)
        dist = vae.encode(pixels).latent_dist
        out.append((dist.sample(generator=generators) * vae.config.scaling_factor).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    sq = (x * x).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return d2.clamp_min_(0).sqrt_().fill_diagonal_(float("inf"))


def local_outlier_factor(x: torch.Tensor, n_neighbors: int = 10) -> torch.Tensor:
    """Local outlier factor of every row of `x` (n, d) against the others, as scikit-learn computes it.

    Returns the LOF scores (float64, shape (n,)); scikit-learn's `negative_outlier_factor_` is their negation.
    """
    n = x.shape[0]
    k = max(1, min(n_neighbors, n - 1))
    dist, idx = _pairwise_distances(x).topk(k, dim=1, largest=False)  # each point excluded from its own neighbours
    k_distance = dist[:, -1]
    reach = torch.maximum(dist, k_distance[idx])
    lrd = 1.0 / (reach.mean(1) + 1e-10)
    return lrd[idx].mean(1) / lrd


def outlier_mask(x: torch.Tensor, contamination: float, n_neighbors: int = 10) -> torch.Tensor:
    """Boolean mask of the outliers LocalOutlierFactor(n_neighbors, contamination).fit_predict(x) flags.

    contamination 0 flags none (the paper's setting for CIFAR).
    """
    if contamination <= 0 or x.shape[0] < 3:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    negative = -local_outlier_factor(x, n_neighbors)
    offset = torch.quantile(negative, contamination)  # linear interpolation, as np.percentile
    return negative < offset


@dataclass
class KMeansResult:
    centers: torch.Tensor  # (k, d)
    labels: torch.Tensor  # (n,) cluster of every row
    inertia: float  # sum of squared distances of rows to their centre
    n_iter: int  # Lloyd iterations of the winning restart


def _sq_dist(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (x_sq[:, None] + (c * c).sum(1)[None, :] - 2.0 * (x @ c.T)).clamp_min_(0)


def _kmeans_plusplus(x: torch.Tensor, x_sq: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (2 + log k candidates per step, the best kept), as scikit-learn's default init."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = torch.randint(n, (1,), generator=generator, device=generator.device).to(x.device)
    centers = [x[first[0]]]
    closest = _sq_dist(x, x_sq, x[first]).squeeze(1)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than clusters: take any
            cand = torch.randint(n, (trials,), generator=generator, device=generator.device).to(x.device)
        else:
            probs = (closest / total).to(generator.device)
            cand = torch.multinomial(probs, trials, replacement=True, generator=generator).to(x.device)
        cand_closest = torch.minimum(closest[None, :], _sq_dist(x, x_sq, x[cand]).T)  # (trials, n)
        best = int(cand_closest.sum(1).argmin())
        closest = cand_closest[best]
        centers.append(x[cand[best]])
    return torch.stack(centers)


def _lloyd(x, x_sq, centers, max_iter, tol_abs):
    k = centers.shape[0]
    labels = None
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007
        new_labels = _sq_dist(x, x_sq, centers).argmin(1)
        counts = torch.bincount(new_labels, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, new_labels, x)
        new_centers = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        empty = counts == 0
        if empty.any():  # relocate empty clusters to the points farthest from their centres
            far = _sq_dist(x, x_sq, centers).gather(1, new_labels[:, None]).squeeze(1)
            far_idx = far.topk(int(empty.sum())).indices
            new_centers[empty] = x[far_idx]
        shift = ((new_centers - centers) ** 2).sum()
        centers = new_centers
        if labels is not None and torch.equal(labels, new_labels):
            break
        labels = new_labels
        if shift <= tol_abs:
            break
    labels = _sq_dist(x, x_sq, centers).argmin(1)
    return centers, labels, n_iter


def kmeans(x: torch.Tensor, n_clusters: int, *, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           seed: int = 0) -> KMeansResult:
    """k-means (k-means++ init, Lloyd iterations, best of `n_init` restarts by inertia), like scikit-learn's KMeans.

    Args:
        x: (n, d) data on any device.
        n_clusters: number of clusters; must be <= n.
        n_init: restarts; the lowest inertia wins.
        max_iter: Lloyd iterations per restart.
        tol: convergence threshold on the squared centre shift, relative to the mean per-feature variance.
        seed: seeds the k-means++ draws.
    """
    n = x.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"`n_clusters` must be in [1, {n}] for {n} samples, got {n_clusters}")
    x = x.float()
    mean = x.mean(0)
    xc = x - mean  # centring, as scikit-learn does, for precision of the squared-distance expansion
    x_sq = (xc * xc).sum(1)
    tol_abs = float(xc.var(0, unbiased=False).mean()) * tol
    generator = torch.Generator("cpu").manual_seed(seed)
    best = None
    for _ in range(n_init):
        centers = _kmeans_plusplus(xc, x_sq, n_clusters, generator)
        centers, labels, n_iter = _lloyd(xc, x_sq, centers, max_iter, tol_abs)
        inertia = float(((xc - centers[labels]) ** 2).sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(centers, labels, inertia, n_iter)
    best.centers = best.centers + mean
    return best


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


def build_prototypes(latents: torch.Tensor, ipc: int, *, contamination: float = 0.1, n_neighbors: int = 10,
                     n_init: int = 10, max_iter: int = 300, tol: float = 1e-4, seed: int = 0) -> ClassPrototypes:
    """Drops LOF outliers from one class's latents and clusters the inliers into `ipc` prototypes.

    Args:
        latents: (n, C, h, w) scaled latents of one class.
        ipc: number of prototypes; must not exceed the number of inliers.
        contamination: fraction flagged as outliers; 0 keeps every image.
        n_neighbors: LOF neighbourhood size.
        n_init, max_iter, tol, seed: k-means settings (see `kmeans`).
    """
    flat = latents.flatten(1)
    outliers = outlier_mask(flat, contamination, n_neighbors)
    inliers = (~outliers).nonzero().squeeze(1)
    if ipc > len(inliers):
        raise ValueError(f"cannot build {ipc} prototypes from {len(inliers)} inlier images "
                         f"({len(flat)} images, {int(outliers.sum())} outliers)")
    result = kmeans(flat[inliers], ipc, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed)
    assignment = torch.full((len(flat),), -1, dtype=torch.long)
    assignment[inliers.cpu()] = result.labels.cpu()
    sizes = torch.bincount(result.labels.cpu(), minlength=ipc).tolist()
    centers = result.centers.reshape(ipc, *latents.shape[1:]).cpu()
    return ClassPrototypes(centers, assignment, sizes, result.inertia)


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
