"""The protocols' rules: training length, batch size, learning-rate schedules, and the resolved `Recipe` (every
hyperparameter of one evaluation) with its optimizer. Pure apart from `build_optimizer`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ...configs.evaluate import EvalConfig, check_convnet_size
from ...configs.profiles import Recognition, dataset_profile


def hard_epochs(ipc: int, num_classes: int) -> int:
    """Hard-label training length, Minimax's `ipc_epoch`: IPC 1 -> 3000 epochs, <= 10 -> 2000, <= 50 -> 1500,
    <= 200 -> 1000, <= 500 -> 500, else 300; for exactly 100 classes x2/3 floored to hundreds (IPC 10 -> 1300)."""
    epochs = next(e for limit, e in ((1, 3000), (10, 2000), (50, 1500), (200, 1000), (500, 500), (math.inf, 300))
                  if ipc <= limit)
    if num_classes == 100:
        epochs = epochs * 2 // 3 // 100 * 100
    return epochs


def soft_batch_size(ipc: int, num_classes: int, family: str | None = None) -> int:
    """RDED batch size: IPC 1 -> 10, IPC <= 10 -> 50, larger -> 100; x2 with 100+ classes; Tiny-ImageNet always 100;
    capped at IPC x classes.

    Args:
        ipc: images per class of the distilled set.
        num_classes: classes of the distilled set.
        family: the real dataset's family (`vldd.configs.profiles.dataset_family`); "tiny-imagenet" fixes the batch at 100.
    """
    if family == "tiny-imagenet":
        batch = 100
    else:
        batch = (10 if ipc == 1 else 50 if ipc <= 10 else 100) * (2 if num_classes >= 100 else 1)
    return min(batch, ipc * num_classes)


def multistep_lr(epoch: int, epochs: int, lr: float = 0.01, gamma: float = 0.2) -> float:
    """Hard-label learning rate during epoch `epoch` (0-based): x gamma at epochs 2E//3 and 5E//6."""
    return lr * gamma ** sum(epoch >= m for m in (2 * epochs // 3, 5 * epochs // 6))


def half_cosine_lr(epoch: int, epochs: int, lr: float = 1e-3) -> float:
    """Soft-label learning rate during epoch `epoch` (0-based): lr * 0.5 * (1 + cos(pi * e / (2E))), ends at lr/2."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / (2 * epochs)))


@dataclass(frozen=True)
class Recipe:
    """Every resolved training hyperparameter of one evaluation (written to the results JSON)."""

    protocol: str
    student: str
    student_width: float
    student_norm: str  # "instance" (GroupNorm, one group per channel) or "batch"
    image_size: int  # pixels
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float | None
    betas: tuple[float, float] | None
    weight_decay: float
    weight_decay_on: str
    schedule: str
    milestones: tuple[int, ...]
    gamma: float | None
    loss: str
    temperature: float | None
    cutmix_beta: float
    cutmix_prob: float
    augmentations: tuple[str, ...]
    shuffle_factor: int | None
    test_transform: str
    eval_epochs: tuple[int, ...]  # 1-based epochs after which the student is tested
    amp: bool  # mixed precision requested (the harnesses train in fp32)
    clean_forward: bool = False  # soft: the student also sees the un-mixed batch (no gradient) before each step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_recipe(config: EvalConfig, ipc: int, num_classes: int, real: str | None = None,
                   recognition: Recognition | None = None) -> Recipe:
    """Applies the protocol's rules (image size, epochs, batch size, test epochs, ...) to the distilled sets.

    Args:
        config: the evaluation; its explicit values win over the rules.
        ipc: images per class of the distilled set.
        num_classes: classes evaluated.
        real: the real dataset (Hub id or path); selects the dataset's image size, ShufflePatches factor and the
            Tiny-ImageNet batch (`vldd.configs.profiles`). None = judged from the class count alone.
        recognition: the real dataset's profile recognised from its content (`vldd.configs.profiles.recognise`), as
            distillation recognises its source; None = judged from `real`'s name and the class count.
    """
    profile = recognition.profile if recognition is not None else dataset_profile(real or "", num_classes)
    size = config.image_size or profile.eval_image_size
    check_convnet_size(config.student, size)
    if config.protocol == "hard":
        epochs = config.epochs or hard_epochs(ipc, num_classes)
        interval = config.eval_interval or max(1, epochs // 100)
        tests = sorted(set(range(interval, epochs + 1, interval)) | {epochs})
        return Recipe("hard", config.student, config.student_width, "instance", size, epochs,
                      config.batch_size or 64, "SGD", 0.01, 0.9, None, 5e-4, "all parameters",
                      "MultiStepLR at 2E//3 and 5E//6, gamma 0.2", (2 * epochs // 3, 5 * epochs // 6), 0.2,
                      "cross-entropy, CutMix area-weighted", None, 1.0, 1.0,
                      (f"Resize({size}), CenterCrop({size})", f"RandomResizedCrop({size}, scale=(0.5, 1))",
                       "RandomHorizontalFlip", "IDC ColorJitter(0.4, 0.4, 0.4) as tensor lerps, no clamping",
                       "Lighting(PCA, 0.1)"), None, f"Resize({size}), CenterCrop({size}), ImageNet mean/std",
                      tuple(tests), config.amp)
    epochs = config.epochs or 500
    factor = config.shuffle_factor or profile.shuffle_factor
    interval = config.eval_interval or 10
    tests = [e for e in range(1, epochs + 1) if (e % interval == 0 or e == epochs) and e > 0.8 * epochs]
    norm = "batch" if config.student == "resnet18" else "instance"
    return Recipe("soft", config.student, config.student_width, norm, size, epochs,
                  config.batch_size or soft_batch_size(ipc, num_classes, profile.family), "AdamW", 1e-3, None,
                  (0.9, 0.999), 0.01, "weights of conv/linear layers (none on biases and norm parameters)",
                  "LambdaLR 0.5 * (1 + cos(pi * e / (2E))) per epoch", (), None,
                  f"KLDiv(batchmean) of log_softmax(student/T) vs softmax(teacher/T), T={config.temperature:g}, "
                  "no T^2", config.temperature, 1.0, 1.0,
                  (f"ShufflePatches({factor})", f"RandomResizedCrop({size}, scale=(1/{factor}, 1))",
                   "RandomHorizontalFlip"), factor, f"Resize({size // 7 * 8}), CenterCrop({size}), ImageNet mean/std",
                  tuple(tests), config.amp, clean_forward=config.clean_forward)


def build_optimizer(model, recipe: Recipe):
    """Returns (optimizer, per-epoch scheduler) of the recipe for `model` (a torch module)."""
    import torch

    if recipe.protocol == "hard":
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay)
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=recipe.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: half_cosine_lr(e, recipe.epochs, 1.0))
    return optimizer, scheduler

