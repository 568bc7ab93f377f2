"""Settings of `vldd teacher`: the soft-label protocol's teacher, trained on the real dataset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import check
from .evaluate import canonical_student
from .finetune import MIXED_PRECISIONS


@dataclass
class TeacherConfig:
    real: str  # real dataset to train on (Hub id, image folder, `save_to_disk` dir, or "sample")
    output: str = "teacher.pt"  # checkpoint to write (vldd classifier format; per-epoch state beside it)
    arch: str = "resnet18"  # "resnet18" (the recipe; 3x3 stem without max-pool at <= 64 px) or another vldd student
    width: float = 1.0  # channel multiplier of ResNetAP/ConvNet archs (1.0 = the published networks)
    image_size: int | None = None  # input side in pixels; None = the dataset profile's (32 CIFAR, 64 Tiny, else 224)
    epochs: int = 200  # training epochs (cosine schedule over them)
    batch_size: int = 128  # images per optimizer step (over all processes)
    lr: float = 0.1  # SGD learning rate at the start of the cosine schedule
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # SGD weight decay, on every parameter
    seed: int = 0  # initialisation, data order and augmentation
    train_split: str = "train"  # split trained on
    val_split: str = "validation"  # split scored every epoch; the default falls back to "test", then "val"
    real_config_name: str | None = None  # Hub configuration (subset) name of the real dataset
    real_revision: str | None = None  # Hub revision of the real dataset
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    mixed_precision: str = "no"  # "no" (fp32), "fp16" or "bf16" (accelerate's autocast; CUDA for fp16)
    num_workers: int | None = None  # DataLoader worker processes; None = 0 on CPU, min(8, CPU count) on CUDA
    resume: bool = True  # continue from the state kept beside the output (same settings only)

    def __post_init__(self):
        check(bool(self.real), f"`real` must name the real dataset to train on, got {self.real!r}")
        check(bool(self.output) and not Path(self.output).is_dir(),
               f"`output` must be the checkpoint file to write, got {self.output!r}")
        self.arch = canonical_student(self.arch)
        check(self.width > 0, f"`width` must be > 0, got {self.width}")
        check(self.arch != "resnet18" or self.width == 1.0, f"`width` must be 1.0 for resnet18, got {self.width}")
        check(self.image_size is None or self.image_size >= 8,
               f"`image_size` must be >= 8 pixels, got {self.image_size}")
        for name in ("epochs", "batch_size"):
            check(getattr(self, name) >= 1, f"`{name}` must be >= 1, got {getattr(self, name)}")
        check(self.lr > 0, f"`lr` must be > 0, got {self.lr}")
        check(0 <= self.momentum < 1, f"`momentum` must be in [0, 1), got {self.momentum}")
        check(self.weight_decay >= 0, f"`weight_decay` must be >= 0, got {self.weight_decay}")
        check(self.device in ("auto", "cpu", "cuda"), f"`device` must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        check(self.mixed_precision in MIXED_PRECISIONS,
               f"`mixed_precision` must be one of {list(MIXED_PRECISIONS)}, got {self.mixed_precision!r}")
        check(self.num_workers is None or self.num_workers >= 0,
               f"`num_workers` must be >= 0 or None, got {self.num_workers}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Settings a resumed run may change without invalidating the kept state.
RESUMABLE_CHANGES = ("output", "device", "num_workers", "resume")


