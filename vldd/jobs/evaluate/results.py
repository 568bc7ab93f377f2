"""An evaluation's results: per-repeat and per-set accuracies, DD-Ranking's label-robust scores, the accuracy-vs-epoch
plot, the results JSON document and the run manifest's entry."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ...configs.base import check
from ...configs.evaluate import EvalConfig
from ...configs.profiles import Recognition
from ...core.runs import atomic_path, read_manifest, update_manifest
from .recipes import Recipe

REPORT_FORMAT = "vldd.evaluation/1"


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



def profile_entry(recognition: Recognition) -> dict[str, Any]:
    """The dataset profile the recipe's defaults came from, and why (explicit `image_size`/`shuffle_factor` override
    it)."""
    profile = recognition.profile
    return {**recognition.to_dict(), "image_size": profile.eval_image_size, "shuffle_factor": profile.shuffle_factor,
            "small_stem": profile.small_stem}


def build_report(config, recipe, classes, counts, real, val_split, num_test, run_dir, source, runs, teacher, device,
                 amp, seconds) -> dict[str, Any]:
    """The results JSON document (format `REPORT_FORMAT`) of one evaluation."""
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


def manifest_entry(report: dict[str, Any], results_path: Path, run_dir: Path) -> dict[str, Any]:
    """The summary of `report` that the run manifest's "evaluation" list keeps (`record_evaluation`)."""
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

