"""What each part of VLCP is worth: named variants of one distillation, sharing unchanged stages, scored side by side.

A variant is a name and the settings it changes on top of the distillation as given (`VARIANTS`, or any group of
`key=value` settings). `ablate` distills every variant for every seed into its own run directory
(`OUTPUT/<variant>/seed<S>`), reusing across run directories every stage result whose fingerprint is unchanged
(`vldd.jobs.distill.share_stage`: the captions are computed once for all variants, the image prototypes once for
the variants that change only the text step, the fine-tuned model once for all that keep it). It then evaluates
every variant with one recipe and the same training seeds beside a random real subset and the full real train set,
the baselines trained once (their finished trainings are reused by every variant's evaluation), and writes one table:
`OUTPUT/ablation.json`, `OUTPUT/ablation.md` and `OUTPUT/ablation.png`. Every step resumes.

Example:
    >>> result = ablate(["base", "no-lof", "no-text-prototypes", "tpk=10"], "runs/ablate/nette",
    ...                 distill_overrides={"data": {"dataset": "frgfm/imagenette", "config_name": "full_size"}})
    >>> [(row.name, row.best_mean, row.ior_mean) for row in result.rows]
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..configs.base import merge
from ..core.runs import atomic_path, read_json, update_manifest, write_json, write_text

logger = logging.getLogger(__name__)

REPORT_FORMAT = "vldd.ablation/1"
BASE_NAMES = ("base", "paper")  # the distillation as given
# The named variants: what each changes on top of the distillation as given.
VARIANTS: dict[str, dict[str, Any]] = {
    "no-text-prototypes": {"text": {"mode": "class_name"}},  # the class-name prompt (D4M-style)
    "no-lof": {"prototypes": {"contamination": 0.0}},  # no outlier removal before k-means
    "no-finetune": {"finetune": {"enabled": False}},  # generation with the base diffusion model
}
# Parametrised names: tpk=N (text.top_k), threshold=X (text.common_threshold).
PARAMETRISED = {"tpk": ("text", "top_k", int), "threshold": ("text", "common_threshold", float)}
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


@dataclass(frozen=True)
class Variant:
    """One configuration of the ablation: its name (also its directory and Hub configuration suffix) and the nested
    settings it changes on top of the distillation as given (empty for the base)."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def changes(self) -> str:
        """The overrides as "a.b=value" pairs, or "as given"."""
        from ..hub.cards import flatten

        return ", ".join(f"{k}={v}" for k, v in flatten(self.overrides)) or "as given"


def parse_variant(spec: str) -> Variant:
    """A `Variant` from a name: "base"/"paper", a name in `VARIANTS`, "tpk=N" or "threshold=X"."""
    if spec in BASE_NAMES:
        return Variant(spec)
    if spec in VARIANTS:
        return Variant(spec, VARIANTS[spec])
    key, sep, text = spec.partition("=")
    if sep and key in PARAMETRISED:
        section, name, kind = PARAMETRISED[key]
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"variant {spec!r}: {key} takes {'an integer' if kind is int else 'a number'}, got "
                             f"{text!r}") from None
        return Variant(f"{key}{text}", {section: {name: value}})
    raise ValueError(f"unknown variant {spec!r}; expected one of {[*BASE_NAMES, *VARIANTS]}, tpk=N or threshold=X "
                     "(or a --set NAME KEY=VALUE ... group)")


def custom_variant(name: str, settings: list[str]) -> Variant:
    """A `Variant` named `name` from "dotted.key=value" settings (values read as YAML: 0.7, true, none, text)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"variant name {name!r} must be lowercase letters, digits, '.', '_' or '-'")
    if not settings:
        raise ValueError(f"variant {name!r} changes nothing; give KEY=VALUE settings after its name")
    overrides: dict[str, Any] = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key:
            raise ValueError(f"variant {name!r}: setting {setting!r} must be KEY=VALUE, e.g. generation.strength=0.7")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(text)
    return Variant(name, overrides)


@dataclass
class AblationRow:
    """One line of the table: a variant (or a baseline) and what it scored, top-1 percent, mean ± std (ddof=0)."""

    name: str
    changes: str  # what the variant changes ("as given" for the base; "baseline" rows say what they train on)
    config_names: list[str]  # the Hub configuration each seed's run is published as (`ipc10-seed0-no-lof`)
    best_mean: float
    best_std: float
    final_mean: float
    final_std: float
    hlr_mean: float | None = None  # full - variant, points (lower is better); None for the baselines
    hlr_std: float | None = None
    ior_mean: float | None = None  # variant - random, points (higher is better)
    ior_std: float | None = None
    lrs_mean: float | None = None  # in [0, 1]
    lrs_std: float | None = None


@dataclass
class AblationResult:
    output: Path
    variants: list[Variant]
    seeds: list[int]
    run_dirs: dict[str, list[Path]]  # per variant, one run directory per seed
    rows: list[AblationRow]  # the variants in order, then "random real" and "full real"
    evaluations: dict[str, Any]  # per variant, its `vldd.jobs.evaluate.EvalResult`
    header: dict[str, Any]  # the recipe in brief: protocol, student, epochs, image_size, repeats, ipc, seeds, classes
    report_path: Path | None = None
    table_path: Path | None = None
    plot_path: Path | None = None
    notes: list[str] = field(default_factory=list)


def config_name(ipc: int, seed: int, variant: str) -> str:
    """The Hub configuration a variant's run is published as: `ipc{N}-seed{S}` for the base, else with the variant
    name appended (`ipc10-seed0-no-lof`)."""
    return f"ipc{ipc}-seed{seed}" if variant in BASE_NAMES else f"ipc{ipc}-seed{seed}-{variant}"


def ablate(variants: list[str | Variant], output: str | Path, *, seeds: tuple[int, ...] = (0,),
           distill_overrides: dict[str, Any] | None = None, eval_overrides: dict[str, Any] | None = None,
           cache_dir: str | Path | None = None, progress: bool = False, processes=None) -> AblationResult:
    """Distills every variant for every seed (unchanged stages shared), evaluates them all beside the random and
    full baselines under one recipe, and writes the table.

    Args:
        variants: names (see `parse_variant`) or `Variant`s; at least one, names distinct.
        output: the ablation's directory: `<variant>/seed<S>/` run directories, `evaluation/`, `ablation.*`.
        seeds: distillation seeds; a variant's sets over the seeds are evaluated together.
        distill_overrides: nested `DistillConfig` values of the distillation as given (e.g. `{"preset": "tiny"}`);
            `output` and `seed` are set per variant and seed.
        eval_overrides: `EvalConfig` values of the one recipe (e.g. `{"epochs": 2, "repeats": 3}`).
        cache_dir: where the tiny preset's models are built.
        progress: progress bars.
        processes: a `vldd.core.devices.Processes` when several processes share the work (`accelerate launch`).
    """
    from ..configs.distill import load_config
    from ..core.devices import Processes
    from ..data.sources import load_source
    from .distill import distill
    from .evaluate import EvalConfig, evaluate
    from .evaluate.results import ROBUST_NOTE

    chosen = [v if isinstance(v, Variant) else parse_variant(v) for v in variants]
    names = [v.name for v in chosen]
    if not chosen or len(set(names)) != len(names):
        raise ValueError(f"`variants` must be distinct and at least one, got {names}")
    if sum(v.name in BASE_NAMES for v in chosen) > 1:
        raise ValueError(f"give the distillation as given once ('base' or 'paper'), got {names}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must be distinct and at least one, got {list(seeds)}")
    distill_overrides, eval_overrides = dict(distill_overrides or {}), dict(eval_overrides or {})
    for key in ("output", "seed"):
        if key in distill_overrides:
            raise ValueError(f"`{key}` is set by the ablation (per variant and seed), got {distill_overrides[key]!r} "
                             "in `distill_overrides`")
    bad = [k for k in ("distilled", "baselines", "output", "record") if k in eval_overrides]
    if bad:
        raise ValueError(f"{bad} are set by the ablation; they cannot be in `eval_overrides`")
    processes = processes or Processes()
    output = Path(output)

    # 1. Every variant's config per seed, checked before anything runs (a bad setting fails in a second).
    configs = {v.name: [load_config(None, merge(merge(distill_overrides, v.overrides),
                                                 {"seed": seed, "output": str(output / v.name / f"seed{seed}")}))
                        for seed in seeds] for v in chosen}
    ipc = configs[names[0]][0].ipc
    if any(c.ipc != ipc for cs in configs.values() for c in cs):
        raise ValueError("every variant must keep the IPC (the baselines are drawn at one IPC); change `ipc` for "
                         "the whole ablation instead")
    if processes.is_main:
        write_json(output / "variants.json", {"variants": [asdict(v) for v in chosen], "seeds": list(seeds)})

    # 2. Distill: per seed, each variant reuses the stage results of the variants before it (and after it, from an
    #    earlier interrupted run) wherever the fingerprints agree.
    run_dirs: dict[str, list[Path]] = {name: [] for name in names}
    sources: dict[Any, Any] = {}
    for i, seed in enumerate(seeds):
        for v in chosen:
            config = configs[v.name][i]
            key = repr(config.data)
            if key not in sources:  # one opened source per data setting (a streamed one is read once)
                sources[key] = load_source(config.data)
            donors = [output / other / f"seed{seed}" for other in names if other != v.name]
            logger.info("ablation: distilling %r seed %d into %s", v.name, seed, config.output)
            distill(config, cache_dir=cache_dir, progress=progress, processes=processes, source=sources[key],
                    share_from=[d for d in donors if d.is_dir()])
            run_dirs[v.name].append(Path(config.output))

    # 3. Evaluate every variant under the one recipe; the baselines are trained with the first variant and their
    #    finished trainings (same inputs, recipe and seeds: the same fingerprint) reused by the others.
    evaluations: dict[str, Any] = {}
    first_parts = None
    for v in chosen:
        results = output / "evaluation" / f"{v.name}.json"
        parts = results.parent / f".{results.stem}.parts"
        if first_parts is not None and processes.is_main:
            _share_baselines(first_parts, parts)
        processes.wait()
        config = EvalConfig(distilled=[str(d) for d in run_dirs[v.name]], baselines=["random", "full"],
                            output=str(results), **eval_overrides)
        evaluations[v.name] = evaluate(config, progress=progress, processes=processes)
        first_parts = first_parts or parts

    # 4. The table.
    rows = []
    for v in chosen:
        e = evaluations[v.name]
        s, robust = e.runs["distilled"].stats(), e.report.get("robust") or {}
        scores = {f"{k}_{m}": robust[k][m] for k in ("hlr", "ior", "lrs") if k in robust for m in ("mean", "std")}
        rows.append(AblationRow(v.name, v.changes, [config_name(ipc, seed, v.name) for seed in seeds], **s,
                                **scores))
    first = evaluations[names[0]]
    for baseline, label, what in (("random", "random real", "baseline: a random real subset of the same IPC"),
                                  ("full", "full real", "baseline: the full real train set")):
        rows.append(AblationRow(label, what, [], **first.runs[baseline].stats()))
    notes = []
    if any(c.is_tiny for cs in configs.values() for c in cs):
        notes.append("tiny preset: random-weight models, mechanics only (the numbers mean nothing)")
    recipe = first.recipe
    header = {"protocol": recipe.protocol, "student": recipe.student, "epochs": recipe.epochs,
              "image_size": recipe.image_size, "repeats": first.config.repeats, "ipc": ipc, "seeds": list(seeds),
              "classes": first.classes}
    result = AblationResult(output, chosen, list(seeds), run_dirs, rows, evaluations, header, notes=notes)
    if processes.is_main:
        result.report_path, result.table_path = output / "ablation.json", output / "ablation.md"
        write_json(result.report_path, {
            "format": REPORT_FORMAT, **header, "notes": notes,
            "accuracy_unit": "top-1 percent; mean ± std (ddof=0) over sets x repeats",
            "robust_definition": ROBUST_NOTE, "variants": [asdict(v) for v in chosen],
            "rows": [asdict(r) for r in rows],
            "run_dirs": {name: [str(d) for d in dirs] for name, dirs in run_dirs.items()},
            "evaluations": {name: str(e.results_path) for name, e in evaluations.items()}})
        write_text(result.table_path, "\n".join(table_lines(rows, header, notes)) + "\n")
        result.plot_path = plot_ablation(rows, output / "ablation.png",
                                         f"{recipe.protocol}-label protocol, {recipe.student}, IPC {ipc}")
        # Each run knows the ablation it belongs to: the dataset card links its sibling configurations and lists
        # every variant's scores.
        summary = {"variants": [{"name": r.name, "changes": r.changes, "config_names": r.config_names,
                                 **{k: v for k, v in asdict(r).items() if k.endswith(("_mean", "_std"))}}
                                for r in rows], **header}
        for v in chosen:
            for seed, run_dir in zip(seeds, run_dirs[v.name], strict=True):
                update_manifest(run_dir, ablation={"variant": v.name, "changes": v.changes,
                                                   "config_name": config_name(ipc, seed, v.name), **summary})
    processes.wait()
    return result


def _share_baselines(source: Path, target: Path) -> None:
    """Links the finished baseline trainings of one variant's evaluation beside another's (reused when their
    fingerprints match, retrained otherwise)."""
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for part in sorted(source.glob("random-*.json")) + sorted(source.glob("full-*.json")):
        kept, mine = read_json(part, default={}), read_json(target / part.name, default={})
        if kept.get("key") and kept.get("key") != mine.get("key"):
            with atomic_path(target / part.name, ".json") as tmp:
                try:
                    os.link(part, tmp)
                except OSError:
                    shutil.copy2(part, tmp)


def _pm(mean: float | None, std: float | None, digits: int = 1, sign: str = "") -> str:
    return "—" if mean is None else f"{mean:{sign}.{digits}f} ± {std:.{digits}f}"


def table_lines(rows: list[AblationRow], header: dict[str, Any], notes: list[str]) -> list[str]:
    """The ablation table in Markdown (also what the CLI prints)."""
    lines = [f"{header['protocol']}-label protocol, {header['student']}, {header['image_size']} px, "
             f"{header['epochs']} epochs, IPC {header['ipc']}, seeds {', '.join(map(str, header['seeds']))} x "
             f"{header['repeats']} repeats; top-1 %, mean ± std; HLR and IOR in points, LRS in [0, 1] (DD-Ranking)",
             "", "| Variant | Changes | Best top-1 | Final top-1 | HLR ↓ | IOR ↑ | LRS ↑ |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.changes} | {_pm(r.best_mean, r.best_std)} | "
                     f"{_pm(r.final_mean, r.final_std)} | {_pm(r.hlr_mean, r.hlr_std)} | "
                     f"{_pm(r.ior_mean, r.ior_std, sign='+')} | {_pm(r.lrs_mean, r.lrs_std, 3)} |")
    lines += [f"\n> {note}" for note in notes]
    return lines


def plot_ablation(rows: list[AblationRow], path: str | Path, title: str) -> Path:
    """Best top-1 per variant (bars, ± std), the random and full baselines as horizontal lines."""
    from matplotlib.figure import Figure

    variants = [r for r in rows if r.config_names]
    baselines = [r for r in rows if not r.config_names]
    figure = Figure(figsize=(max(5.0, 1.1 * len(variants) + 2), 4.2), layout="constrained")
    axes = figure.subplots()
    axes.bar(range(len(variants)), [r.best_mean for r in variants], yerr=[r.best_std for r in variants],
             color="C0", capsize=4)
    for i, r in enumerate(baselines):
        axes.axhline(r.best_mean, color=f"C{i + 1}", linestyle="--", label=f"{r.name}: {r.best_mean:.1f}")
    axes.set_xticks(range(len(variants)), [r.name for r in variants], rotation=20, ha="right")
    axes.set(ylabel="best top-1 on real test images (%)", title=title)
    axes.grid(axis="y", alpha=0.3)
    if baselines:
        axes.legend(loc="best", fontsize="small")
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110)
    return path
