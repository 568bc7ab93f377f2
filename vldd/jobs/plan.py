"""`vldd plan`: what a run will cost, measured on this device before running it.

Each heavy stage is timed on a few real items with the configured models, then scaled by the dataset's counts and
the number of processes. Every measurement is warmed up once (kernels, caches, lazy imports) and then repeated for
a while (at least 3 times and 2 s, at most 1000 times or 30 s; `sample`), so that a short stall of the machine is
averaged in rather than taken for the rate: the estimate uses the mean (the run's time is the sum of its calls,
stalls included), and the spread seen (min / median / max) is reported with it, as is the time to load each model.
The stages: captioning (prefill and per-token decoding, projected to the full token budget), VAE encoding,
clustering one class-sized set of latents, generation (per UNet call, projected to the configured steps) and, when
asked, fine-tuning (forward and backward of the UNet). Peak memory is measured per stage: allocated GPU
memory on CUDA, the process's resident memory sampled while the stage runs on CPU.

When the paper's models are not in the local Hub cache, their real-shape stand-ins (`vldd.models.paper_shapes`: the same
architectures with random weights, which cost the same) are measured instead; on a CPU the 7B captioner is measured
with 2 of its 32 decoder layers, the time spent in them scaled by 16 (every layer has the same shape).

Example:
    >>> for row in plan_run(load_config(overrides={"preset": "tiny"})):
    ...     print(row.stage, row.seconds)
"""

from __future__ import annotations

import copy
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..configs.distill import DistillConfig
from ..models.paper_shapes import SHAPES_CAPTIONER, SHAPES_DIFFUSION, parse_shape_id

if TYPE_CHECKING:
    from ..configs.distill import CaptionConfig, GenerationConfig
    from ..configs.finetune import FinetuneConfig
    from ..stages.caption import Captioner

# Hub ids of the paper's models and their real-shape stand-ins.
REAL_SHAPES = {"llava-hf/llava-1.5-7b-hf": SHAPES_CAPTIONER,
               "stable-diffusion-v1-5/stable-diffusion-v1-5": SHAPES_DIFFUSION,
               "benjamin-paine/stable-diffusion-v1-5": SHAPES_DIFFUSION,
               "runwayml/stable-diffusion-v1-5": SHAPES_DIFFUSION}


@dataclass
class StageEstimate:
    stage: str  # caption, finetune, encode, cluster, generate
    items: int  # how many items the whole run processes in this stage
    unit: str  # what an item is
    seconds_per_item: float  # measured on this device: the mean of the repeated measurements
    seconds: float  # load_seconds + items x seconds_per_item / processes
    peak_memory_gb: float  # peak while this stage was measured (GPU memory on CUDA, resident memory on CPU)
    model: str = ""  # the model measured (a `shapes://` id when the real weights are not cached)
    note: str = ""  # how it was measured
    spread: tuple[float, float, float] = (0.0, 0.0, 0.0)  # min, median, max seconds per item over the repeats
    samples: int = 1  # timed repeats (after the warm-up)
    load_seconds: float = 0.0  # loading the stage's model (imports included), paid once per process
    extrapolation: str = ""  # what was measured at another shape than the run's, and by what factor it was scaled


# How long `sample` repeats a measurement: at least MIN_REPEATS times and MIN_SECONDS, at most MAX_REPEATS times or
# MAX_SECONDS (then at least once). Millisecond calls (the tiny preset's) are repeated for MIN_SECONDS: a shorter
# window can fall entirely into one stall of a busy machine, or miss the stalls the run will have.
MIN_REPEATS, MIN_SECONDS, MAX_REPEATS, MAX_SECONDS = 3, 2.0, 1000, 30.0
# A caption budget this small is decoded in full for a class's worth of sample images: their captions' lengths then
# tell how generation batches.
FULL_CAPTION_TOKENS = 64


def sample(measure: Callable[[bool], float], *, min_repeats: int = MIN_REPEATS, min_seconds: float = MIN_SECONDS,
           max_repeats: int = MAX_REPEATS, max_seconds: float = MAX_SECONDS) -> list[float]:
    """Repeated measurements: `measure(warmup)` returns one measurement, warming up first when `warmup` (True on the
    first call only). Repeats until there are `min_repeats` values and `min_seconds` have passed, or `max_repeats`
    values, or `max_seconds` have passed."""
    values: list[float] = []
    start = time.perf_counter()
    while True:
        values.append(measure(not values))
        spent = time.perf_counter() - start
        if len(values) >= max_repeats or spent >= max_seconds or (len(values) >= min_repeats and spent >= min_seconds):
            return values


def spread(values: list[float], per: float = 1.0) -> tuple[float, float, float]:
    """(min, median, max) of `values`, each divided by `per`."""
    return min(values) / per, statistics.median(values) / per, max(values) / per


def mean(values: list[float], per: float = 1.0) -> float:
    """The mean of `values` divided by `per`: the estimate (total time measured / items measured)."""
    return statistics.fmean(values) / per


class PeakMemory:
    """Measures a block's peak memory: allocated CUDA memory on a GPU; on a CPU, the process's resident set size,
    sampled every `interval` seconds by a thread (so it includes whatever the process already holds).

    Example:
        >>> with PeakMemory(torch.device("cpu")) as peak:
        ...     x = torch.ones(2**28)
        >>> peak.gb >= 1.0
        True
    """

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval, self.gb = device, interval, 0.0
        self._peak, self._stop = 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.gb = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            self._stop.set()
            self._thread.join()
            self.gb = max(self._peak, self._rss()) / 2**30


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1, warmup: bool = True) -> float:
    """Seconds per call of `fn` (after one untimed call that pays for kernels, caches and lazy imports)."""
    if warmup:
        fn()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def stand_in(model_id: str) -> str:
    """The real-shape stand-in (`shapes://...`) of a paper model whose weights are not in the local Hub cache;
    any other id unchanged."""
    if model_id not in REAL_SHAPES:
        return model_id
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_id, "model_index.json" if REAL_SHAPES[model_id] == SHAPES_DIFFUSION
                                    else "config.json")
    return model_id if isinstance(cached, str) else REAL_SHAPES[model_id]


# --- per-call timing ----------------------------------------------------------------------------------------------

class CallTimer:
    """Times every forward call of `module` with hooks, and, within each, the time spent in `layers` (a stack of
    identical layers, e.g. a decoder's), so a depth-reduced model's cost can be scaled to the full depth from the
    same run. Use as a context manager; `calls` holds `(seconds, seconds in layers)` per call. On CUDA every hook
    synchronizes the device, so the times are the kernels' and not their launches'."""

    def __init__(self, module: torch.nn.Module, layers: torch.nn.ModuleList | None = None):
        device = next(module.parameters()).device
        self._sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self.calls: list[tuple[float, float]] = []
        self._handles = []
        self._start = self._layer_start = 0.0
        self._in_layers = 0.0
        self._hook(module, self._enter, self._exit)
        for layer in layers or []:
            self._hook(layer, self._enter_layer, self._exit_layer)

    def _hook(self, module, pre, post) -> None:
        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def _now(self) -> float:
        self._sync()
        return time.perf_counter()

    def _enter(self, *_) -> None:
        self._in_layers, self._start = 0.0, self._now()

    def _exit(self, *_) -> None:
        self.calls.append((self._now() - self._start, self._in_layers))

    def _enter_layer(self, *_) -> None:
        self._layer_start = self._now()

    def _exit_layer(self, *_) -> None:
        self._in_layers += self._now() - self._layer_start

    def scaled(self, index: int, factor: float = 1.0) -> float:
        """Call `index`'s seconds with its time in `layers` multiplied by `factor` (full depth / present depth)."""
        total, in_layers = self.calls[index]
        return total + (factor - 1.0) * in_layers

    def __enter__(self) -> CallTimer:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


# --- captioning -------------------------------------------------------------------------------------------------------

def caption_cost(captioner: Captioner, images: list, class_name: str, c: CaptionConfig, *, decode_tokens: int = 4,
                 full_layers: int | None = None, warmup: bool = True) -> tuple[float, float]:
    """Seconds of one `caption_images` batch of `images`: (prefill, one decoding step).

    Generation is forced to run `decode_tokens` tokens (`min_new_tokens`), so a random-weight model that would stop
    early, or never stop, costs what a real caption costs. Each forward call is timed: prefill = the first call plus
    everything outside the model (processor, sampling, decoding), a decoding step = the mean of the other calls.
    With `full_layers`, the time in the decoder layers is scaled from the model's depth to that many layers.
    """
    from ..stages.caption import caption_images

    model, device = captioner.model, captioner.model.device
    layers = model.model.language_model.layers if full_layers else None
    factor = full_layers / len(layers) if full_layers else 1.0
    config = model.generation_config
    saved = config.min_new_tokens

    def run() -> None:
        caption_images(captioner, images, class_name, prompt_template=c.prompt, do_sample=c.do_sample,
                       temperature=c.temperature, max_new_tokens=decode_tokens, batch_size=len(images))

    config.min_new_tokens = decode_tokens
    try:
        if warmup:  # kernels, caches, lazy imports
            run()
        with CallTimer(model, layers) as timer:
            total = timed(run, device, warmup=False)
    finally:
        config.min_new_tokens = saved
    if len(timer.calls) != decode_tokens:
        raise RuntimeError(f"expected {decode_tokens} forward calls of the captioner, timed {len(timer.calls)}")
    outside = total - sum(t for t, _ in timer.calls)
    decode = [timer.scaled(i, factor) for i in range(1, decode_tokens)]
    return timer.scaled(0, factor) + outside, sum(decode) / len(decode) if decode else 0.0


def _caption_row(c: CaptionConfig, images: list, class_name: str, device, dtype, cache_dir, hub_kernels: bool,
                 class_images: list) -> dict:
    """The caption stage's estimate fields, per image, for the whole token budget.

    With a small budget (at most FULL_CAPTION_TOKENS) and the run's own model, `class_images` are captioned as the run
    will caption them (the whole budget, the run's batch size), and that is what is timed: nothing is projected, and
    the captions are returned (`captions`: their lengths decide how generation batches). Otherwise a batch of `images`
    is timed over a few decoding steps and projected to the budget (`caption_cost`)."""
    from ..stages.caption import caption_images, load_captioner

    model_id = stand_in(c.model)
    full = None
    if model_id == SHAPES_CAPTIONER and device.type == "cpu":  # 7B in fp32 does not fit: 2 layers, scaled
        full, model_id = parse_shape_id(model_id)[1]["layers"], f"{model_id}?layers=2"
    decode_tokens = 4
    as_run = c.max_new_tokens <= FULL_CAPTION_TOKENS and model_id == c.model
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        captioner = load_captioner(model_id, revision=None if model_id != c.model else c.revision, device=device,
                                   dtype=dtype, cache_dir=cache_dir, hub_kernels=hub_kernels)
        load = time.perf_counter() - start
        if as_run:
            def caption_class(captioner=captioner) -> list[str]:
                return caption_images(captioner, class_images, class_name, prompt_template=c.prompt,
                                      do_sample=c.do_sample, temperature=c.temperature,
                                      max_new_tokens=c.max_new_tokens, batch_size=c.batch_size,
                                      conversation=c.conversation, pad_to_square=c.pad_to_square,
                                      clean=c.clean_captions)

            captions = caption_class()  # also the warm-up
            values = sample(lambda warmup: timed(caption_class, device, warmup=warmup))
        else:
            def measure(warmup: bool, captioner=captioner) -> float:
                prefill, decode = caption_cost(captioner, images, class_name, c, decode_tokens=decode_tokens,
                                               full_layers=full, warmup=warmup)
                return prefill + (c.max_new_tokens - 1) * decode

            captions, values = None, sample(measure)
        layer_gb = decoder_layer_bytes(captioner) / 2**30
        del captioner
        gc.collect()
    if as_run:
        per, extrapolation = len(class_images), []
        note = f"a class's {len(class_images)} images captioned in full, in batches of at most {c.batch_size}"
    else:
        per, steps = len(images), (c.max_new_tokens - 1) / (decode_tokens - 1)
        extrapolation = [f"decoding timed over {decode_tokens - 1} steps, projected to the budget of "
                         f"{c.max_new_tokens} new tokens (x{steps:.3g})"] if steps != 1 else []
        note = f"batch of {len(images)} images"
    gb = peak.gb
    if full:
        gb += (full - 2) * layer_gb
        extrapolation.append(f"decoder layers timed at 2 of {full}, their time scaled x{full / 2:g}; peak memory + "
                             f"{full - 2} layers' weights")
    return {"values": values, "per": per, "peak": gb, "model": model_id, "note": note, "load": load,
            "extrapolation": "; ".join(extrapolation), "captions": captions}


def decoder_layer_bytes(captioner: Captioner) -> int:
    """Bytes of one decoder layer's weights (what each extra layer adds to a LLaVA-style captioner's memory)."""
    layer = captioner.model.model.language_model.layers[0]
    return sum(p.numel() * p.element_size() for p in layer.parameters())


# --- generation ---------------------------------------------------------------------------------------------------------

def unet_calls(pipe, num_inference_steps: int, strength: float) -> int:
    """How many UNet calls img2img makes (scheduler order and PNDM's extra step included)."""
    from ..configs.distill import denoising_steps

    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(num_inference_steps)
    start = max(num_inference_steps - denoising_steps(num_inference_steps, strength), 0)
    return len(scheduler.timesteps[start * scheduler.order:])


def generation_cost(pipe, latents: torch.Tensor, g: GenerationConfig, warmup: bool = True) -> float:
    """Seconds to generate the images of `latents` in one batch with `g`'s settings: a run with few steps is timed
    call by call; the time outside the UNet (prompt encoding, VAE decoding...) plus the mean UNet call times the
    number of calls `g` makes."""
    from ..stages.generate import generate_images

    n = len(latents)
    steps = next(s for s in range(1, 1000) if unet_calls(pipe, s, g.strength) >= 2)

    def run() -> None:
        generate_images(pipe, latents, ["a photo"] * n, seeds=list(range(n)), negative_prompt=g.negative_prompt,
                        strength=g.strength, num_inference_steps=steps, guidance_scale=g.guidance_scale, eta=g.eta,
                        batch_size=n)

    if warmup:
        run()
    with CallTimer(pipe.unet) as timer:
        total = timed(run, pipe.device, warmup=False)
    per_call = sum(t for t, _ in timer.calls) / len(timer.calls)
    return total - per_call * len(timer.calls) + per_call * unet_calls(pipe, g.num_inference_steps, g.strength)


# --- fine-tuning --------------------------------------------------------------------------------------------------------

def finetune_cost(pipe, batch_size: int, resolution: int, *, gradient_checkpointing: bool = True,
                  mixed_precision: str = "no", warmup: bool = True) -> float:
    """Seconds of one training micro-batch of the recipe (`vldd.jobs.finetune`): VAE encoding and text encoding without
    gradients, the UNet's forward and backward. The optimizer and EMA updates (once per batch x accumulation images)
    are not timed. Gradients are freed afterwards; the UNet is left as it was."""
    from .finetune import micro_step

    unet, device = pipe.unet, pipe.device
    g = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.rand(batch_size, 3, resolution, resolution, generator=g) * 2 - 1,
             "input_ids": torch.randint(0, pipe.tokenizer.vocab_size, (batch_size, 77), generator=g)}
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)

    def step() -> None:
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = micro_step(batch, vae=pipe.vae, text_encoder=pipe.text_encoder, unet=unet,
                               noise_scheduler=noise_scheduler, generator=torch.Generator(device).manual_seed(0),
                               weight_dtype=pipe.vae.dtype, device=device)
        loss.backward()

    was_training, was_checkpointing = unet.training, unet.is_gradient_checkpointing
    unet.train()
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.requires_grad_(True)
    try:
        return timed(step, device, warmup=warmup)
    finally:
        unet.requires_grad_(False)
        unet.zero_grad(set_to_none=True)
        unet.train(was_training)
        if not was_checkpointing:
            unet.disable_gradient_checkpointing()


# --- the plan -----------------------------------------------------------------------------------------------------------

def plan_run(config: DistillConfig, *, cache_dir: str | Path | None = None, processes: int = 1,
             sample_items: int = 4, finetune: FinetuneConfig | None = None) -> list[StageEstimate]:
    """Estimates each stage's time and memory for `config` on the configured device.

    Args:
        config: the run to plan.
        cache_dir: where tiny and real-shape models are built.
        processes: how many processes (GPUs) will share the run.
        sample_items: images captioned, encoded and generated for the measurement (in batches, as the run would). With
            a caption budget of at most FULL_CAPTION_TOKENS, a class's worth of images (one per generated image) is
            also captioned in full: their captions' lengths decide how generation batches.
        finetune: the fine-tuning stage's settings; None = the run's own (`vldd.jobs.finetune.finetune_settings`: none
            when `finetune.enabled` is off or the diffusion model is given).
    """
    from ..core.devices import resolve_device, resolve_dtype
    from ..data.sources import load_source
    from ..stages.generate import length_batches, load_pipeline, prompt_lengths
    from ..stages.prototypes import build_prototypes, encode_images
    from .distill import cluster_plan
    from .finetune import finetune_settings

    if processes < 1:
        raise ValueError(f"`processes` must be >= 1, got {processes}")
    # 1. Count the work.
    source = load_source(config.data)
    config, _ = config.resolve(source.profile)  # settings derived from the source, as distill does
    plan = cluster_plan(config, source)
    n_images = sum(source.counts().values())
    n_outputs = sum(plan.values())
    largest = max(source.counts().values())
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    finetune = finetune if finetune is not None else finetune_settings(config, config.output, dtype)
    per_class = max(1, round(n_outputs / len(plan)))  # images (and prompts) generated per class
    class_images, _, _ = source.load_class(source.classes[0])
    images = (class_images * sample_items)[:sample_items]
    rows: list[tuple[str, int, str, dict]] = []  # stage, items, unit, measurement (see `_caption_row`)

    # 2. Captioning (skipped when captions come from the Hub).
    c = config.caption
    if not c.from_hub:
        name = source.class_names[source.classes[0]]
        batch = images[: min(c.batch_size, len(images))]
        rows.append(("caption", n_images, "image", _caption_row(
            c, batch, name, device, dtype, cache_dir, config.hub_kernels, (class_images * per_class)[:per_class])))

    # 3. Encoding, fine-tuning, clustering and generation with the SD pipeline (loaded once, as `distill` does).
    g, p = config.generation, config.prototypes
    model_id = stand_in(g.model)
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        pipe = load_pipeline(model_id, revision=g.revision if model_id == g.model else None, device=device,
                             dtype=dtype, scheduler=g.scheduler, lora=g.lora, cache_dir=cache_dir,
                             hub_kernels=config.hub_kernels)
        load = time.perf_counter() - start
        latents = encode_images(pipe.vae, images, resolution=p.resolution, batch_size=p.encode_batch_size)
        values = sample(lambda warmup: timed(lambda: encode_images(pipe.vae, images, resolution=p.resolution,
                                                                   batch_size=p.encode_batch_size),
                                             device, warmup=False))
    rows.append(("encode", n_images, "image", {"values": values, "per": len(images), "peak": peak.gb,
                                               "model": model_id, "load": load,
                                               "note": "includes loading the diffusion pipeline"}))
    if finetune is not None:
        b = min(finetune.train_batch_size, sample_items)
        with PeakMemory(device) as peak:
            values = sample(lambda warmup: finetune_cost(
                pipe, b, finetune.resolution, mixed_precision=finetune.mixed_precision if device.type == "cuda"
                else "no", gradient_checkpointing=finetune.gradient_checkpointing, warmup=warmup))
        epochs = finetune.num_train_epochs
        rows.append(("finetune", n_images * epochs, "image", {
            "values": values, "per": b, "peak": peak.gb, "model": model_id, "load": load,
            "note": f"{epochs} epochs; optimizer not timed",
            "extrapolation": f"micro-batch {b} timed, the recipe's is {finetune.train_batch_size}"
            if b != finetune.train_batch_size else ""}))
    fake = torch.randn(largest, *latents.shape[1:], generator=torch.Generator().manual_seed(0)).to(device)
    k = min(config.ipc, max(1, largest // 2))
    with PeakMemory(device) as peak:
        values = sample(lambda warmup: timed(lambda: build_prototypes(
            fake, k, contamination=p.contamination, n_neighbors=p.lof_neighbors, n_init=p.n_init, max_iter=p.max_iter,
            tol=p.tol), device, warmup=warmup))
    rows.append(("cluster", len(source.classes), "class", {"values": values, "per": 1, "peak": peak.gb, "model": "",
                                                           "note": f"{largest} latents, k={k}"}))
    # Pipeline calls per class: `generate_images` batches only prompts of one embedding length. With a class's worth of
    # real captions (a small caption budget), their lengths give the calls a class makes; otherwise one image per call,
    # what long captions of varied lengths give (an upper bound where prompts share a length).
    captions = next((m.get("captions") for stage, _, _, m in rows if stage == "caption"), None)
    if captions:
        lengths = prompt_lengths(pipe.tokenizer, captions, g.negative_prompt, g.prompt_chunking)
        sizes = [len(b) for b in length_batches([lengths[i % len(lengths)] for i in range(per_class)], g.batch_size)]
        note = (f"{len(sizes)} pipeline calls per class of {per_class} images, batched by the embedding lengths of "
                f"{len(captions)} sample captions")
    else:
        sizes = [1] * per_class
        note = "one image per call (captions' lengths unknown before captioning: an upper bound)"
    biggest = min(max(sizes), len(latents))

    def class_seconds(warmup: bool) -> float:
        """One class's generation: a call of k images costs the linear interpolation between a call of 1 and one of
        `biggest` images, both timed here, one right after the other (so they see the same machine)."""
        one = generation_cost(pipe, latents[:1], g, warmup=warmup)
        if biggest == 1:
            return one * len(sizes)
        slope = (generation_cost(pipe, latents[:biggest], g, warmup=warmup) - one) / (biggest - 1)
        return sum(one + slope * (k - 1) for k in sizes)

    with PeakMemory(device) as peak:
        values = sample(class_seconds)
    calls = unet_calls(pipe, g.num_inference_steps, g.strength)
    timed_calls = next(n for n in (unet_calls(pipe, s, g.strength) for s in range(1, 1000)) if n >= 2)
    rows.append(("generate", n_outputs, "image", {
        "values": values, "per": per_class, "peak": peak.gb, "model": model_id, "note": note,
        "extrapolation": f"{timed_calls} UNet calls timed one by one, projected to the run's {calls} (x"
                         f"{calls / timed_calls:.3g})" if calls != timed_calls else ""}))
    estimates = []
    for stage, items, unit, m in rows:
        per_item = mean(m["values"], m["per"])
        load = m.get("load", 0.0)
        estimates.append(StageEstimate(stage, items, unit, per_item, load + items * per_item / processes, m["peak"],
                                       m["model"], m["note"], spread(m["values"], m["per"]),
                                       len(m["values"]), load, m.get("extrapolation", "")))
    return estimates
