"""Training one student under a `Recipe` and testing it: mixed precision, top-1 accuracy, the soft-label teacher."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...configs.base import check
from ...configs.evaluate import EvalConfig
from .data import LabelledImages, data_loader
from .recipes import Recipe, build_optimizer
from .results import RepeatResult

# torch, torchvision and the networks are imported where used, so that building the CLI stays fast.

logger = logging.getLogger(__name__)


def amp_dtype(config: EvalConfig, device):
    """The autocast dtype when `config.amp` asks for it on CUDA (bf16 where supported, else fp16); None = fp32."""
    import torch

    if device.type != "cuda" or not config.amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def top1_accuracy(model, batches, device, amp) -> float:
    """Top-1 accuracy of `model` over `batches` of (images, targets), in percent; leaves the model in eval mode."""
    import torch

    model.eval()
    correct = total = 0
    for images, targets in batches:
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(images.to(device, non_blocking=True))
        correct += int((logits.argmax(1).cpu() == targets).sum())
        total += len(targets)
    return 100.0 * correct / total


@dataclass
class SoftTeacher:
    """The soft-label protocol's teacher: its network and, per student class, the output column it reads."""

    model: Any  # torch module in eval mode, on the training device
    index: Any  # LongTensor: teacher output column of every student class
    meta: dict[str, Any]


def train_repeat(train: LabelledImages, test_batches, recipe: Recipe, num_classes: int, teacher: SoftTeacher | None,
                 *, seed: int, device, amp, workers: int, desc: str, progress: bool) -> RepeatResult:
    """Trains one student on `train` under `recipe` with `seed` (initialisation, data order, augmentation; the
    caller's RNG state is restored) and tests it at the recipe's test epochs."""
    import torch
    from torch.nn import functional as F
    from tqdm.auto import tqdm

    from ...data.augment import cutmix, hard_train_transform, soft_train_transform
    from ...models.students import build_student

    start = time.perf_counter()
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # seeds model init and per-image augmentation, restores the caller's RNG
        torch.manual_seed(seed)
        model = build_student(recipe.student, num_classes, recipe.image_size, recipe.student_width,
                              norm=recipe.student_norm).to(device)
        optimizer, scheduler = build_optimizer(model, recipe)
        transform = (hard_train_transform(recipe.image_size) if recipe.protocol == "hard"
                     else soft_train_transform(recipe.image_size, recipe.shuffle_factor))
        loader = data_loader(train, transform, min(recipe.batch_size, len(train)), shuffle=True, seed=seed,
                             workers=workers, device=device)
        rng = np.random.default_rng(seed)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        epochs, top1 = [], []
        bar = tqdm(range(1, recipe.epochs + 1), desc=desc, disable=not progress, leave=False)
        for epoch in bar:
            model.train()
            for images, targets in loader:
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                if recipe.clean_forward:  # RDED's `pred_label = student_model(images)`: batch-norm statistics only
                    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        model(images)
                images, perm, lam = cutmix(images, rng, recipe.cutmix_beta)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    logits = model(images).float()
                    if teacher is None:
                        loss = lam * F.cross_entropy(logits, targets) + (1 - lam) * F.cross_entropy(logits, targets[perm])
                    else:
                        with torch.no_grad():
                            soft = teacher.model(images).float()[:, teacher.index]
                        t = recipe.temperature
                        loss = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(soft / t, 1), reduction="batchmean")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            scheduler.step()
            if epoch in recipe.eval_epochs:
                epochs.append(epoch)
                top1.append(top1_accuracy(model, test_batches, device, amp))
                bar.set_postfix(top1=f"{top1[-1]:.1f}")
                logger.debug("%s epoch %d: top-1 %.2f%%", desc, epoch, top1[-1])
    return RepeatResult(seed, epochs, top1, len(train), time.perf_counter() - start)



def load_teacher(config: EvalConfig, recipe: Recipe, classes: list[str], real_names: list[str],
                 real_ids: list[int], device) -> SoftTeacher:
    """Loads `config.teacher` and maps every evaluated class to one of its outputs (by class name, else by the real
    dataset's label ids, else in order)."""
    import torch

    from ...data.classnames import read_class_names
    from ...models.students import load_classifier

    names_file = config.teacher_class_names
    check(names_file is None or Path(names_file).expanduser().is_file(),
           f"`teacher_class_names` {names_file!r} is not a file; expected one class name per line, in output order")
    given = read_class_names(Path(names_file)) if names_file is not None else None
    model, meta = load_classifier(config.teacher, pretrained=config.teacher_pretrained, image_size=recipe.image_size,
                                  class_names=given)
    names = meta["class_names"]
    if names is not None:
        missing = [c for c in classes if c not in names]
        check(not missing, f"teacher {config.teacher!r} has no output for classes {missing[:10]}")
        index = [names.index(c) for c in classes]
    elif meta["num_classes"] == len(real_names):
        index = real_ids  # outputs follow the real dataset's label ids (e.g. ImageNet-1K weights on ImageNet-1K)
    elif meta["num_classes"] == len(classes):
        index = list(range(len(classes)))
    else:
        raise ValueError(f"teacher {config.teacher!r} has {meta['num_classes']} outputs and no class names; expected "
                         f"{len(real_names)} (the real dataset's classes) or {len(classes)} (the evaluated classes)")
    if meta.get("image_size") not in (None, recipe.image_size):
        logger.warning("teacher was trained at %s px, students see %d px", meta["image_size"], recipe.image_size)
    for p in model.parameters():
        p.requires_grad_(False)
    return SoftTeacher(model.to(device).eval(), torch.tensor(index, device=device), meta)

