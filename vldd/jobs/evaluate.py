"""Scoring a distilled set the way the field does (docs/evaluation.md): train a student on it, test it on real val images.

Two protocols, each as the harness VLCP's numbers come from (docs/faithfulness.md, "Evaluation harnesses"):

- "hard" (Minimax; ImageNette, ImageWoof, ImageIDC, ImageNet-100): ResNetAP-10 (or ConvNet-6, or ResNet-18 with
  instance norm), SGD + MultiStepLR, CutMix every batch, Resize + CenterCrop then RandomResizedCrop/flip/IDC colour
  jitter/PCA lighting, 3000/2000/1500/1000 epochs by IPC (x2/3 for 100 classes), tested every E/100 epochs on
  Resize(224) + CenterCrop(224), fp32.
- "soft" (RDED; ImageNet-1K, CIFAR, Tiny-ImageNet): ResNet-18 learns a teacher's soft labels online (KL at T=20),
  AdamW with a half-cosine schedule, ShufflePatches, 500 epochs (VLCP's scripts), tested every 10 epochs in the
  last 20%.

Image size, ShufflePatches factor and batch size follow the real dataset and the IPC (`vldd.configs.profiles`). Several
distilled sets (the paper's seeds 0/1/2) can be evaluated together: the report gives mean ± std over sets x repeats
and each set's own. Both the best tested accuracy (what papers report) and the final-epoch accuracy are reported,
optionally beside a random real subset of the same IPC or the full real train set trained identically (or those
baselines alone, without a distilled set, at a given IPC). Finished trainings are kept beside the results file, so an
interrupted evaluation resumes; the report's time sums every training it holds, reused ones included.

Example:
    >>> result = evaluate(EvalConfig(distilled=["runs/nette/seed0", "runs/nette/seed1", "runs/nette/seed2"],
    ...                              real="frgfm/imagenette", protocol="hard", baselines=["random"]))
    >>> print(result.runs["distilled"].stats())
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..configs.base import check, fingerprint
from ..configs.evaluate import VAL_SPLIT_FALLBACKS, EvalConfig, check_convnet_size
from ..configs.profiles import Recognition, dataset_profile
from ..core.devices import Processes, resolve_device
from ..core.runs import atomic_path, read_json, read_manifest, update_manifest, write_json
from ..data.sources import _find_column, decode_image, open_dataset, recognise_source

# torch, torchvision and the networks are imported where used, so that building the CLI stays fast.

logger = logging.getLogger(__name__)

REPORT_FORMAT = "vldd.evaluation/1"


# ---------------------------------------------------------------------------------------------------------------
# Protocol rules


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


# ---------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class LabelledImages:
    """Rows of a `datasets.Dataset` with their student targets (0..C-1); images stay undecoded until read."""

    dataset: Any  # datasets.Dataset holding only the image column, as Image(decode=False)
    rows: list[int]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, positions) -> LabelledImages:
        return LabelledImages(self.dataset, [self.rows[i] for i in positions], [self.targets[i] for i in positions])


class _TorchImages:  # a map-style dataset for torch's DataLoader
    def __init__(self, images: LabelledImages, transform):
        self.images, self.transform = images, transform
        self.column = images.dataset.column_names[0]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        value = self.images.dataset[self.images.rows[i]][self.column]
        return self.transform(decode_image(value)), self.images.targets[i]


def _columns(dataset) -> tuple[Any, list[str], np.ndarray]:
    """Returns (image-only dataset with undecoded images, label names, label of every row)."""
    import datasets

    label_column = _find_column(dataset, datasets.ClassLabel, None, "label")
    image_column = _find_column(dataset, datasets.Image, None, "image")
    names = list(dataset.features[label_column].names)
    labels = np.asarray(dataset.select_columns([label_column]).with_format("numpy")[label_column])
    images = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    return images, names, labels


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "manifest.json").is_file() and (path / "dataset").is_dir()


def open_validation(real: str, split: str = "validation", *, config_name: str | None = None,
                    revision: str | None = None):
    """Opens the real split to test on; the default "validation" falls back to "valid", "test", then "val" (with a
    warning naming the split chosen).

    Returns:
        (dataset, the split name actually opened)
    """
    candidates = [split] + (list(VAL_SPLIT_FALLBACKS) if split == "validation" else [])
    first_error = None
    for name in candidates:
        try:
            dataset = open_dataset(real, name, config_name, revision)
        except ValueError as err:
            first_error = first_error or err
            continue
        if name != split:
            logger.warning("real dataset %r has no %r split; testing on its %r split instead", real, split, name)
        return dataset, name
    raise ValueError(f"cannot open a split to test on in real dataset {real!r}: tried {candidates} "
                     f"({first_error})") from first_error


def align_classes(distilled_names: list[str], distilled_labels: np.ndarray, real_names: list[str]
                  ) -> tuple[list[str], dict[int, int], list[int]]:
    """Matches the classes present in the distilled set to the real dataset's classes by label name.

    Returns:
        (class names in student output order, distilled label -> student target, real label id of each target)
    """
    present = sorted(set(int(v) for v in distilled_labels))
    check(bool(present), "the distilled set has no images")
    classes = [distilled_names[label] for label in present]
    missing = [name for name in classes if name not in real_names]
    check(not missing, f"{len(missing)} class(es) of the distilled set are not label names of the real dataset: "
                        f"{missing[:10]}{' ...' if len(missing) > 10 else ''}; the distilled set's names are "
                        f"{classes[:10]}{' ...' if len(classes) > 10 else ''}, the real set's "
                        f"{real_names[:10]}{' ...' if len(real_names) > 10 else ''} (give the distilled set's names "
                        "with `class_names`)")
    return classes, {label: i for i, label in enumerate(present)}, [real_names.index(n) for n in classes]


def rename_classes(names: list[str], path: str | Path) -> list[str]:
    """The distilled set's label names read through a `class_names` file.

    Args:
        names: the distilled set's label names, in label-id order (e.g. "00000", "00001", ...).
        path: a text file with one name per line, in label-id order (blank lines ignored), or a `.json` file holding
            such a list or an object mapping some of `names` to new names (the others keep theirs).
    """
    file = Path(path).expanduser()
    check(file.is_file(), f"`class_names` {str(path)!r} is not a file; expected one name per line, or a JSON list "
                           "or object")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"`class_names` {str(path)!r} is not valid JSON: {err}") from None
        if isinstance(value, dict):
            unknown = [k for k in value if k not in names]
            check(not unknown, f"`class_names` {str(path)!r} maps labels the distilled set does not have: "
                                f"{unknown[:10]}; its labels are {names[:10]}{' ...' if len(names) > 10 else ''}")
            new = [str(value.get(n, n)) for n in names]
        else:
            check(isinstance(value, list), f"`class_names` {str(path)!r} must hold a JSON list or object, got "
                                            f"{type(value).__name__}")
            new = [str(v).strip() for v in value]
    else:
        new = [line.strip() for line in text.splitlines() if line.strip()]
    check(len(new) == len(names), f"`class_names` {str(path)!r} holds {len(new)} names; the distilled set has "
                                   f"{len(names)} labels: {names[:10]}{' ...' if len(names) > 10 else ''}")
    twice = sorted({n for n in new if new.count(n) > 1})
    check(not twice, f"`class_names` {str(path)!r} gives two labels the same name: {twice[:10]}")
    return new


def _select(images, labels: np.ndarray, real_ids: list[int], per_class: int | None = None) -> LabelledImages:
    rows, targets = [], []
    for target, label in enumerate(real_ids):
        found = np.flatnonzero(labels == label).tolist()
        found = found[:per_class] if per_class is not None else found
        rows += found
        targets += [target] * len(found)
    return LabelledImages(images, rows, targets)


def random_subset(pool: LabelledImages, counts: list[int], seed: int | list[int]) -> LabelledImages:
    """Draws `counts[t]` images of every target t from `pool` without replacement, with numpy's `default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(pool.targets)
    positions = []
    for target, count in enumerate(counts):
        available = np.flatnonzero(targets == target)
        check(len(available) >= count, f"the random baseline needs {count} real images of class {target}, the real "
                                         f"train split has {len(available)}")
        positions += sorted(rng.choice(available, size=count, replace=False).tolist())
    return pool.subset(positions)


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class RepeatResult:
    seed: int
    epochs: list[int]  # 1-based epochs after which the student was tested
    top1: list[float]  # top-1 accuracy on the real test images at those epochs, in percent
    train_images: int
    seconds: float
    subset_rows: list[int] | None = None  # real train rows drawn for a random baseline

    @property
    def best(self) -> float:
        return max(self.top1)

    @property
    def best_epoch(self) -> int:
        return self.epochs[int(np.argmax(self.top1))]

    @property
    def final(self) -> float:
        return self.top1[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "best": self.best, "best_epoch": self.best_epoch, "final": self.final,
                "train_images": self.train_images, "seconds": round(self.seconds, 2), "epochs": self.epochs,
                "top1": self.top1, **({"subset_rows": self.subset_rows} if self.subset_rows is not None else {})}


@dataclass
class RunResult:
    """One training set over all its repeats ("distilled": every distilled set's repeats together; "random",
    "full"; or one distilled set, named by its source); std is over repeats with ddof=0."""

    name: str
    repeats: list[RepeatResult]

    def stats(self) -> dict[str, float]:
        best = np.array([r.best for r in self.repeats])
        final = np.array([r.final for r in self.repeats])
        return {"best_mean": float(best.mean()), "best_std": float(best.std()),
                "final_mean": float(final.mean()), "final_std": float(final.std())}

    def to_dict(self) -> dict[str, Any]:
        return {"train_images": self.repeats[0].train_images, **self.stats(),
                "repeats": [r.to_dict() for r in self.repeats]}


LRS_LAMBDA = 0.5  # DD-Ranking's default weight of IOR against HLR
ROBUST_NOTE = ("DD-Ranking (arXiv 2505.13300), per repeat on best top-1, mean ± std over repeats: HLR = full - "
               "distilled and IOR = distilled - random in percentage points; LRS in [0, 1] from accuracies as "
               f"fractions, lambda {LRS_LAMBDA}; vldd's recipes do not search the learning rate as DD-Ranking's "
               "hard-label evaluator does")


def robust_scores(distilled: list[float], random: list[float] | None = None, full: list[float] | None = None, *,
                  lam: float = LRS_LAMBDA) -> dict[str, dict[str, Any]]:
    """DD-Ranking's label-robust figures (Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset
    Distillation", arXiv 2505.13300), per training repeat, then mean ± std (ddof=0) over repeats. Pure.

    HLR (hard-label recovery) = full-data accuracy - distilled accuracy; IOR (improvement over random) = distilled
    accuracy - random-real-subset accuracy; both in percentage points, from accuracies in percent (lower HLR and
    higher IOR are better). LRS = (e^a - e^-1) / (e - e^-1) with a = lam * IOR - (1 - lam) * HLR, computed on
    accuracies as fractions (the paper normalises LRS to [0, 1], which needs a in [-1, 1]; DD-Ranking's code feeds
    percents), reported in [0, 1]. A figure whose baseline is missing is left out.

    Args:
        distilled: best top-1 of every distilled training, in percent: set 0's repeats, then set 1's, ...; each
            set's repeat r is paired with the baselines' repeat r (the same training seed).
        random: best top-1 of the random-real-subset baseline per repeat, percent; None = not trained.
        full: best top-1 of the full-real-data baseline per repeat, percent; None = not trained.
        lam: LRS's weight of IOR (DD-Ranking's default 0.5), in [0, 1].

    Returns:
        {"hlr"|"ior"|"lrs": {"mean", "std", "values"}} for the figures the baselines allow.
    """
    check(0.0 <= lam <= 1.0, f"`lam` must be in [0, 1], got {lam}")
    check(bool(distilled), "`distilled` must hold at least one accuracy")
    baselines = [b for b in (random, full) if b is not None]
    for baseline in baselines:
        check(bool(baseline) and len(distilled) % len(baseline) == 0,
               f"every distilled set needs one accuracy per baseline repeat: got {len(distilled)} distilled "
               f"accuracies for {len(baseline)} baseline repeats")
    values: dict[str, list[float]] = {}
    if full is not None:
        values["hlr"] = [full[i % len(full)] - acc for i, acc in enumerate(distilled)]
    if random is not None:
        values["ior"] = [acc - random[i % len(random)] for i, acc in enumerate(distilled)]
    if full is not None and random is not None:
        values["lrs"] = []
        for hlr, ior in zip(values["hlr"], values["ior"], strict=True):
            alpha = lam * ior / 100 - (1 - lam) * hlr / 100
            values["lrs"].append((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    return {name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v} for name, v in values.items()}


def run_robust_scores(runs: dict[str, RunResult]) -> dict[str, dict[str, Any]]:
    """`robust_scores` of the "distilled" run against the "random" and "full" baselines present in `runs` (none
    without a distilled run: baselines evaluated alone)."""
    best = {name: [r.best for r in run.repeats] for name, run in runs.items()}
    if "distilled" not in best:
        return {}
    return robust_scores(best["distilled"], best.get("random"), best.get("full"))


@dataclass
class EvalResult:
    config: EvalConfig
    recipe: Recipe
    classes: list[str]  # student output order
    ipc: int  # the most distilled images of any class
    runs: dict[str, RunResult]  # "distilled" (all sets x repeats), then the baselines
    report: dict[str, Any]  # the results JSON document
    results_path: Path | None = None
    plot_path: Path | None = None
    sets: list[RunResult] = field(default_factory=list)  # each distilled set alone, named by its source


def plot_curves(runs: dict[str, RunResult], path: str | Path, title: str) -> Path:
    """Writes an accuracy-vs-epoch PNG: every repeat thin, the mean over repeats bold."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2), layout="constrained")
    axes = figure.subplots()
    for i, (name, run) in enumerate(runs.items()):
        color = f"C{i}"
        for repeat in run.repeats:
            axes.plot(repeat.epochs, repeat.top1, color=color, alpha=0.3, linewidth=0.8)
        mean = np.mean([r.top1 for r in run.repeats], axis=0)
        s = run.stats()
        axes.plot(run.repeats[0].epochs, mean, color=color, linewidth=2, marker="." if len(mean) < 30 else None,
                  label=f"{name}: best {s['best_mean']:.1f} ± {s['best_std']:.1f}, final {s['final_mean']:.1f}")
    axes.set(xlabel="epoch", ylabel="top-1 accuracy on real test images (%)", title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110)
    return path


def record_evaluation(run_dir: str | Path, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Adds `entry` to the run manifest's "evaluation" list, replacing an entry of the same protocol and student."""
    entries = [e for e in read_manifest(run_dir).get("evaluation", [])
               if (e.get("protocol"), e.get("student")) != (entry["protocol"], entry["student"])]
    entries.append(entry)
    update_manifest(run_dir, evaluation=entries)
    return entries


# ---------------------------------------------------------------------------------------------------------------
# Training


def _amp_dtype(config: EvalConfig, device):
    import torch

    if device.type != "cuda" or not config.amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _loader(images: LabelledImages, transform, batch_size: int, *, shuffle: bool, seed: int, workers: int,
            device):
    import torch

    # A last batch of one image would break batch norm in train mode; drop it then.
    drop_last = shuffle and len(images) % batch_size == 1 and len(images) > 1
    return torch.utils.data.DataLoader(
        _TorchImages(images, transform), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed))


def _cached_batches(loader, max_bytes: int = 1 << 30):
    """Decodes the (deterministic) test set once when it fits in `max_bytes`; else the loader is re-read."""
    dataset = loader.dataset
    sample, _ = dataset[0]
    if len(dataset) * sample.numel() * sample.element_size() > max_bytes:
        return loader
    return [(images, targets) for images, targets in loader]


def _top1(model, batches, device, amp) -> float:
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
class _Teacher:
    model: Any  # torch module in eval mode, on the training device
    index: Any  # LongTensor: teacher output column of every student class
    meta: dict[str, Any]


def _train_repeat(train: LabelledImages, test_batches, recipe: Recipe, num_classes: int, teacher: _Teacher | None,
                  *, seed: int, device, amp, workers: int, desc: str, progress: bool) -> RepeatResult:
    import torch
    from torch.nn import functional as F
    from tqdm.auto import tqdm

    from ..data.augment import cutmix, hard_train_transform, soft_train_transform
    from ..models.students import build_student

    start = time.perf_counter()
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # seeds model init and per-image augmentation, restores the caller's RNG
        torch.manual_seed(seed)
        model = build_student(recipe.student, num_classes, recipe.image_size, recipe.student_width,
                              norm=recipe.student_norm).to(device)
        optimizer, scheduler = build_optimizer(model, recipe)
        transform = (hard_train_transform(recipe.image_size) if recipe.protocol == "hard"
                     else soft_train_transform(recipe.image_size, recipe.shuffle_factor))
        loader = _loader(train, transform, min(recipe.batch_size, len(train)), shuffle=True, seed=seed,
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
                top1.append(_top1(model, test_batches, device, amp))
                bar.set_postfix(top1=f"{top1[-1]:.1f}")
                logger.debug("%s epoch %d: top-1 %.2f%%", desc, epoch, top1[-1])
    return RepeatResult(seed, epochs, top1, len(train), time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------------------
# Entry point


def _load_teacher(config: EvalConfig, recipe: Recipe, classes: list[str], real_names: list[str],
                  real_ids: list[int], device) -> _Teacher:
    import torch

    from ..data.classnames import read_class_names
    from ..models.students import load_classifier

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
    return _Teacher(model.to(device).eval(), torch.tensor(index, device=device), meta)


def evaluate(config: EvalConfig, *, device=None, progress: bool = False, processes=None) -> EvalResult:
    """Trains students on the distilled set (and baselines) under one protocol and tests them on real images.

    Args:
        config: what to evaluate and how; see `EvalConfig`.
        device: overrides `config.device` ("cpu", "cuda", a torch.device).
        progress: show a progress bar per training run.
        processes: a `vldd.core.devices.Processes` when several processes share the work (`accelerate launch`): the
            (training set, repeat) jobs are dealt out across them, and the main process writes the report.

    Returns:
        An `EvalResult`; the results JSON and accuracy-vs-epoch PNG are written to `config.output` (default: the run
        directory's `evaluation/<protocol>-<student>.json`, or `evaluation-<protocol>-<student>.json`), and the
        summary is recorded in the run's manifest.
    """
    import torch

    from ..data.augment import eval_transform

    started = time.perf_counter()
    device = torch.device(device) if device is not None else resolve_device(config.device)
    amp = _amp_dtype(config, device)
    workers = config.num_workers if config.num_workers is not None else (
        min(8, os.cpu_count() or 1) if device.type == "cuda" else 0)

    # 1. Open the distilled sets (a run directory holds its set in dataset/ beside its manifest); none = baselines only.
    sets = [_open_distilled(path, config.distilled_split) for path in config.distilled]
    if config.class_names is not None:
        for d in sets:
            d.names = rename_classes(d.names, config.class_names)
    run_dir = sets[0].run_dir if len(sets) == 1 else None

    # 2. Open the real test split and align classes by label name; every set must cover the same classes.
    source = sets[0].manifest.get("source", {}) if sets else {}
    real, config_name, revision = config.real, config.real_config_name, config.real_revision
    if real is None:  # the run's own source dataset, at the configuration and revision it was distilled from
        real, config_name = source.get("dataset"), config_name or source.get("config_name")
        revision = revision or source.get("revision")
    check(real is not None, "`real` must name the real dataset (only a run directory's manifest can supply it)")
    val, val_split = open_validation(real, config.val_split, config_name=config_name, revision=revision)
    v_images, real_names, v_labels = _columns(val)
    if sets:
        classes, _, real_ids = align_classes(sets[0].names, sets[0].labels, real_names)
    else:  # baselines alone: every real class, IPC as given
        classes, real_ids = list(real_names), list(range(len(real_names)))
    train_sets, set_counts = [], []
    for d in sets:
        d_classes, target_of, _ = align_classes(d.names, d.labels, real_names)
        check(d_classes == classes, f"distilled sets evaluated together must cover the same classes: "
                                     f"{d.source!r} has {d_classes[:10]}, {sets[0].source!r} has {classes[:10]}")
        train_sets.append(LabelledImages(d.images, list(range(len(d.labels))), [target_of[int(v)] for v in d.labels]))
        set_counts.append(np.bincount(train_sets[-1].targets, minlength=len(classes)).tolist())
    counts = set_counts[0] if sets else [config.ipc] * len(classes)
    ipc = max(max(c) for c in set_counts) if sets else config.ipc
    if any(min(c) != ipc for c in set_counts):
        logger.warning("the distilled sets have %d to %d images per class; rules use IPC %d",
                       min(min(c) for c in set_counts), ipc, ipc)
    test = _select(v_images, v_labels, real_ids, config.val_per_class)
    logger.info("evaluating %s of %d classes (IPC %d) on %d %r images of %s",
                f"{len(sets)} distilled set(s)" if sets else f"the baselines {config.baselines}", len(classes), ipc,
                len(test), val_split, real)

    # 3. Real train images for the baselines.
    pool, pool_fingerprint = None, None
    if config.baselines:
        train_split = open_dataset(real, config.train_split, config_name, revision)
        t_images, t_names, t_labels = _columns(train_split)
        check(t_names == real_names, f"real splits {config.train_split!r} and {val_split!r} have different labels")
        pool, pool_fingerprint = _select(t_images, t_labels, real_ids), getattr(train_split, "_fingerprint", None)

    # 4. Recipe (from the real dataset's profile, recognised from its content as distillation does; a profile the
    #    run was told to use wins), teacher and the test batches.
    told = ((sets[0].manifest.get("config") or {}).get("data") or {}).get("profile") if real == source.get(
        "dataset") else None  # the run's data.profile, for the run's own source
    recognition = recognise_source(real, v_images, v_images.column_names[0], real_names, told)
    logger.info("real dataset %s: %s", real, recognition.describe())
    recipe = resolve_recipe(config, ipc, len(classes), real, recognition)
    teacher = _load_teacher(config, recipe, classes, real_names, real_ids, device) if config.protocol == "soft" else None
    resize = recipe.image_size if config.protocol == "hard" else None  # Minimax: Resize(224); RDED: Resize(256)
    test_loader = _loader(test, eval_transform(recipe.image_size, resize), 256 if device.type == "cuda" else 64,
                          shuffle=False, seed=config.seed, workers=workers, device=device)
    test_batches = _cached_batches(test_loader)

    if config.output:
        output = Path(config.output)
    elif run_dir is not None:
        output = run_dir / "evaluation" / f"{config.protocol}-{config.student}.json"
    elif not sets:
        output = Path(f"baselines-{config.protocol}-{config.student}-ipc{ipc}.json")
    else:
        output = Path(f"evaluation-{config.protocol}-{config.student}.json")

    # 5. Train every training set under the identical recipe and seeds. Each finished (training set, repeat) job is
    #    kept beside the report with a fingerprint of its inputs: a rerun reuses it (resume), and with several
    #    processes each takes its share of the jobs and the main process gathers them.
    processes = processes or Processes()
    names = (["distilled"] if sets else []) + config.baselines
    jobs = [(name, i, r) for name in names for i in range(len(sets) if name == "distilled" else 1)
            for r in range(config.repeats)]
    common = [recipe.to_dict(), real, config_name, revision, val_split, config.val_per_class, len(test), classes,
              config.teacher, (teacher.meta if teacher else None), str(amp)]
    keys = {job: fingerprint(*common, job[2] + config.seed,
                             [sets[job[1]].fingerprint, sets[job[1]].source] if job[0] == "distilled"
                             else [job[0], pool_fingerprint, config.train_split, counts])
            for job in jobs}
    parts = output.parent / f".{output.stem}.parts"
    # Every process reads which jobs are finished before any trains, so all agree on what was reused.
    kept = {job: read_json(parts / f"{job[0]}-{job[1]}-{job[2]}.json", default={}) if config.resume else {}
            for job in jobs}
    reused = {job for job in jobs if kept[job].get("key") == keys[job]}
    processes.wait()
    done: dict[tuple[str, int, int], RepeatResult] = {}
    for job in processes.share(jobs):
        name, i, r = job
        part = parts / f"{name}-{i}-{r}.json"
        label = f"{name}{f' set {i}' if name == 'distilled' and len(sets) > 1 else ''} #{r + 1}"
        if job in reused:
            done[job] = RepeatResult(**kept[job]["result"])
            logger.info("%s: reusing the finished training in %s", label, part)
            continue
        seed = config.seed + r
        rows = None
        if name == "distilled":
            train = train_sets[i]
        elif name == "random":
            train = random_subset(pool, counts, [seed, 1])
            rows = train.rows
        else:
            train = pool
        repeat = _train_repeat(train, test_batches, recipe, len(classes), teacher, seed=seed, device=device,
                               amp=amp, workers=workers, desc=label, progress=progress)
        repeat.subset_rows = rows
        logger.info("%s: best %.2f%% (epoch %d), final %.2f%%", label, repeat.best, repeat.best_epoch, repeat.final)
        done[job] = repeat
        write_json(part, {"key": keys[job], "result": dataclasses.asdict(repeat)})
    processes.wait()
    if processes.count > 1:
        done = {job: RepeatResult(**read_json(parts / f"{job[0]}-{job[1]}-{job[2]}.json")["result"]) for job in jobs}
    per_set = [RunResult(d.source, [done["distilled", i, r] for r in range(config.repeats)])
               for i, d in enumerate(sets)]
    runs = {"distilled": RunResult("distilled", [rep for run in per_set for rep in run.repeats])} if sets else {}
    runs.update({name: RunResult(name, [done[name, 0, r] for r in range(config.repeats)])
                 for name in config.baselines})

    # 6. Report: JSON, plot and manifest entry.
    report = _report(config, recipe, classes, counts, real, val_split, len(test), run_dir, source, runs, teacher,
                     device, amp, time.perf_counter() - started)
    report["robust"] = run_robust_scores(runs)  # HLR / IOR / LRS when the baselines they need were trained
    report["robust_definition"] = ROBUST_NOTE
    report["trainings"], report["reused"] = len(jobs), len(reused)
    report["sets"] = [{"source": d.source, "run_dir": str(d.run_dir) if d.run_dir else None,
                       "images_per_class": dict(zip(classes, c, strict=True)), **run.to_dict()}
                      for d, c, run in zip(sets, set_counts, per_set, strict=True)]
    report["processes"] = processes.count
    report["profile"] = _profile_entry(recognition)  # which per-dataset settings the recipe used, and why
    result = EvalResult(config, recipe, classes, ipc, runs, report, sets=per_set)
    result.results_path, result.plot_path = output, output.with_suffix(".png")
    report["plot"] = result.plot_path.name
    if processes.is_main:
        plot_curves(runs, result.plot_path, f"{config.protocol}-label protocol, {config.student}, IPC {ipc}")
        write_json(result.results_path, report)
        if run_dir is not None and config.record:
            record_evaluation(run_dir, _manifest_entry(report, result.results_path, run_dir))
    processes.wait()
    return result


@dataclass
class _DistilledSet:
    source: str  # as the user named it
    run_dir: Path | None
    manifest: dict[str, Any]
    images: Any  # image-only datasets.Dataset, undecoded
    names: list[str]
    labels: np.ndarray
    fingerprint: str | None  # names the set's content: a run's stage fingerprints, else datasets' fingerprint


def _open_distilled(path: str, split: str) -> _DistilledSet:
    run_dir = Path(path) if is_run_dir(path) else None
    dataset = open_dataset(str(run_dir / "dataset")) if run_dir is not None else open_dataset(path, split)
    images, names, labels = _columns(dataset)
    manifest = read_manifest(run_dir) if run_dir is not None else {}
    # A run rewrites dataset/ (with a new datasets fingerprint) on every rerun; its stage fingerprints name the inputs
    # of every image and change exactly when the images do.
    content = fingerprint(manifest["fingerprints"]) if manifest.get("fingerprints") else getattr(
        dataset, "_fingerprint", None)
    return _DistilledSet(path, run_dir, manifest, images, names, labels, content)


def _profile_entry(recognition: Recognition) -> dict[str, Any]:
    """The dataset profile the recipe's defaults came from, and why (explicit `image_size`/`shuffle_factor` override
    it)."""
    profile = recognition.profile
    return {**recognition.to_dict(), "image_size": profile.eval_image_size, "shuffle_factor": profile.shuffle_factor,
            "small_stem": profile.small_stem}


def _report(config, recipe, classes, counts, real, val_split, num_test, run_dir, source, runs, teacher, device, amp,
            seconds) -> dict[str, Any]:
    import torch
    import torchvision

    return {
        "format": REPORT_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "protocol": config.protocol,
        "student": config.student,
        "accuracy_unit": "top-1 percent on the real test images; std over repeats with ddof=0",
        "distilled": {"source": config.distilled, "run_dir": str(run_dir) if run_dir else None,
                      "source_dataset": source.get("dataset"), "ipc": max(counts), "num_images": int(sum(counts)),
                      "images_per_class": dict(zip(classes, counts, strict=True)),
                      "class_names": config.class_names} if config.distilled else None,
        "ipc": max(counts),
        "real": {"dataset": real, "val_split": val_split, "val_per_class": config.val_per_class,
                 "num_test_images": num_test, "train_split": config.train_split if config.baselines else None},
        "classes": classes,
        "teacher": None if teacher is None else {"spec": config.teacher, **teacher.meta},
        "recipe": recipe.to_dict(),
        "config": config.to_dict(),
        "results": {name: run.to_dict() for name, run in runs.items()},
        "baselines": list(config.baselines),
        "device": str(device),
        "amp": str(amp).replace("torch.", "") if amp is not None else None,
        # every training the report holds, whether trained by this call or reused from an earlier one (with several
        # processes: summed over them); "wall_seconds" is this call's time
        "seconds": round(sum(rep.seconds for run in runs.values() for rep in run.repeats), 1),
        "wall_seconds": round(seconds, 1),
        "versions": {"vldd": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__},
    }


def _manifest_entry(report: dict[str, Any], results_path: Path, run_dir: Path) -> dict[str, Any]:
    recipe = report["recipe"]
    try:
        results_file = str(results_path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        results_file = str(results_path)
    runs = {name: {k: v for k, v in run.items() if k != "repeats"} for name, run in report["results"].items()}
    return {"protocol": report["protocol"], "student": report["student"], "student_width": recipe["student_width"],
            "real": report["real"]["dataset"], "val_split": report["real"]["val_split"],
            "num_test_images": report["real"]["num_test_images"], "image_size": recipe["image_size"],
            "epochs": recipe["epochs"], "batch_size": recipe["batch_size"], "repeats": report["config"]["repeats"],
            "teacher": (report["teacher"] or {}).get("spec"), **runs["distilled"],
            "baselines": {k: v for k, v in runs.items() if k != "distilled"},
            "robust": {k: {"mean": v["mean"], "std": v["std"]} for k, v in (report.get("robust") or {}).items()},
            "results_file": results_file,
            "created": report["created"]}

