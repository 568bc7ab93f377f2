"""`vldd teacher`: trains the teacher the soft-label protocol needs, on a real dataset, with one documented recipe.

The recipe (`TeacherConfig` defaults) is the widely used CIFAR ResNet-18 one: ResNet-18 with batch norm, the
"modified" stem (3x3 stride-1 convolution, no max-pool) at <= 64 px as RDED's CIFAR/Tiny-ImageNet teachers
(`resnet18_modified`), torchvision's stem above; SGD lr 0.1, momentum 0.9, weight decay 5e-4 on every parameter,
batch 128, cosine annealing from lr to 0 over the epochs (stepped per epoch), cross-entropy; augmentation
`vldd.data.augment.teacher_train_transform` (crop with size/8 padding + flip at <= 64 px, RandomResizedCrop + flip above),
ImageNet mean/std normalisation as the students' transforms. 200 epochs by default. It was chosen because it is the
standard, well-understood way to get a strong small-image ResNet-18 (about 95 % on CIFAR-10 as commonly reported;
vldd has not measured that here), and its normalisation and stem are what the soft-label students see.

The val split is scored after every epoch with the students' test transform; the state (model, optimizer, schedule,
history) is written atomically after every epoch beside the output (`.<name>.state.pt`), so a rerun with the same
settings resumes where it stopped. Runs under `accelerate launch` (data-parallel, each process a share of every
epoch). The output is a vldd classifier checkpoint (`vldd.models.students.save_classifier`) holding the class names and
image size, so `vldd evaluate --protocol soft --teacher FILE` uses it as is.

Example:
    >>> result = train_teacher(TeacherConfig(real="uoft-cs/cifar10", output="cifar10-teacher.pt"))
    >>> result.val_top1
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..configs.base import check, fingerprint
from ..configs.teacher import RESUMABLE_CHANGES, TeacherConfig
from ..core.runs import atomic_path

logger = logging.getLogger(__name__)


@dataclass
class TeacherResult:
    output: Path
    arch: str
    image_size: int
    class_names: list[str]
    epochs: int
    history: list[dict[str, float]]  # per epoch: epoch (1-based), loss (mean train loss), val_top1 (percent), lr
    resumed_from: int | None  # epochs already done when this call started; None = trained from scratch
    seconds: float  # training time of this call
    is_main: bool = True  # the process that wrote the output (others return the same numbers)
    recipe: dict[str, Any] = field(default_factory=dict)

    @property
    def val_top1(self) -> float:
        return self.history[-1]["val_top1"]


def state_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.stem}.state.pt")


def recipe_of(config: TeacherConfig, image_size: int, family: str) -> dict[str, Any]:
    """The resolved recipe, as written into the checkpoint and compared on resume."""
    stem = ("3x3 stride-1 conv, no max-pool" if image_size <= 64 else "torchvision 7x7 stride-2 conv + max-pool") \
        if config.arch == "resnet18" else "the student's"
    augment = (f"Resize({image_size}), CenterCrop({image_size}), RandomCrop({image_size}, padding={image_size // 8})"
               if image_size <= 64 else f"RandomResizedCrop({image_size})") + ", RandomHorizontalFlip"
    return {"arch": config.arch, "width": config.width, "stem": stem, "profile_family": family,
            "image_size": image_size, "epochs": config.epochs, "batch_size": config.batch_size,
            "optimizer": f"SGD(lr={config.lr:g}, momentum={config.momentum:g}, weight_decay={config.weight_decay:g})",
            "schedule": "CosineAnnealingLR to 0 over the epochs, per epoch", "loss": "cross-entropy",
            "augmentations": augment, "normalisation": "ImageNet mean/std",
            "test_transform": f"Resize({image_size // 7 * 8}), CenterCrop({image_size})", "seed": config.seed,
            "mixed_precision": config.mixed_precision}


def _epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """This process's share of epoch `epoch`'s shuffled rows, padded so every process has as many (as DDP needs)."""
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    order += order[: (-n) % world]
    return order[rank::world]


def train_teacher(config: TeacherConfig, *, progress: bool = False) -> TeacherResult:
    """Trains a teacher on `config.real`'s train split and writes it to `config.output`; resumes a stopped run.

    Under `accelerate launch` every process runs this same call; each trains on its share of every epoch.
    """
    import torch
    from accelerate import Accelerator
    from torch.nn import functional as F
    from tqdm.auto import tqdm

    from ..data.augment import eval_transform, teacher_train_transform
    from ..data.sources import open_dataset, recognise_source
    from ..models.students import build_student, save_classifier
    from .evaluate.data import (
        LabelledImages,
        TorchImages,
        cached_batches,
        data_loader,
        images_and_labels,
        open_validation,
    )
    from .evaluate.train import top1_accuracy

    started = time.perf_counter()
    use_cpu = config.device == "cpu" or not torch.cuda.is_available()
    check(not (config.device == "cuda" and not torch.cuda.is_available()),
           "device 'cuda' was asked for but CUDA is not available; use --device cpu")
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=use_cpu)
    check(not (config.mixed_precision == "fp16" and accelerator.device.type == "cpu"),
           "`mixed_precision` 'fp16' needs a CUDA GPU; on CPU use 'no' or 'bf16'")
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    workers = config.num_workers if config.num_workers is not None else (
        min(8, os.cpu_count() or 1) if device.type == "cuda" else 0)

    # 1. Data: the real train split, every class; the val split for the per-epoch score.
    train_split = open_dataset(config.real, config.train_split, config.real_config_name, config.real_revision)
    t_images, names, t_labels = images_and_labels(train_split)
    val, val_name = open_validation(config.real, config.val_split, config_name=config.real_config_name,
                                    revision=config.real_revision)
    v_images, v_names, v_labels = images_and_labels(val)
    check(v_names == names, f"real splits {config.train_split!r} and {val_name!r} have different labels")
    recognition = recognise_source(config.real, t_images, t_images.column_names[0], names)
    logger.info("real dataset %s: %s", config.real, recognition.describe())
    profile = recognition.profile
    size = config.image_size or profile.eval_image_size
    recipe = recipe_of(config, size, profile.family)
    train = LabelledImages(t_images, list(range(len(t_labels))), [int(v) for v in t_labels])
    test = LabelledImages(v_images, list(range(len(v_labels))), [int(v) for v in v_labels])
    test_batches = cached_batches(data_loader(test, eval_transform(size), 256 if device.type == "cuda" else 64,
                                              shuffle=False, seed=config.seed, workers=workers, device=device))
    per_process = max(1, config.batch_size // world)

    # The job seeds torch's global RNG (initialisation, augmentation); the caller's RNG state is restored after.
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        # 2. Model, optimizer, schedule; the kept state when the settings match.
        torch.manual_seed(config.seed)
        model = build_student(config.arch, len(names), size, config.width, norm="batch").to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
        key = fingerprint({k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}, recipe, names,
                          getattr(train_split, "_fingerprint", None))
        state_file = state_path(config.output)
        history: list[dict[str, float]] = []
        resumed_from = None
        if config.resume and state_file.is_file():
            kept = torch.load(state_file, map_location="cpu", weights_only=True)
            if kept.get("key") != key:
                raise ValueError(f"{str(state_file)!r} holds a teacher trained with other settings or data; resume "
                                 "with the same settings, or start over with --no-resume")
            model.load_state_dict(kept["model"])
            optimizer.load_state_dict(kept["optimizer"])
            scheduler.load_state_dict(kept["scheduler"])
            history = list(kept["history"])
            resumed_from = len(history)
            logger.info("resuming the teacher from %s after epoch %d", state_file, resumed_from)
        model, optimizer = accelerator.prepare(model, optimizer)
        transform = teacher_train_transform(size)

        # 3. Train: each epoch a seeded order (the same whatever the process count), then the val score.
        bar = tqdm(total=config.epochs, initial=len(history), desc="teacher", unit="epoch",
                   disable=not (progress and accelerator.is_main_process))
        for epoch in range(len(history) + 1, config.epochs + 1):
            model.train()
            torch.manual_seed(config.seed * 100_003 + epoch * 101 + rank)  # augmentation of this epoch
            share = train.subset(_epoch_order(len(train), config.seed, epoch, rank, world))
            drop_last = len(share) % per_process == 1 and len(share) > 1  # a batch of one breaks batch norm
            loader = torch.utils.data.DataLoader(TorchImages(share, transform), batch_size=per_process, shuffle=False,
                                                 drop_last=drop_last, num_workers=workers,
                                                 pin_memory=device.type == "cuda")
            total, count = torch.zeros((), device=device), 0
            for images, targets in loader:
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                with accelerator.autocast():
                    loss = F.cross_entropy(model(images).float(), targets)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                optimizer.step()
                total += loss.detach() * len(targets)
                count += len(targets)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            mean_loss = accelerator.reduce(total / max(1, count), reduction="mean").item()
            top1 = top1_accuracy(accelerator.unwrap_model(model), test_batches, device, None)
            history.append({"epoch": epoch, "loss": mean_loss, "val_top1": top1, "lr": lr})
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.3f}", val=f"{top1:.1f}")
            logger.info("teacher epoch %d/%d: loss %.4f, val top-1 %.2f%%", epoch, config.epochs, mean_loss, top1)
            if accelerator.is_main_process:
                with atomic_path(state_file, suffix=".pt") as tmp:
                    torch.save({"key": key, "model": _cpu_state(accelerator.unwrap_model(model)),
                                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                "history": history}, tmp)
            accelerator.wait_for_everyone()
        bar.close()

        # 4. The checkpoint `--teacher` loads.
        net = accelerator.unwrap_model(model).eval()
        if accelerator.is_main_process:
            trained_on = {"dataset": config.real, "split": config.train_split, "val_split": val_name,
                          "images": len(train)}
            save_classifier(net, config.output, arch=config.arch, class_names=names, image_size=size,
                            width=config.width, extra={"trained_on": trained_on, "recipe": recipe, "history": history})
        accelerator.wait_for_everyone()
        return TeacherResult(Path(config.output), config.arch, size, names, config.epochs, history, resumed_from,
                             time.perf_counter() - started, accelerator.is_main_process, recipe)


def _cpu_state(model) -> dict[str, Any]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}

