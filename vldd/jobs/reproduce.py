"""Reproduce a published VLCP number in one call: three seeds x distill, then one evaluation beside the paper's.

A cell of the paper's tables (`CELLS`) names the source dataset, IPC, protocol and the published top-1 accuracy (and
the random-real-subset baseline where the literature gives it under the same recipe). `reproduce` distills one set
per seed (0, 1, 2 as in the paper; each in its own run directory `OUTPUT/seed<S>`, with the paper preset's
fine-tuning when the preset has it), evaluates the three sets together with a random real subset of the same IPC
under the identical recipe, and returns the measured numbers beside the published ones. Every step resumes: distill
skips finished stages, the evaluation reuses finished trainings.

Example:
    >>> result = reproduce("imagenette-ipc10", "runs/reproduce/imagenette-ipc10")
    >>> result.rows[0].published, result.rows[0].best_mean
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..configs.base import merge
from ..core.runs import write_json

logger = logging.getLogger(__name__)

REPORT_FORMAT = "vldd.reproduce/1"
PAPER = "Zou et al., Dataset Distillation via Vision-Language Category Prototype, ICCV 2025 (arXiv 2506.23580)"
# Recipe settings that make a measured number incomparable with the published one when a user overrides them.
RECIPE_KEYS = ("epochs", "image_size", "student", "student_width", "batch_size", "eval_interval", "val_per_class",
               "shuffle_factor", "temperature", "amp", "clean_forward")


@dataclass(frozen=True)
class PublishedCell:
    """One published number: what was distilled, how it was scored, and the top-1 accuracies reported."""

    name: str  # e.g. "imagenette-ipc10"
    dataset: str | None  # source dataset (Hub id); None = the user supplies it (`data.dataset`)
    config_name: str | None  # Hub configuration of the source
    ipc: int  # images per class
    protocol: str  # "hard" (Minimax) or "soft" (RDED)
    student: str  # the student network the number was measured with
    published: float  # VLCP's top-1 accuracy, percent (mean over 3 sets x 3 repeats)
    random_real: float | None  # a random real subset of the same IPC under the same recipe, percent; None = unknown
    teacher: str | None = None  # soft protocol: the teacher (RDED: torchvision's ImageNet ResNet-18)
    # how many real images the official harness tests on, and which: ImageNette's own val split (Minimax `train.py`
    # reads `<data>/val`, `04_evaluation/Minimax/data.py`), else the 50 ImageNet val images per class
    # (RDED `--val-ipc 50`, `04_evaluation/RDED/argument.py`; ImageIDC's val folder is ImageNet's)
    test_images: int | None = None
    test_set: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NETTE_VAL = 3925  # images in ImageNette's val split (imagenette2; frgfm/imagenette's validation split)


def _cells() -> dict[str, PublishedCell]:
    cells = []
    for ipc, paper, random_real in ((10, 64.8, 54.2), (20, 71.4, 63.5), (50, 81.2, 76.1)):
        cells.append(PublishedCell(f"imagenette-ipc{ipc}", "frgfm/imagenette", "full_size", ipc, "hard", "resnetap10",
                                   paper, random_real, test_images=NETTE_VAL,
                                   test_set=f"ImageNette's val split ({NETTE_VAL} images)"))
    for ipc, paper in ((10, 57.0), (20, 63.3), (50, 71.9)):  # ImageIDC: an image folder of IDC's 10 ImageNet classes
        cells.append(PublishedCell(f"imageidc-ipc{ipc}", None, None, ipc, "hard", "resnetap10", paper, None,
                                   test_images=500, test_set="the 50 ImageNet val images of each of its 10 classes"))
    for ipc, paper in ((10, 46.7), (50, 60.5)):
        cells.append(PublishedCell(f"imagenet1k-ipc{ipc}", "ILSVRC/imagenet-1k", None, ipc, "soft", "resnet18", paper,
                                   None, teacher="torchvision:resnet18", test_images=50_000,
                                   test_set="the 50 ImageNet val images of each class"))
    return {cell.name: cell for cell in cells}


CELLS: dict[str, PublishedCell] = _cells()  # the published numbers of docs/evaluation.md


@dataclass
class ReproduceRow:
    """One line of the comparison: a training set, its published number and what this run measured."""

    name: str  # "VLCP (vldd)" or "random real"
    published: float | None  # percent; None = not published under this recipe
    best_mean: float  # measured best-epoch top-1, mean over sets x repeats, percent
    best_std: float
    final_mean: float  # measured final-epoch top-1
    final_std: float

    @property
    def difference(self) -> float | None:
        """Measured best mean minus the published number, in points."""
        return None if self.published is None else self.best_mean - self.published


@dataclass
class ReproduceResult:
    cell: PublishedCell
    output: Path  # the reproduction's directory
    run_dirs: list[Path]  # one distilled set per seed
    seeds: list[int]
    rows: list[ReproduceRow]
    comparable: bool  # the paper preset and the published recipe; False = mechanics only (e.g. the tiny preset)
    finetuned: list[bool | None]  # per seed: did generation use a fine-tuned model (None: the run does not say)
    evaluation: Any  # the `vldd.jobs.evaluate.EvalResult`
    report_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def robust(self) -> dict[str, Any]:
        """DD-Ranking's IOR (and HLR/LRS when a full-data baseline was trained) of the distilled sets."""
        return self.evaluation.report.get("robust") or {}


def resolve_cell(cell: str | PublishedCell) -> PublishedCell:
    """Returns the `PublishedCell` named `cell` (see `CELLS`), or `cell` itself."""
    if isinstance(cell, PublishedCell):
        return cell
    if cell not in CELLS:
        raise ValueError(f"unknown published cell {cell!r}; expected one of {sorted(CELLS)}")
    return CELLS[cell]


def comparability(cell: PublishedCell, preset: str, changed: list[str], finetuned: list[bool | None],
                  real: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether a measured number can be set beside the published one, and why not.

    Args:
        cell: the published number.
        preset: the distillation preset the sets were made with.
        changed: recipe settings the user overrode (`RECIPE_KEYS`).
        finetuned: per set, whether generation used the run's fine-tuned model (None: not recorded).
        real: the evaluation report's `real` section (`dataset`, `val_split`, `num_test_images`).
    """
    notes = []
    if preset != "paper":
        notes.append(f"preset {preset!r}: mechanics only, not comparable with the paper")
    if changed:
        notes.append(f"recipe changed ({', '.join(changed)}): not comparable with the paper")
    if False in finetuned:
        notes.append("some seeds generated without a fine-tuned model (D4M-style): not the paper's method")
    elif None in finetuned:
        notes.append("the runs do not record whether generation used a fine-tuned model")
    test_ok = cell.test_images is None or real["num_test_images"] == cell.test_images
    if not test_ok:
        notes.append(f"tested on {real['num_test_images']} images of {real['dataset']!r} ({real['val_split']!r}); "
                     f"the official harness tests on {cell.test_set}")
    comparable = preset == "paper" and not changed and all(f is True for f in finetuned) and test_ok
    return comparable, notes


def _finetuned(manifest: dict[str, Any]) -> bool | None:
    """Whether the run's images came from its own fine-tuned model (the manifest's `finetune.used`)."""
    record = manifest.get("finetune")
    return bool(record["used"]) if isinstance(record, dict) and "used" in record else None


def reproduce(cell: str | PublishedCell, output: str | Path, *, seeds: tuple[int, ...] = (0, 1, 2),
              distill_overrides: dict[str, Any] | None = None, eval_overrides: dict[str, Any] | None = None,
              cache_dir: str | Path | None = None, progress: bool = False, processes=None) -> ReproduceResult:
    """Distills one set per seed with the paper preset, evaluates them together beside a random real subset, and
    compares with the published number.

    Args:
        cell: a name in `CELLS` (e.g. "imagenette-ipc10") or a `PublishedCell`.
        output: directory of the reproduction: `seed<S>/` per distilled set, `evaluation/`, `reproduce.json`.
        seeds: distillation seeds (the paper: 0, 1, 2).
        distill_overrides: nested `DistillConfig` values applied on top of the cell (e.g. `{"preset": "tiny"}`,
            `{"data": {"dataset": "path/to/imageidc"}}`); `output` and `seed` are set per seed and cannot be given.
        eval_overrides: `EvalConfig` values applied on top of the cell's protocol (e.g. `{"device": "cuda:1"}`;
            changing the recipe, such as `epochs`, makes the result not comparable with the paper).
        cache_dir: where the tiny preset's models are built.
        progress: progress bars.
        processes: a `vldd.core.devices.Processes` when several processes share the work (`accelerate launch`).

    Returns:
        A `ReproduceResult`; its summary is also written to `OUTPUT/reproduce.json` by the main process.
    """
    from ..configs.distill import load_config
    from ..core.devices import Processes
    from .distill import distill
    from .evaluate import EvalConfig, evaluate

    cell = resolve_cell(cell)
    distill_overrides, eval_overrides = dict(distill_overrides or {}), dict(eval_overrides or {})
    for key in ("output", "seed", "ipc"):
        if key in distill_overrides:
            raise ValueError(f"`{key}` is set by the reproduction (per seed or by the cell), got "
                             f"{distill_overrides[key]!r} in `distill_overrides`")
    bad = [k for k in ("distilled", "protocol", "baselines", "output") if k in eval_overrides]
    if bad:
        raise ValueError(f"{bad} are set by the reproduction; they cannot be in `eval_overrides`")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must be distinct and at least one, got {list(seeds)}")
    processes = processes or Processes()
    output = Path(output)

    # 1. The cell's distillation settings: the paper preset, its source and IPC; the caller's overrides on top.
    base: dict[str, Any] = {"preset": "paper", "ipc": cell.ipc}
    if cell.dataset is not None:
        base["data"] = {"dataset": cell.dataset, "config_name": cell.config_name}
    values = merge(base, distill_overrides)
    data = distill_overrides.get("data") or {}
    if data.get("dataset") not in (None, cell.dataset) and "config_name" not in data:
        values["data"]["config_name"] = None  # the cell's configuration belongs to the cell's dataset
    if not (values.get("data") or {}).get("dataset"):
        raise ValueError(f"cell {cell.name!r} has no public source dataset: give `data.dataset` (an image folder of "
                         "its ImageNet classes, named by WordNet id)")

    # 2. One distilled set per seed, each in its own run directory (each resumes from what it already holds).
    run_dirs, finetuned, preset = [], [], values["preset"]
    for seed in seeds:
        config = load_config(None, merge(values, {"seed": seed, "output": str(output / f"seed{seed}")}))
        logger.info("%s: distilling seed %d into %s", cell.name, seed, config.output)
        result = distill(config, cache_dir=cache_dir, progress=progress, processes=processes)
        run_dirs.append(Path(config.output))
        finetuned.append(_finetuned(result.manifest))

    # 3. Evaluate the sets together, beside a random real subset trained under the identical recipe.
    eval_values = {"protocol": cell.protocol, "student": cell.student, "teacher": cell.teacher,
                   "teacher_pretrained": cell.teacher is not None and ":" in cell.teacher, **eval_overrides}
    if cell.protocol == "soft":
        eval_values.setdefault("val_per_class", 50)  # RDED tests on the first 50 val images per class
    config = EvalConfig(distilled=[str(d) for d in run_dirs], baselines=["random"],
                        output=str(output / "evaluation" / f"{cell.protocol}-{cell.student}.json"), **eval_values)
    evaluation = evaluate(config, progress=progress, processes=processes)

    # 4. The comparison.
    rows = []
    for name, run, published in (("VLCP (vldd)", "distilled", cell.published), ("random real", "random",
                                                                                   cell.random_real)):
        s = evaluation.runs[run].stats()
        rows.append(ReproduceRow(name, published, s["best_mean"], s["best_std"], s["final_mean"], s["final_std"]))
    changed = sorted(k for k in RECIPE_KEYS if k in eval_overrides)
    comparable, notes = comparability(cell, preset, changed, finetuned, evaluation.report["real"])
    result = ReproduceResult(cell, output, run_dirs, list(seeds), rows, comparable, finetuned, evaluation,
                             notes=notes)
    if processes.is_main:
        result.report_path = output / "reproduce.json"
        write_json(result.report_path, {
            "format": REPORT_FORMAT, "paper": PAPER, "cell": cell.to_dict(), "seeds": list(seeds),
            "run_dirs": [str(d) for d in run_dirs], "finetuned": finetuned, "comparable": comparable,
            "notes": notes, "accuracy_unit": "top-1 percent; mean ± std (ddof=0) over sets x repeats",
            "rows": [{**asdict(r), "difference": r.difference} for r in rows],
            "robust": result.robust, "robust_definition": evaluation.report.get("robust_definition"),
            "evaluation": str(evaluation.results_path)})
    processes.wait()
    return result

