"""Augmentations of the evaluation protocols: CutMix, PCA lighting, ShufflePatches and the per-protocol transforms.

Per-image transforms draw from the global torch RNG (as torchvision's do); the evaluation seeds it inside
`torch.random.fork_rng`, and DataLoader workers derive their seeds from the loader's seeded generator. CutMix draws
from an explicit `numpy.random.Generator`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Principal components of ImageNet pixel colours (AlexNet's "PCA lighting"): eigenvalues and eigenvectors (columns).
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))


class Lighting(nn.Module):
    """PCA lighting noise: adds eigvec @ (alpha * eigval) to every pixel, alpha ~ N(0, std^2) per image.

    Args:
        std: standard deviation of alpha (0.1 in the hard-label recipe).
    """

    def __init__(self, std: float = 0.1):
        super().__init__()
        self.std = std
        self.register_buffer("eigval", torch.tensor(PCA_EIGVAL))
        self.register_buffer("eigvec", torch.tensor(PCA_EIGVEC))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return image
        alpha = torch.randn(3) * self.std
        rgb = self.eigvec @ (alpha * self.eigval)
        return image + rgb.view(3, 1, 1).to(image)


class ShufflePatches(nn.Module):
    """Cuts an image (C, H, W) into `factor` vertical strips and shuffles them, then does the same with horizontal
    strips, as RDED's evaluation does: the factor x factor patches of its stitched images change places.

    Args:
        factor: strips per side; 1 leaves the image unchanged. The last strip takes any remainder pixels.
    """

    def __init__(self, factor: int):
        super().__init__()
        if factor < 1:
            raise ValueError(f"`factor` must be >= 1, got {factor}")
        self.factor = factor

    def _shuffle(self, image: torch.Tensor, dim: int) -> torch.Tensor:
        size = image.shape[dim] // self.factor
        bounds = [i * size for i in range(self.factor)] + [image.shape[dim]]
        strips = [image.narrow(dim, bounds[i], bounds[i + 1] - bounds[i]) for i in range(self.factor)]
        return torch.cat([strips[i] for i in torch.randperm(self.factor).tolist()], dim=dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.factor == 1:
            return image
        return self._shuffle(self._shuffle(image, -1), -2)


def cutmix(images: torch.Tensor, rng: np.random.Generator, beta: float = 1.0
           ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix on a batch: pastes one random box from a shuffled copy of the batch into every image.

    lam ~ Beta(beta, beta) sets the box's side to sqrt(1 - lam) of the image's, centred uniformly at random and
    clipped at the borders; the returned lam is then recomputed from the clipped box, so it is exactly the fraction
    of each image's pixels that still come from the image itself.

    Args:
        images: batch (B, C, H, W); not modified.
        rng: the generator of every random draw (lam, box, permutation).
        beta: Beta distribution parameter (1.0 = uniform lam).

    Returns:
        (mixed images, permutation: source of each image's box, lam: area fraction kept from the original)
    """
    batch, _, height, width = images.shape
    lam = rng.beta(beta, beta)
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y1, y2 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    x1, x2 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    perm = torch.from_numpy(rng.permutation(batch)).to(images.device)
    mixed = images.clone()
    mixed[:, :, y1:y2, x1:x2] = images[perm, :, y1:y2, x1:x2]
    lam = 1.0 - float((y2 - y1) * (x2 - x1)) / (height * width)
    return mixed, perm, lam


class IDCColorJitter(nn.Module):
    """Colour jitter of IDC/Minimax on a tensor image in [0, 1]: brightness, contrast and saturation in random order,
    each `image.lerp(target, alpha)` with alpha ~ U(-strength, strength) and no clamping (unlike torchvision's).

    Targets: black (brightness), the grey mean of the image (contrast), its greyscale (saturation); greyscale is
    0.299 R + 0.587 G + 0.114 B.

    Args:
        brightness: strength of the brightness lerp (0.4 in the hard-label recipe); 0 skips it.
        contrast: strength of the contrast lerp.
        saturation: strength of the saturation lerp.
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4):
        super().__init__()
        self.strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation}

    @staticmethod
    def _target(image: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "brightness":
            return torch.zeros_like(image)
        grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).expand_as(image)
        return grey.mean().expand_as(image) if kind == "contrast" else grey

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        kinds = [k for k, v in self.strengths.items() if v != 0]
        for i in torch.randperm(len(kinds)).tolist():
            strength = self.strengths[kinds[i]]
            alpha = float(torch.empty(()).uniform_(-strength, strength))
            image = image.lerp(self._target(image, kinds[i]), alpha)
        return image


def eval_transform(image_size: int, resize: int | None = None) -> T.Compose:
    """Test transform: resize the shorter side to `resize`, centre-crop `image_size`, normalise.

    Args:
        image_size: side of the crop, in pixels.
        resize: shorter side after resizing; None = image_size // 7 * 8 (RDED: 256 for 224). The hard-label
            harness (Minimax) uses `resize=image_size`: Resize(224) + CenterCrop(224).
    """
    resize = image_size // 7 * 8 if resize is None else resize
    return T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def hard_train_transform(image_size: int, lighting: float = 0.1) -> T.Compose:
    """Hard-label recipe as Minimax's `transform_imagenet(size, augment=True)`: Resize + CenterCrop to image_size,
    then RandomResizedCrop(scale 0.5-1), flip, IDC's ColorJitter(0.4, 0.4, 0.4) on the tensor, PCA lighting."""
    return T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(),
                      T.RandomResizedCrop(image_size, scale=(0.5, 1.0)), T.RandomHorizontalFlip(),
                      IDCColorJitter(0.4, 0.4, 0.4), Lighting(lighting), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def soft_train_transform(image_size: int, factor: int) -> T.Compose:
    """RDED recipe: ShufflePatches(factor), RandomResizedCrop(scale 1/factor-1), flip."""
    return T.Compose([T.ToTensor(), ShufflePatches(factor),
                      T.RandomResizedCrop(image_size, scale=(1.0 / factor, 1.0)), T.RandomHorizontalFlip(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def teacher_train_transform(image_size: int) -> T.Compose:
    """`vldd teacher`'s augmentation: at <= 64 px Resize + CenterCrop to the size, then RandomCrop with size/8 zero
    padding (4 px at 32 px, the standard CIFAR recipe) and a flip; above, RandomResizedCrop (scale 0.08-1, the
    ImageNet recipe) and a flip. Normalised with the ImageNet mean/std, as every evaluation transform is."""
    if image_size <= 64:
        crop = [T.Resize(image_size), T.CenterCrop(image_size), T.RandomCrop(image_size, padding=image_size // 8)]
    else:
        crop = [T.RandomResizedCrop(image_size)]
    return T.Compose([*crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
