"""What the CLI (and the app) print about a result: text for people, kept out of the library's result types.

Example:
    >>> for line in distill_lines(distill(config)):
    ...     print(line)
"""

from __future__ import annotations

from statistics import fmean
from typing import TYPE_CHECKING

from ..configs.distill import TINY_NOTE
from ..hub.cards import robust_text, size_text

if TYPE_CHECKING:
    from .ablate import AblationResult
    from .distill import DistillResult
    from .evaluate import EvalResult
    from .evaluate.results import RunResult
    from .finetune import FinetuneResult
    from .plan import StageEstimate
    from .reproduce import ReproduceResult
    from .teacher import TeacherResult

def distill_lines(result: DistillResult) -> list[str]:
    """What a distillation made and where it is (or which stages are done)."""
    lines = []
    if result.manifest.get("tiny"):
        lines.append(f"NOTE: {TINY_NOTE}")
    if result.dataset is not None:
        lines.append(f"distilled {result.dataset.num_rows} images ({len(result.manifest['source']['classes'])} "
                     f"classes x IPC {result.manifest['config']['ipc']}) -> {result.run_dir / 'dataset'}")
        lines.append(f"preview: {result.run_dir / 'preview.png'}; manifest: {result.run_dir / 'manifest.json'}")
        if "finetune" in result.manifest:
            lines.append(f"diffusion model: {result.manifest['finetune']['note']}")
    else:
        lines.append(f"stages done: {', '.join(result.manifest.get('stages_done', []))} in {result.run_dir}")
    return lines


def finetune_lines(result: FinetuneResult) -> list[str]:
    """Steps, loss trend, where the model is, and the command that generates with it."""
    kind = "LoRA adapter" if result.lora else "pipeline"
    lines = [f"fine-tuned {result.global_step}/{result.total_steps} steps ({result.epochs} epochs)"
             + (f", resumed from step {result.resumed_from}" if result.resumed_from is not None else "")
             + f" -> {kind} in {result.output} ({size_text(result.weights_bytes)} of weights)"]
    if result.losses:
        head, tail = result.losses[: max(1, len(result.losses) // 10)], result.losses[-max(1, len(result.losses) // 10):]
        lines.append(f"loss: {fmean(head):.4f} (first steps) -> {fmean(tail):.4f} (last steps); per step in "
                     f"{result.output / 'losses.jsonl'}")
    model = result.hub_repo or result.output
    flags = f"--diffusion-model {result.base_model} --lora {model}" if result.lora else f"--diffusion-model {model}"
    lines.append(f"generate with it: vldd generate --output RUN_DIR {flags}")
    if result.hub_repo:
        lines.append(f"published to the Hub model repository {result.hub_repo}")
    return lines


def evaluation_lines(result: EvalResult) -> list[str]:
    """The recipe in one line, then best and final top-1 (mean ± std) per training set."""
    sets, repeats = len(result.sets), result.config.repeats
    over = (f"{sets * repeats} trainings: {sets} set{'s' if sets > 1 else ''} x {repeats} training"
            f"{'s' if repeats > 1 else ''} per set (seeds {result.config.seed}..{result.config.seed + repeats - 1})")
    lines = [f"{result.config.protocol}-label protocol, {result.recipe.student}, {result.recipe.image_size} px, "
             f"{result.recipe.epochs} epochs, {len(result.classes)} classes, IPC {result.ipc} "
             f"(top-1 %, mean ± std over {over})"]
    profile = result.report.get("profile")
    if profile:
        shuffle = f", ShufflePatches {result.recipe.shuffle_factor}" if result.recipe.shuffle_factor else ""
        lines.append(f"  dataset profile {profile['family']} ({profile['image_size']} px{shuffle}"
                     f"{', small ResNet stem' if profile['small_stem'] else ''})")

    def line(name: str, run: RunResult) -> str:
        s = run.stats()
        return (f"  {name:9s} best {s['best_mean']:5.1f} ± {s['best_std']:.1f}   "
                f"final {s['final_mean']:5.1f} ± {s['final_std']:.1f}   ({run.repeats[0].train_images} images)")

    for name, run in result.runs.items():
        lines.append(line(name, run))
        if name == "distilled" and len(result.sets) > 1:
            lines += ["  " + line(f"set {i}", s) + f"  {s.name}" for i, s in enumerate(result.sets)]
    robust = robust_text(result.report.get("robust"))
    if robust:
        lines.append(f"  robust    {robust}  (DD-Ranking, best top-1)")
    if "trainings" in result.report:
        reused = result.report["reused"]
        lines.append(f"  {result.report['trainings']} trainings, {_duration(result.report['seconds'])} of training"
                     + (f" ({reused} reused from an earlier run)" if reused else ""))
    if result.results_path is not None:
        lines.append(f"results: {result.results_path}")
    return lines


def teacher_lines(result: TeacherResult) -> list[str]:
    """What the teacher reached, and the command that evaluates with it."""
    last = result.history[-1]
    best = max(result.history, key=lambda h: h["val_top1"])
    resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from else ""
    return [f"teacher {result.arch} at {result.image_size} px, {len(result.class_names)} classes, "
            f"{result.epochs} epochs{resumed}: val top-1 {last['val_top1']:.2f}% (best {best['val_top1']:.2f}% at "
            f"epoch {best['epoch']}), train loss {last['loss']:.4f}",
            f"checkpoint: {result.output}",
            f"evaluate with it: vldd evaluate --protocol soft --teacher {result.output} --distilled RUN_DIR"]


def reproduce_lines(result: ReproduceResult) -> list[str]:
    """The reproduction table: each training set's best and final top-1 beside the published number."""
    lines: list[str] = []
    e = result.evaluation
    seeds = ", ".join(map(str, result.seeds))
    lines.append(f"{result.cell.name}: {e.config.protocol}-label protocol, {e.recipe.student}, {e.recipe.epochs} "
                 f"epochs, {len(result.run_dirs)} sets (seeds {seeds}) x {e.config.repeats} trainings per set — "
                 f"top-1 %, mean ± std over the {len(result.run_dirs) * e.config.repeats} trainings")
    lines.append(f"  {'':12s} {'paper':>6s}   {'best':>13s}   {'final':>13s}   {'best - paper':>12s}")
    for row in result.rows:
        paper = "—" if row.published is None else f"{row.published:.1f}"
        diff = "" if row.difference is None else f"{row.difference:+.1f}"
        lines.append(f"  {row.name:12s} {paper:>6s}   {row.best_mean:6.1f} ± {row.best_std:4.1f}   "
                     f"{row.final_mean:6.1f} ± {row.final_std:4.1f}   {diff:>12s}")
    robust = robust_text(result.robust)
    if robust:
        lines.append(f"  {'VLCP (vldd)':12s} {robust}  (DD-Ranking, best top-1)")
    lines.append("  comparable with the paper" if result.comparable else "  NOT comparable with the paper:")
    for note in result.notes:
        lines.append(f"    - {note}")
    lines.append(f"report: {result.report_path}")
    return lines


def ablation_lines(result: AblationResult) -> list[str]:
    """The ablation table (as in OUTPUT/ablation.md) and where its files are."""
    from .ablate import table_lines

    lines = table_lines(result.rows, result.header, result.notes)
    lines.append(f"table: {result.table_path}; report: {result.report_path}; plot: {result.plot_path}")
    return lines


def plan_lines(estimates: list[StageEstimate], processes: int = 1) -> list[str]:
    """Per-stage estimates as a small table for the terminal: the mean time per item and the spread measured
    (min-max over the timed repeats), model loading, then how each stage was measured and what was extrapolated."""
    lines = [f"{'stage':<9} {'items':>10} {'s/item':>9} {'min-max (n)':>20} {'load':>7} {'time':>10} {'peak mem':>9}"
             f"   (with {processes} process(es))"]
    for e in estimates:
        spread = f"{e.spread[0]:.3g}-{e.spread[2]:.3g} ({e.samples})"
        lines.append(f"{e.stage:<9} {e.items:>8} {e.unit[:2]:<1} {e.seconds_per_item:>9.3f} {spread:>20} "
                     f"{_duration(e.load_seconds):>7} {_duration(e.seconds):>10} {e.peak_memory_gb:>7.2f}GB")
    lines.append(f"{'total':<9} {'':>10} {'':>9} {'':>20} {'':>7} {_duration(sum(e.seconds for e in estimates)):>10}")
    for e in estimates:
        model = f"{e.model} (real shapes, random weights)" if e.model.startswith("shapes://") else e.model
        parts = [x for x in (model, e.note) if x]
        if e.extrapolation:
            parts.append(f"EXTRAPOLATED: {e.extrapolation}")
        if parts:
            lines.append(f"  {e.stage}: " + "; ".join(parts))
    return lines


def busy_machine_note(load: float, cpus: int, threads: int) -> str | None:
    """A warning for `vldd plan` on a CPU that was busy while it measured (1-minute load average `load` at or above
    the `cpus`) with torch on several `threads`: then the parallel steps of small models wait on descheduled threads
    in episodes of seconds, and a timing can be many times the run's (or a fraction of it). None when not so."""
    if load < cpus or threads <= 1:
        return None
    return (f"NOTE: this machine was busy while measuring (load average {load:.1f} on {cpus} CPUs) and torch used "
            f"{threads} threads: multi-threaded CPU timings swing several-fold under load. Rerun the plan when the "
            "machine is quieter, or plan and run with one thread each (OMP_NUM_THREADS=1), which slows down in "
            "proportion to the load.")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"
