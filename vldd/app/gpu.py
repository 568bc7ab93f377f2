"""GPU work of the app in bounded calls: one call per class, planned against ZeroGPU's quota before any of them.

ZeroGPU gives each `@spaces.GPU` call the duration it requests, multiplied by a slice factor, and refuses a call
that asks for more than the visitor's remaining daily quota. So the app plans a run before its first GPU call:
one call per class, each request capped, the total (after the factor) compared with what the visitor can likely
spend. The controller (`run_classes`) then loops in the main process: it skips classes whose results the run
directory already holds under the run's fingerprints (resume, as `vldd distill` does), reports after each class,
and stops between calls when the session's stop flag is set or the event is cancelled.

Example:
    >>> quota = GpuQuota(1.5, 60, {"anonymous": 120, "free": 300, "pro": 2400})
    >>> plan = plan_gpu_calls({"circle": 20, "square": 20}, quota, tier="anonymous")
    >>> plan.total_seconds
    60.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..configs.distill import DistillConfig
from ..data.sources import SourceDataset

if TYPE_CHECKING:
    from .models import ModelCache

TIERS = ("anonymous", "free", "pro")


class LimitError(ValueError):
    """A request over one of the Space's limits; the message names the limit and what to shrink."""


@dataclass(frozen=True)
class GpuQuota:
    """ZeroGPU's accounting (settings.yaml `zerogpu`, where the values are explained)."""

    duration_factor: float  # `spaces` multiplies each requested duration by this on the default slice
    max_call_seconds: int  # one call (one class) requests at most this, before the factor
    daily_seconds: dict[str, float]  # a visitor's likely daily GPU time, per tier

    def __post_init__(self):
        missing = [t for t in TIERS if t not in self.daily_seconds]
        if missing:
            raise ValueError(f"`zerogpu.daily_quota_seconds` must give {list(TIERS)}, missing {missing}")
        if self.duration_factor < 1 or self.max_call_seconds < 1:
            raise ValueError(f"`zerogpu.duration_factor` must be >= 1 and `max_call_seconds` >= 1, got "
                             f"{self.duration_factor} and {self.max_call_seconds}")


def visitor_tier(profile: Mapping[str, Any] | None) -> str:
    """"anonymous" without a sign-in, "pro" for a PRO account (the `isPro` claim of HF's OAuth profile), else
    "free"."""
    if profile is None:
        return "anonymous"
    return "pro" if profile.get("isPro") else "free"


def _a(tier: str) -> str:
    return f"{'an' if tier[0] in 'aeiou' else 'a'} {tier}"


@dataclass
class GpuPlan:
    """The GPU calls of a run: one per class still to do, with the seconds each requests (before the factor)."""

    seconds: dict[str, int]  # class name -> requested duration of its call
    factor: float  # the slice factor ZeroGPU applies

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values()) * self.factor

    def describe(self, tier: str | None, quota: GpuQuota) -> str:
        if not self.seconds:
            return "Every class is already done: no GPU time needed."
        text = f"Estimated GPU time: {len(self.seconds)} call(s), one per class, {self.total_seconds:.0f} s in all"
        if tier is not None:
            text += (f" (requests of {max(self.seconds.values())} s at most, × {self.factor:g} as ZeroGPU counts "
                     f"them); {_a(tier)} visitor's daily ZeroGPU quota is about {quota.daily_seconds[tier]:.0f} s")
        return text + "."


RUN_SHRINK = "Use fewer source images per class, a lower IPC, fewer steps, or published captions."


def plan_gpu_calls(per_class: dict[str, int], quota: GpuQuota, tier: str | None, shrink: str = RUN_SHRINK) -> GpuPlan:
    """Checks a run's per-class GPU calls against the per-call cap and, on ZeroGPU, the visitor's daily quota.

    Args:
        per_class: class name -> estimated seconds of its call, for the classes still to do.
        quota: the cap, the factor and the daily quotas (settings.yaml `zerogpu`).
        tier: "anonymous", "free" or "pro" on ZeroGPU; None elsewhere (no quota, no cap).
        shrink: what the visitor can lower when one call is over the cap (a run's sizes; an evaluation's epochs).

    Raises:
        LimitError: a call over the cap, or a total over the tier's quota; the message says what to shrink.
    """
    plan = GpuPlan(dict(per_class), quota.duration_factor if tier is not None else 1.0)
    if tier is None:
        return plan
    over = {name: s for name, s in per_class.items() if s > quota.max_call_seconds}
    if over:
        name, seconds = next(iter(over.items()))
        raise LimitError(f"One class ({name!r}) is estimated at {seconds} s of GPU time in one call; this Space "
                         f"requests at most {quota.max_call_seconds} s per call. {shrink}")
    allowed = quota.daily_seconds[tier]
    if plan.total_seconds > allowed:
        better = [t for t in TIERS[TIERS.index(tier) + 1:] if quota.daily_seconds[t] >= plan.total_seconds]
        hint = f"; or sign in ({better[0]} account: about {quota.daily_seconds[better[0]]:.0f} s a day)" if better \
            else ""
        raise LimitError(f"This run is estimated at {plan.total_seconds:.0f} s of ZeroGPU time ({len(per_class)} "
                         f"calls × ZeroGPU's factor {quota.duration_factor:g}); {_a(tier)} visitor's daily quota is "
                         f"about {allowed:.0f} s. Choose fewer classes, fewer source images per class, a lower IPC "
                         f"or fewer steps{hint}.")
    return plan


def quota_ran_out(spaces_message: str, kept: list[str], total: int, tier: str | None) -> str:
    """What a visitor reads when ZeroGPU refuses a call mid-run (its daily quota is used up): what is kept, that a
    rerun resumes, and how to get more quota."""
    more = {"anonymous": "or sign in with Hugging Face (a free account has a larger daily quota)",
            "free": "or subscribe to PRO for a larger daily quota"}.get(tier or "", "or add ZeroGPU credits")
    done = f"{len(kept)} of {total} classes are kept ({', '.join(kept)})" if kept else \
        f"none of the {total} classes had finished"
    return (f"ZeroGPU refused the next GPU call: {spaces_message.strip()} {done}; run again later (the run resumes "
            f"after the finished classes), {more}.")


# --- one class per call ----------------------------------------------------------------------------------------------

@dataclass
class ClassJob:
    """Everything one GPU call needs, as plain picklable values (ZeroGPU sends it to a forked worker)."""

    config: DistillConfig  # the run's config, its data narrowed to this class
    stages: tuple[str, ...]
    source: SourceDataset  # the run's source, already opened on the CPU, narrowed to this class
    fingerprints: dict[str, str]  # the run's stage fingerprints, computed once in the main process
    seconds: int  # the duration this call requests (capped at `GpuQuota.max_call_seconds`)
    placement: tuple[str, str]  # (device, dtype) of the models, decided in the main process
    decode: bool = False  # also return the class's prototypes decoded by the VAE (the Prototypes tab shows them)
    cache_dir: str | None = None  # where tiny:// models are built (names the process's model cache)


@dataclass
class ClassResult:
    label: int
    decoded: list[Any] = field(default_factory=list)  # PIL images of the decoded prototypes, when asked


def one_class(config: DistillConfig, source: SourceDataset, label: int) -> tuple[DistillConfig, SourceDataset]:
    """The config and source of one class of a run (results per class do not depend on the other classes)."""
    narrowed = dataclasses.replace(source, classes=[label], indices={label: source.indices[label]}, skipped={})
    return dataclasses.replace(config, data=dataclasses.replace(config.data, classes=[label])), narrowed


@dataclass
class ClassUpdate:
    done: int  # classes finished
    total: int
    message: str
    result: ClassResult | None = None
    stopped: bool = False  # the run stopped before class `done + 1` (Stop, or the session ended)


def run_classes(config: DistillConfig, source: SourceDataset, stages: tuple[str, ...], *,
                fingerprints: dict[str, str], seconds: int, placement: tuple[str, str],
                gpu_call: Callable[[ClassJob], ClassResult], decode: bool = False, cache_dir: str | None = None,
                stop: Callable[[], bool] | None = None) -> Iterator[ClassUpdate]:
    """Runs `stages` with one `gpu_call` per class, skipping classes already done; yields after each class.

    Before each class's call it asks `stop()`: when true, it yields a last update with `stopped` set and returns
    (the app's Stop, `/stop` and a session's end set that flag). Closing the generator between classes (what Gradio
    does when the browser cancels the event) stops it too. Finished classes stay on disk and the next run resumes
    after them.

    Args:
        fingerprints: the run's stage fingerprints (`vldd.jobs.distill.run_fingerprints`): a class is done when every
            one of `stages` holds its result under them, and each call reuses them (the VAE is read once a run).
        seconds: the duration each call requests (already capped).
        placement: (device, dtype) of the models, as the main process resolved them.
        decode: also decode each class's prototypes (every class is called, done or not).
        gpu_call: runs a `ClassJob` (the app's `@spaces.GPU` function, or a plain call off ZeroGPU).
    """
    names = [source.class_names[label] for label in source.classes]
    what = " → ".join(dict.fromkeys("text prototypes" if s == "text" else s for s in stages))
    yield ClassUpdate(0, len(names), f"{what}: starting on {len(names)} classes")
    todo = set(pending(config, source, stages, fingerprints, decode))
    for i, (label, name) in enumerate(zip(source.classes, names)):
        if label not in todo:
            yield ClassUpdate(i + 1, len(names), f"{what}: {i + 1}/{len(names)} classes ({name}: already done)")
            continue
        if stop is not None and stop():
            yield ClassUpdate(i, len(names), f"{what}: stopped after {i}/{len(names)} classes", stopped=True)
            return
        one_config, one_source = one_class(config, source, label)
        result = gpu_call(ClassJob(one_config, stages, one_source, fingerprints, seconds, placement, decode,
                                   cache_dir))
        yield ClassUpdate(i + 1, len(names), f"{what}: {i + 1}/{len(names)} classes done ({name})", result)


def pending(config: DistillConfig, source: SourceDataset, stages: tuple[str, ...], fingerprints: dict[str, str],
            decode: bool = False) -> list[int]:
    """The classes of a run that `run_classes` will call the GPU for (with `decode`, every class): those some of
    `stages` has no result for under the run's `fingerprints`."""
    from ..jobs.distill import missing_classes

    if decode:
        return list(source.classes)
    return missing_classes(config.output, fingerprints, stages, source.classes)


# --- the work of one call, and of the run once every class is done ---------------------------------------------

def run_class(job: ClassJob, models: ModelCache) -> ClassResult:
    """One GPU call's work: `job.stages` on one class, with the process's models at the main process's placement."""
    from ..jobs.distill import distill

    config = job.config
    label = job.source.classes[0]
    captioner = models.deferred("captioner", config, job.placement) if "caption" in job.stages and not \
        config.caption.from_hub else None
    pipeline = models.deferred("pipeline", config, job.placement) if {"prototypes", "generate"} & set(job.stages) \
        else None
    distill(config, stages=job.stages, source=job.source, cache_dir=models.cache_dir, progress=True,
            captioner=captioner, pipeline=pipeline, fingerprints=job.fingerprints)
    decoded = []
    if job.decode:
        import torch

        from ..core.runs import result_file, work_dir
        from ..stages.prototypes import decode_latents

        protos = torch.load(result_file(work_dir(config.output, "prototypes"), label, ".pt"), weights_only=True)
        decoded = decode_latents(models.pipeline(config, job.placement).vae, protos["centers"])
    return ClassResult(label, decoded)


def finish_run(config: DistillConfig, source: SourceDataset, stages: tuple[str, ...], fingerprints: dict[str, str]
               ) -> str:
    """After every class's GPU call: writes the run's combined outputs (captions, dataset, preview, manifest) on the
    CPU, loading no model, and returns the summary shown to the visitor."""
    from ..jobs.distill import distill

    result = distill(config, stages=stages, source=source, fingerprints=fingerprints)
    what = " → ".join(dict.fromkeys("text prototypes" if s == "text" else s for s in stages))
    return _summary(result, what)


def _summary(result, what: str) -> str:
    from ..configs.distill import TINY_NOTE

    lines = [f"**Note**: {TINY_NOTE}"] if result.manifest.get("tiny") else []
    if result.dataset is not None:
        lines.append(f"Distilled {result.dataset.num_rows} images ({len(result.manifest['source']['classes'])} classes "
                     f"× IPC {result.manifest['config']['ipc']}).")
    else:
        lines.append(f"Done: {what}.")
    return "\n".join(lines)

