"""Settings of `vldd evaluate`: the field's hard- and soft-label protocols (docs/evaluation.md), and the names of
the student networks they train."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .base import check

PROTOCOLS = ("hard", "soft")
BASELINES = ("random", "full")
DEFAULT_STUDENT = {"hard": "resnetap10", "soft": "resnet18"}
VAL_SPLIT_FALLBACKS = ("valid", "test", "val")  # "valid": Tiny-ImageNet on the Hub
STUDENTS = ("resnetap10", "convnet3", "convnet4", "convnet6", "resnet18")
CONVNET_DEPTHS = {"convnet3": 3, "convnet4": 4, "convnet6": 6}


def canonical_student(name: str) -> str:
    """Maps spellings such as "ResNetAP-10" or "convnet_6" to a name in `STUDENTS`."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in STUDENTS:
        raise ValueError(f"`student` must be one of {list(STUDENTS)} (any case, '-' allowed), got {name!r}")
    return key


@dataclass
class EvalConfig:
    # distilled set(s): vldd run directory, Hub id, image folder, `save_to_disk` dir, or "sample"; several sets
    # (e.g. the seeds 0/1/2 of one recipe) are trained under the identical recipe and reported together
    # (none: the baselines alone, which then need `real` and `ipc`)
    distilled: str | list[str] = field(default_factory=list)
    real: str | None = None  # real dataset (Hub id, folder, saved dir, "sample"); None = the run's source dataset
    ipc: int | None = None  # images per class of the random baseline and the recipe, when no distilled set is given
    # file naming the distilled set's labels for matching the real set's: one name per line in label-id order (e.g.
    # labels 00000... -> airplane, ...), or a JSON object {"distilled label name": "real label name"}
    class_names: str | None = None
    protocol: str = "hard"  # "hard" (IDC/Minimax hard labels) or "soft" (RDED soft labels from a teacher)
    # "resnetap10", "convnet3" (32 px), "convnet4" (64 px), "convnet6" or "resnet18"; None = resnetap10 (hard) /
    # resnet18 (soft)
    student: str | None = None
    student_width: float = 1.0  # channel multiplier of ResNetAP/ConvNet (1.0 = the published networks)
    image_size: int | None = None  # input side in pixels; None = the real dataset's (32 CIFAR, 64 Tiny, else 224)
    epochs: int | None = None  # None = the protocol's rule (hard: by IPC and class count; soft: 500, VLCP's scripts)
    batch_size: int | None = None  # None = the protocol's rule (hard: 64; soft: by IPC, class count and dataset)
    repeats: int = 3  # students trained from different seeds; mean ± std over them
    seed: int = 0  # repeat r uses seed + r for initialisation, data order, augmentation and random subsets
    baselines: list[str] = field(default_factory=list)  # also train on "random" (same-IPC real subset) and/or "full"
    # soft only: vldd checkpoint file (`vldd teacher`), RDED teacher file (with `teacher_class_names`),
    # "torchvision:<name>" or "timm:<name>"
    teacher: str | None = None
    teacher_pretrained: bool = False  # download the library weights of a torchvision/timm teacher id
    # file naming the teacher's outputs in order, one per line: needed by an RDED teacher file (which stores none)
    teacher_class_names: str | None = None
    temperature: float = 20.0  # soft-label distillation temperature T
    # soft: before each CutMix step, one more forward of the student on the un-mixed batch, in train mode without
    # gradients, as RDED's harness does (it computes its train accuracy so): batch-norm statistics are updated twice
    # per batch. On by default, as VLCP's published soft-label numbers were measured with that harness
    clean_forward: bool = True
    shuffle_factor: int | None = None  # soft: ShufflePatches factor; None = the real dataset's (1 CIFAR, else 2)
    eval_interval: int | None = None  # epochs between tests; None = hard: max(1, E // 100), soft: 10 (last 20% only)
    distilled_split: str = "train"  # split read from a Hub/folder distilled set (run directories have one)
    train_split: str = "train"  # real split the baselines draw from
    val_split: str = "validation"  # real split tested on; the default falls back to "valid", "test", then "val"
    val_per_class: int | None = None  # keep only the first N val images per class (RDED: 50); None = all
    real_config_name: str | None = None  # Hub configuration (subset) name of the real dataset
    real_revision: str | None = None  # Hub revision of the real dataset
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda" or "cuda:N"
    amp: bool = False  # mixed precision on CUDA (bf16 where supported, else fp16); off = fp32 as the harnesses
    num_workers: int | None = None  # DataLoader worker processes; None = 0 on CPU, min(8, CPU count) on CUDA
    output: str | None = None  # results JSON (PNG beside it); None = RUN_DIR/evaluation/<protocol>-<student>.json
    record: bool = True  # add the results to the run's manifest.json under "evaluation" (one run directory only)
    resume: bool = True  # reuse finished trainings (same inputs and recipe) kept beside the results file

    def __post_init__(self):
        if isinstance(self.distilled, str):
            self.distilled = [self.distilled]
        self.distilled = list(self.distilled)
        check(all(self.distilled),
               f"`distilled` must name run directories, dataset ids or paths, got {self.distilled!r}")
        check(len(set(self.distilled)) == len(self.distilled),
               f"`distilled` names a set twice: {self.distilled!r}")
        check(self.protocol in PROTOCOLS, f"`protocol` must be one of {list(PROTOCOLS)}, got {self.protocol!r}")
        self.student = canonical_student(self.student or DEFAULT_STUDENT[self.protocol])
        check(self.student_width > 0, f"`student_width` must be > 0, got {self.student_width}")
        check(self.student != "resnet18" or self.student_width == 1.0,
               f"`student_width` must be 1.0 for resnet18, got {self.student_width}")
        check(self.image_size is None or self.image_size >= 8, f"`image_size` must be >= 8 pixels, got {self.image_size}")
        if self.image_size is not None:
            check_convnet_size(self.student, self.image_size)
        for name in ("epochs", "batch_size", "val_per_class", "eval_interval", "shuffle_factor"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"`{name}` must be >= 1 or None, got {value}")
        check(self.repeats >= 1, f"`repeats` must be >= 1, got {self.repeats}")
        if isinstance(self.baselines, str):
            self.baselines = [b for b in self.baselines.split(",") if b]
        bad = [b for b in self.baselines if b not in BASELINES]
        check(not bad, f"`baselines` must hold some of {list(BASELINES)}, got {self.baselines}")
        self.baselines = list(dict.fromkeys(self.baselines))
        check(self.ipc is None or self.ipc >= 1, f"`ipc` must be >= 1 or None, got {self.ipc}")
        if self.distilled:
            check(self.ipc is None, f"`ipc` is for evaluating baselines alone; with distilled sets the IPC is "
                                     f"theirs, got `ipc` {self.ipc}")
        else:
            check(bool(self.baselines), "nothing to evaluate: give `distilled` set(s) and/or `baselines` "
                                         f"(some of {list(BASELINES)})")
            check(self.real is not None, "baselines alone need `real`, the real dataset they are drawn from")
            check(self.ipc is not None, "baselines alone need `ipc`: the random subset's images per class, which "
                                         "also selects the protocol's epochs and batch size")
            check(self.class_names is None, "`class_names` names a distilled set's labels; no distilled set given")
        if self.protocol == "soft":
            check(bool(self.teacher), "the soft protocol needs a `teacher`: a vldd checkpoint file, "
                                       "'torchvision:<name>' or 'timm:<name>'")
        else:
            check(self.teacher is None, f"`teacher` is used by the soft protocol only, got {self.teacher!r}")
        check(self.temperature > 0, f"`temperature` must be > 0, got {self.temperature}")
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
               f"`device` must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        check(self.num_workers is None or self.num_workers >= 0,
               f"`num_workers` must be >= 0 or None, got {self.num_workers}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_convnet_size(student: str, size: int) -> None:
    depth = CONVNET_DEPTHS.get(student)
    check(depth is None or size >> depth >= 1, f"`image_size` must be >= {2 ** (depth or 0)} pixels for {student}, "
                                                 f"got {size} ({depth} 2x2 poolings)")


