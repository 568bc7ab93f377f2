"""The embedded sample dataset: procedurally drawn shapes, deterministic, no files and no licence questions.

Each class is one kind of figure drawn at a random position, size, rotation and colour over a random background with
pixel noise, so classes are easy to tell apart yet every image differs. Used as the default dataset (`--dataset
sample`) and wherever a small learnable dataset is needed offline.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

SAMPLE_CLASSES = ["circle", "square", "triangle", "cross", "stripes"]
SAMPLE_SPLITS = {"train": 30, "validation": 10}  # images per class
SAMPLE_SIZE = 64  # pixels


def _polygon(cx: float, cy: float, r: float, n: int, angle: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(angle + 2 * math.pi * i / n), cy + r * math.sin(angle + 2 * math.pi * i / n))
            for i in range(n)]


def draw_sample(class_index: int, seed: int, size: int = SAMPLE_SIZE) -> Image.Image:
    """Draws one image of class `class_index` (see `SAMPLE_CLASSES`) from `seed`."""
    rng = np.random.default_rng(seed)
    background = tuple(int(v) for v in rng.integers(0, 110, 3))
    color = tuple(int(v) for v in rng.integers(140, 256, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    r = size * rng.uniform(0.22, 0.38)
    cx, cy = (size / 2 + rng.uniform(-0.12, 0.12, 2) * size)
    angle = rng.uniform(0, 2 * math.pi)
    name = SAMPLE_CLASSES[class_index]
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, angle), fill=color)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.3, 3, angle), fill=color)
    elif name == "cross":
        w = max(2, int(r * 0.35))
        draw.line([(cx - r, cy - r), (cx + r, cy + r)], fill=color, width=w)
        draw.line([(cx - r, cy + r), (cx + r, cy - r)], fill=color, width=w)
    elif name == "stripes":
        period = int(rng.integers(6, 12))
        for x in range(0, size, period):
            draw.rectangle([x, 0, x + period // 2 - 1, size], fill=color)
    else:  # pragma: no cover - SAMPLE_CLASSES is closed
        raise ValueError(f"unknown sample class {class_index}")
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@functools.lru_cache(maxsize=4)
def load_sample(split: str = "train"):
    """Returns the sample split as a `datasets.Dataset` with `image` (Image) and `label` (ClassLabel) columns.

    Args:
        split: "train" (30 images per class) or "validation" (10 per class), disjoint seeds.
    """
    import datasets

    if split not in SAMPLE_SPLITS:
        raise ValueError(f"the sample dataset has splits {sorted(SAMPLE_SPLITS)}, got split {split!r}")
    per_class = SAMPLE_SPLITS[split]
    offset = 0 if split == "train" else 1_000_000
    images, labels = [], []
    for i in range(per_class):  # interleaved like a shuffled real dataset
        for c in range(len(SAMPLE_CLASSES)):
            images.append(draw_sample(c, seed=offset + c * 10_000 + i))
            labels.append(c)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=SAMPLE_CLASSES)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features, split=split)
