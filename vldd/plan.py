"""`vldd plan`: what a run will cost, measured on this device before running it.

Each heavy stage is timed on a few real items with the configured models (captioning and encoding a few images of
the first class, clustering one class-sized set of latents, generating one image), then scaled by the dataset's
counts and the number of processes.

Example:
    >>> for row in plan_run(load_config(overrides={"preset": "tiny"})):
    ...     print(row.stage, row.seconds)
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DistillConfig


@dataclass
class StageEstimate:
    stage: str  # caption, encode, cluster, generate
    items: int  # how many items the whole run processes in this stage
    unit: str  # what an item is
    seconds_per_item: float  # measured on this device
    seconds: float  # items x seconds_per_item / processes
    peak_memory_gb: float  # measured peak (GPU memory on CUDA, resident memory on CPU) while timing this stage


def _peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _timed(fn, repeats: int = 1, warmup: bool = True) -> float:
    if warmup:
        fn()  # first calls pay for kernels, caches and lazy imports
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def plan_run(config: DistillConfig, *, cache_dir: str | Path | None = None, processes: int = 1,
             sample_items: int = 4) -> list[StageEstimate]:
    """Estimates each stage's time and memory for `config` on the configured device.

    Args:
        config: the run to plan.
        cache_dir: where tiny models are built.
        processes: how many processes (GPUs) will share the run.
        sample_items: images captioned, encoded and generated for the measurement (in batches, as the run would).
    """
    from .captioning import caption_images, load_captioner
    from .generation import generate_images, load_pipeline
    from .pipeline import _classes_to_run, resolve_device, resolve_dtype
    from .prototypes import build_prototypes, encode_images

    if processes < 1:
        raise ValueError(f"`processes` must be >= 1, got {processes}")
    # 1. Count the work.
    from .data import load_source

    source = load_source(config.data)
    plan = _classes_to_run(source, config)
    n_images = sum(source.counts().values())
    n_outputs = sum(plan.values())
    largest = max(source.counts().values())
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    images, _, _ = source.load_class(source.classes[0])
    images = (images * sample_items)[:sample_items]
    rows = []

    # 2. Captioning (skipped when captions come from the Hub).
    if not config.caption.from_hub:
        c = config.caption
        captioner = load_captioner(c.model, revision=c.revision, device=device, dtype=dtype, cache_dir=cache_dir)
        name = source.class_names[source.classes[0]]
        per_batch = _timed(lambda: caption_images(captioner, images, name, prompt_template=c.prompt,
                                                  do_sample=c.do_sample, temperature=c.temperature,
                                                  max_new_tokens=c.max_new_tokens, batch_size=c.batch_size))
        rows.append(("caption", n_images, "image", per_batch / len(images), _peak_gb(device)))
        del captioner

    # 3. Encoding, clustering and generation with the SD pipeline.
    g, p = config.generation, config.prototypes
    pipe = load_pipeline(g.model, revision=g.revision, device=device, dtype=dtype, scheduler=g.scheduler,
                         lora=g.lora, cache_dir=cache_dir)
    latents = encode_images(pipe.vae, images, resolution=p.resolution, batch_size=p.encode_batch_size)
    per_image = _timed(lambda: encode_images(pipe.vae, images, resolution=p.resolution,
                                             batch_size=p.encode_batch_size)) / len(images)
    rows.append(("encode", n_images, "image", per_image, _peak_gb(device)))
    fake = torch.randn(largest, *latents.shape[1:], generator=torch.Generator().manual_seed(0)).to(device)
    k = min(config.ipc, max(1, largest // 2))
    per_class = _timed(lambda: build_prototypes(fake, k, contamination=p.contamination, n_neighbors=p.lof_neighbors,
                                                n_init=p.n_init, max_iter=p.max_iter, tol=p.tol), warmup=False)
    rows.append(("cluster", len(source.classes), "class", per_class, _peak_gb(device)))
    batch = min(g.batch_size, len(latents))
    per_output = _timed(lambda: generate_images(pipe, latents[:batch], ["a photo"] * batch, seeds=list(range(batch)),
                                                negative_prompt=g.negative_prompt, strength=g.strength,
                                                num_inference_steps=g.num_inference_steps,
                                                guidance_scale=g.guidance_scale, eta=g.eta, batch_size=batch)) / batch
    rows.append(("generate", n_outputs, "image", per_output, _peak_gb(device)))
    return [StageEstimate(stage, items, unit, per, items * per / processes, peak)
            for stage, items, unit, per, peak in rows]


def format_plan(estimates: list[StageEstimate], processes: int = 1) -> list[str]:
    """A small table for the terminal."""
    lines = [f"{'stage':<9} {'items':>10} {'s/item':>9} {'time':>10} {'peak mem':>9}   (with {processes} process(es))"]
    for e in estimates:
        lines.append(f"{e.stage:<9} {e.items:>8} {e.unit[:2]:<1} {e.seconds_per_item:>9.3f} "
                     f"{_duration(e.seconds):>10} {e.peak_memory_gb:>7.2f}GB")
    lines.append(f"{'total':<9} {'':>10} {'':>9} {_duration(sum(e.seconds for e in estimates)):>10}")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"
