"""Paper-scale cost of every stage, measured with the real architectures and random weights (`vldd.models.paper_shapes`).

A forward pass costs the same whatever the weights' values, so LLaVA-1.5-7B and Stable Diffusion v1.5 built from
their published configs give the paper's per-stage rates and peak memory on this device, without downloading
weights. Each stage is timed, then the wall time of ImageNette IPC 10 and ImageNet-1K IPC 10 / 50 is projected.

    python benchmarks/paper_scale.py --device cpu --quick     # a few minutes on 2 cores; extrapolated, see labels
    python benchmarks/paper_scale.py --device cuda            # fp16, full depth, the full 1024-token budget
    python benchmarks/paper_scale.py --smoke                  # the tiny models, seconds: checks the script runs
    python benchmarks/paper_scale.py --rows RESULT.json       # the README table rows of a finished run

On CPU (fp32) LLaVA runs with 2 of its 32 decoder layers (vision tower whole): every forward call is timed with
hooks, and the time spent in the decoder layers is scaled by 16 (identical layers); decoding is timed over a few
tokens and extrapolated to 1024; generation is timed per UNet call on a short run and scaled to the 36 calls of the
paper's settings; fine-tuning runs a small micro-batch, scaled per image. Every extrapolation is labelled in
the table and the JSON. The same functions time `vldd plan` (vldd.jobs.plan).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vldd.configs.distill import TINY_CAPTIONER, TINY_DIFFUSION, load_config
from vldd.jobs.finetune import finetune_config
from vldd.jobs.plan import (
    PeakMemory,
    caption_cost,
    decoder_layer_bytes,
    finetune_cost,
    generation_cost,
    timed,
    unet_calls,
)
from vldd.models.paper_shapes import LLAVA_TEXT, SHAPES_CAPTIONER, SHAPES_DIFFUSION
from vldd.stages.caption import load_captioner
from vldd.stages.generate import load_pipeline
from vldd.stages.prototypes import build_prototypes, encode_images

# The paper preset's settings (1024 tokens, 512 px, 50 steps x 0.7, guidance 10), with the dataset-derived ones
# (LOF contamination 0.1) of ImageNet-1K, which ImageNette shares.
PAPER = load_config(overrides={"data": {"profile": "imagenet-1k"}}).resolve()[0]
RECIPE = finetune_config("paper", captions="-")  # batch 32 x 4, 8 epochs, 512 px, gradient checkpointing
# (train images, classes) of the projected runs.
DATASETS = {"ImageNette": (9_469, 10), "ImageNet-1K": (1_281_167, 1_000)}
RUNS = [("ImageNette", 10), ("ImageNet-1K", 10), ("ImageNet-1K", 50)]


def photos(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)) for _ in range(n)]


def captioning(args, device, dtype) -> dict:
    """Prefill and decode rates at each batch size; on CPU with 2 of the 32 decoder layers, their time scaled."""
    layers = LLAVA_TEXT["num_hidden_layers"]
    present = 2 if args.per_layer else layers
    model_id = args.caption_model + (f"?layers={present}" if present != layers else "")
    c = PAPER.caption
    rows = {}
    for batch in args.caption_batches:
        images = photos(batch)
        with PeakMemory(device) as peak:
            captioner = load_captioner(model_id, device=device, dtype=dtype, cache_dir=args.cache_dir)
            prompt = len(captioner.processor(images=images[:1], text=[_prompt(captioner, c)]).input_ids[0])
            prefill, decode = caption_cost(captioner, images, "tench, Tinca tinca", c,
                                           decode_tokens=args.decode_tokens,
                                           full_layers=layers if args.per_layer else None)
            layer_gb = decoder_layer_bytes(captioner) / 2**30
            del captioner
            gc.collect()
        gb = peak.gb + (layers - present) * layer_gb
        seconds = prefill + (c.max_new_tokens - 1) * decode
        rows[batch] = {"batch": batch, "prompt_tokens": prompt, "prefill_s": prefill, "decode_s_per_token": decode,
                       "prefill_tokens_per_s": batch * prompt / prefill, "decode_tokens_per_s": batch / decode,
                       "images_per_s": batch / seconds, "peak_gb": gb, "measured_peak_gb": peak.gb,
                       "model": model_id}
        print(f"  caption batch {batch}: {rows[batch]['images_per_s']:.4g} images/s", flush=True)
    notes = [f"{c.max_new_tokens} new tokens forced (min_new_tokens); per-call timing of {args.decode_tokens} tokens"]
    if args.decode_tokens < c.max_new_tokens:
        notes.append(f"decode extrapolated from {args.decode_tokens} to {c.max_new_tokens} tokens at the "
                     "short-context rate (attention over the growing cache not included)")
    if args.per_layer:
        notes.append(f"{model_id}: time in the {present} decoder layers scaled to {layers} (same run, per call); "
                     f"peak = measured + {layers - present} layers' weights")
    return _best(rows, "caption", notes)


def _prompt(captioner, c) -> str:
    from vldd.stages.caption import build_prompt, conversation_text

    return conversation_text(captioner, build_prompt(c.prompt, "tench, Tinca tinca"), c.conversation)


def _best(rows: dict, stage: str, notes: list[str]) -> dict:
    best = max(rows.values(), key=lambda r: r["images_per_s"])
    return {"stage": stage, "rows": list(rows.values()), "best": best, "notes": notes}


def encoding(args, pipe, device) -> dict:
    r = args.resolution
    rows = {}
    for batch in args.encode_batches:
        images = photos(batch)
        with PeakMemory(device) as peak:
            s = timed(lambda images=images: encode_images(pipe.vae, images, resolution=r, batch_size=len(images)),
                      device)
        rows[batch] = {"batch": batch, "seconds": s, "images_per_s": batch / s, "peak_gb": peak.gb}
        print(f"  encode batch {batch}: {batch / s:.4g} images/s", flush=True)
    return _best(rows, "encode", [f"{r} px"])


def prototypes(args, device) -> dict:
    p = PAPER.prototypes
    n, dim = args.latents
    latents = torch.randn(n, dim, generator=torch.Generator().manual_seed(0)).to(device)
    out = {}
    for ipc in (10, 50):
        with PeakMemory(device) as peak:
            s = timed(lambda k=ipc: build_prototypes(latents, k, contamination=p.contamination, n_neighbors=p.lof_neighbors,
                                                     n_init=p.n_init, max_iter=p.max_iter, tol=p.tol),
                      device, warmup=False)
        out[ipc] = {"ipc": ipc, "seconds_per_class": s, "peak_gb": peak.gb}
        print(f"  prototypes IPC {ipc}: {s:.3g} s/class", flush=True)
    return {"stage": "prototypes", "rows": list(out.values()), "notes": [f"{n} x {dim:,} random latents per class"]}


def generation(args, pipe, device) -> dict:
    g = PAPER.generation
    calls = unet_calls(pipe, g.num_inference_steps, g.strength)
    rows = {}
    for batch in args.generate_batches:
        size = pipe.unet.config.sample_size
        latents = torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(0))
        with PeakMemory(device) as peak:
            s = generation_cost(pipe, latents, g)
        rows[batch] = {"batch": batch, "seconds": s, "images_per_s": batch / s, "peak_gb": peak.gb}
        print(f"  generate batch {batch}: {batch / s:.4g} images/s", flush=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return _best(rows, "generate", [f"{calls} UNet calls ({g.num_inference_steps} steps x {g.strength}, PNDM), CFG "
                                    f"{g.guidance_scale}, {size} px; UNet calls timed one by one on a 2-call run, "
                                    f"scaled to {calls}"])


def finetuning(args, pipe, device) -> dict:
    b = args.finetune_batch
    mixed = "fp16" if device.type == "cuda" else "no"
    dtype = pipe.unet.dtype
    if device.type == "cuda":
        pipe.unet.to(torch.float32)  # the recipe: fp32 weights trained under fp16 autocast
    with PeakMemory(device) as peak:
        s = finetune_cost(pipe, b, args.resolution, gradient_checkpointing=True, mixed_precision=mixed)
    pipe.unet.to(dtype)  # the speed comparisons that follow run the UNet as generation does
    print(f"  finetune micro-batch {b}: {b / s:.4g} images/s", flush=True)
    notes = [f"UNet forward + backward, gradient checkpointing, {args.resolution} px; optimizer and EMA updates "
             "not timed"]
    if b != RECIPE.train_batch_size:
        notes.append(f"micro-batch {b} instead of {RECIPE.train_batch_size}, rate scaled per image")
    row = {"batch": b, "seconds": s, "images_per_s": b / s, "peak_gb": peak.gb}
    return {"stage": "finetune", "rows": [row], "best": row, "notes": notes}


def ratio(first, second, repeats: int, device) -> tuple[float, list[float]]:
    """Median time ratio second / first, the two run interleaved on the same inputs (both already warm)."""
    ratios = [timed(second, device, warmup=False) / timed(first, device, warmup=False) for _ in range(repeats)]
    return statistics.median(ratios), ratios


def speed_settings(args, pipe, device) -> dict:
    """SDPA vs the classic attention, and channels-last vs contiguous, on one UNet call at 512 px with CFG."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet, dtype = pipe.unet, pipe.unet.dtype
    g = torch.Generator().manual_seed(0)
    size, width = unet.config.sample_size, unet.config.cross_attention_dim
    x = torch.randn(2, 4, size, size, generator=g).to(device, dtype)
    text = torch.randn(2, 77, width, generator=g).to(device, dtype)

    @torch.inference_mode()
    def call():
        return unet(x, 500, text, return_dict=False)[0].float()

    out = {}
    reference = call()
    unet.set_attn_processor(AttnProcessor())
    classic = call()
    r, all_ = ratio(lambda: unet.set_attn_processor(AttnProcessor2_0()) or call(),
                    lambda: unet.set_attn_processor(AttnProcessor()) or call(), args.repeats, device)
    unet.set_attn_processor(AttnProcessor2_0())
    out["sdpa"] = {"classic_over_sdpa": r, "ratios": all_, "max_abs_diff": (classic - reference).abs().max().item()}
    print(f"  UNet call, classic attention / SDPA: {r:.3g}x", flush=True)
    unet.to(memory_format=torch.channels_last)
    last = call()  # also the warm-up of the channels-last path
    r, all_ = ratio(lambda: unet.to(memory_format=torch.contiguous_format) and call(),
                    lambda: unet.to(memory_format=torch.channels_last) and call(), args.repeats, device)
    unet.to(memory_format=torch.contiguous_format)
    out["channels_last"] = {"channels_last_over_contiguous": r, "ratios": all_,
                            "max_abs_diff": (last - reference).abs().max().item()}
    print(f"  UNet call, channels-last / contiguous: {r:.3g}x", flush=True)
    return out


def compile_speed(args, pipe, device) -> dict:
    """`torch.compile` (the opt-in `--generation.compile`) vs eager on one UNet call at 512 px with CFG: the compile
    time, the eager / compiled ratio, and how far the outputs differ."""
    unet = pipe.unet
    g = torch.Generator().manual_seed(0)
    size, width = unet.config.sample_size, unet.config.cross_attention_dim
    x = torch.randn(2, 4, size, size, generator=g).to(device, unet.dtype)
    text = torch.randn(2, 77, width, generator=g).to(device, unet.dtype)
    compiled = torch.compile(unet)

    @torch.inference_mode()
    def call(model):
        return model(x, 500, text, return_dict=False)[0].float()

    reference = call(unet)
    start = time.perf_counter()
    fused = call(compiled)  # compiles
    compile_s = time.perf_counter() - start
    r, all_ = ratio(lambda: call(compiled), lambda: call(unet), args.repeats, device)
    print(f"  UNet call, eager / torch.compile: {r:.3g}x (compiling took {compile_s:.0f} s)", flush=True)
    return {"eager_over_compiled": r, "ratios": all_, "compile_s": compile_s,
            "max_abs_diff": (fused - reference).abs().max().item()}


def project(stages: dict) -> list[dict]:
    """Wall time of each paper run on this device, one process, per stage at the best measured batch."""
    out = []
    for name, ipc in RUNS:
        images, classes = DATASETS[name]
        proto = next(r for r in stages["prototypes"]["rows"] if r["ipc"] == ipc)
        seconds = {"caption": images / stages["caption"]["best"]["images_per_s"],
                   "finetune": RECIPE.num_train_epochs * images / stages["finetune"]["best"]["images_per_s"],
                   "encode": images / stages["encode"]["best"]["images_per_s"],
                   "prototypes": classes * proto["seconds_per_class"],
                   "generate": classes * ipc / stages["generate"]["best"]["images_per_s"]}
        out.append({"run": f"{name} IPC {ipc}", "seconds": seconds, "total_s": sum(seconds.values())})
    return out


def _duration(s: float) -> str:
    for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("min", 60)):
        if s >= 2 * size:
            return f"{s / size:.1f} {unit}"
    return f"{s:.1f} s"


def table(result: dict) -> list[str]:
    st = result["stages"]
    lines = [f"device {result['device']} ({result['device_name']}), {result['dtype']}, torch {result['torch']}",
             f"{'stage':<11} {'batch':>5} {'images/s':>10} {'peak GB':>8}  detail"]
    for key in ("caption", "encode", "finetune", "generate"):
        for r in st[key]["rows"]:
            detail = (f"prefill {r['prefill_tokens_per_s']:.4g} tok/s, decode {r['decode_tokens_per_s']:.4g} tok/s"
                      if key == "caption" else "")
            lines.append(f"{key:<11} {r['batch']:>5} {r['images_per_s']:>10.4g} {r['peak_gb']:>8.2f}  {detail}")
    for r in st["prototypes"]["rows"]:
        lines.append(f"{'prototypes':<11} {'':>5} {'':>10} {r['peak_gb']:>8.2f}  IPC {r['ipc']}: "
                     f"{r['seconds_per_class']:.3g} s/class")
    lines.append("")
    stages = list(result["projections"][0]["seconds"])
    lines.append(f"{'projected (1 process)':<22}" + "".join(f"{s:>12}" for s in stages) + f"{'total':>12}")
    for p in result["projections"]:
        lines.append(f"{p['run']:<22}" + "".join(f"{_duration(v):>12}" for v in p["seconds"].values())
                     + f"{_duration(p['total_s']):>12}")
    lines.append("")
    for key, s in st.items():
        for note in s.get("notes", []):
            lines.append(f"{key}: {note}")
    for key, s in result.get("speed", {}).items():
        lines.append(f"speed {key}: " + ", ".join(f"{k} {v:.4g}" for k, v in s.items() if not isinstance(v, list)))
    return lines


_UNITS = {"y": "years", "d": "days", "h": "h", "min": "min", "s": "s"}


def _words(seconds: float) -> str:
    """`_duration` with the README's unit names: "2.7 years", "85 days"."""
    value, unit = _duration(seconds).split()
    return f"{value} {_UNITS[unit]}"


def readme_rows(result: dict) -> list[str]:
    """The rows of README.md's "Cost at the paper's scale" table and of benchmarks/README.md's projection table."""
    if not result.get("projections"):
        raise SystemExit(f"paper_scale.py: the result has no projections (skipped: {result.get('skipped')}, stages "
                         f"measured: {sorted(result.get('stages', {}))}): every stage must run for the table rows")
    st, runs = result["stages"], {p["run"]: p for p in result["projections"]}
    rate = {key: f"{st[key]['best']['images_per_s']:.2g} images/s (batch {st[key]['best']['batch']})"
            for key in ("caption", "encode", "finetune", "generate")}
    caption_gb = max(r["peak_gb"] for r in st["caption"]["rows"])
    extrapolated = " (extrapolated)" if result.get("settings", {}).get("per_layer") else ""
    how = ["measured"] + (["`--quick`"] if result["quick"] else []) + (["`--smoke`"] if result.get("smoke") else [])
    decode = result.get("settings", {}).get("decode_tokens")
    if decode and decode < PAPER.caption.max_new_tokens:
        how.append(f"decode timed over {decode} tokens")
    cells = [f"{result['device_name']} ({', '.join(how)})", result["dtype"], rate["caption"], rate["encode"],
             rate["finetune"], rate["generate"],
             f"{caption_gb:.1f} GB caption{extrapolated}, {st['finetune']['best']['peak_gb']:.1f} GB fine-tune",
             _words(runs["ImageNette IPC 10"]["total_s"]), _words(runs["ImageNet-1K IPC 10"]["total_s"])]
    rows = ["| " + " | ".join(cells) + " |"]
    for p in result["projections"]:
        rows.append("| " + " | ".join([p["run"], *(_words(v) for v in p["seconds"].values())])
                    + f" | **{_words(p['total_s'])}** |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="few tokens, batches 1-2, per-layer LLaVA (CPU)")
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny models at 64 px, 3 tokens, no compile: checks the script in seconds; the JSON "
                             "goes to a temp dir unless --output is given")
    parser.add_argument("--rows", default=None, metavar="JSON",
                        help="print the README table rows of a result JSON written by this script, and exit")
    parser.add_argument("--cache-dir", default=None, help="where the real-shape models are built (~/.cache/vldd)")
    parser.add_argument("--output", default=None, help="JSON file (default: paper_scale_<device>.json)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each side-by-side speed comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--diffusion-model", default=SHAPES_DIFFUSION, help="e.g. tiny://stable-diffusion to try")
    parser.add_argument("--caption-batches", dest="caption_batches_flag", default=None, help="comma-separated captioning batch sizes")
    parser.add_argument("--decode-tokens", type=int, default=None,
                        help="new tokens timed per caption, extrapolated to the paper's 1024 (default: 4 with "
                             "--quick, else 1024)")
    parser.add_argument("--skip", default="", help="comma-separated stages not to run (caption,speed,compile,...)")
    args = parser.parse_args()
    if args.rows:
        print("\n".join(readme_rows(json.loads(Path(args.rows).read_text()))))
        return
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    if args.smoke:
        args.threads = args.threads or 1  # tiny shapes are overhead-bound; a second thread only waits on a busy machine
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if cpu else torch.float16
    args.caption_model = TINY_CAPTIONER if args.smoke else SHAPES_CAPTIONER
    if args.smoke:
        args.diffusion_model = TINY_DIFFUSION
    args.per_layer = cpu and not args.smoke  # 7B in fp32 does not fit a CPU's memory budget; full depth on a GPU
    args.decode_tokens = args.decode_tokens or (3 if args.smoke else 4 if args.quick else PAPER.caption.max_new_tokens)
    if not 2 <= args.decode_tokens <= PAPER.caption.max_new_tokens:
        parser.error(f"--decode-tokens must be in [2, {PAPER.caption.max_new_tokens}], got {args.decode_tokens}")
    small = args.quick or args.smoke
    args.caption_batches = [1] if small else ([1, 4] if cpu else [1, 8, 16, 32])
    if args.caption_batches_flag:
        args.caption_batches = [int(b) for b in args.caption_batches_flag.split(",")]
    args.encode_batches = [1, 2] if small else ([1, 4] if cpu else [1, 16, 32])
    args.generate_batches = [1] if small else ([1, 4] if cpu else [1, 8, 16])
    args.finetune_batch = 1 if cpu else RECIPE.train_batch_size
    args.resolution = 64 if args.smoke else PAPER.prototypes.resolution  # 512: encoding and fine-tuning
    args.latents = (120, 256) if args.smoke else (1300, 16384)  # one class: images x latent values
    if args.smoke:
        args.repeats = 1
    skip = set(filter(None, args.skip.split(","))) | ({"compile"} if args.smoke else set())
    start = time.perf_counter()
    name = torch.cuda.get_device_name(device) if not cpu else f"{platform.processor() or platform.machine()}, " \
        f"{torch.get_num_threads()} threads"
    settings = {k: getattr(args, k) for k in ("caption_model", "diffusion_model", "per_layer", "decode_tokens",
                                             "caption_batches", "encode_batches", "generate_batches",
                                             "finetune_batch", "resolution", "latents", "repeats")}
    result = {"device": device.type, "device_name": name, "dtype": str(dtype).removeprefix("torch."),
              "torch": torch.__version__, "quick": args.quick, "smoke": args.smoke, "settings": settings,
              "skipped": sorted(skip), "stages": {}, "speed": {}, "projections": []}
    default = Path(tempfile.mkdtemp(prefix="paper-scale-")) if args.smoke else Path(".")
    stages, output = result["stages"], Path(args.output or default / f"paper_scale_{device.type}.json")

    def save():  # after every stage, so a long run keeps what it measured
        result["wall_s"] = time.perf_counter() - start
        partial = output.with_name(output.name + ".partial")
        partial.write_text(json.dumps(result, indent=1) + "\n")
        partial.replace(output)  # atomic: a reader never sees half a file

    if "caption" not in skip:
        print(f"captioning ({args.caption_model})", flush=True)
        stages["caption"] = captioning(args, device, dtype)
        save()
    print(f"Stable Diffusion v1.5 ({args.diffusion_model})", flush=True)
    pipe = load_pipeline(args.diffusion_model, device=device, dtype=dtype, cache_dir=args.cache_dir)
    for stage, run in (("encode", encoding), ("generate", generation), ("finetune", finetuning)):
        if stage not in skip:
            stages[stage] = run(args, pipe, device)
            save()
    if "prototypes" not in skip:
        stages["prototypes"] = prototypes(args, device)
    if not skip & {"caption", "finetune", "encode", "generate", "prototypes"}:
        result["projections"] = project(stages)
    save()  # the stages and projections first: a run stopped during the speed comparisons keeps them
    if "speed" not in skip:
        result["speed"] = speed_settings(args, pipe, device)
        save()
    if "compile" not in skip:
        result["speed"]["compile"] = compile_speed(args, pipe, device)
        save()
    print("\n".join(table(result)) if result["projections"] else json.dumps(result, indent=1))
    if result["projections"]:
        print("\nREADME rows:\n" + "\n".join(readme_rows(result)))
    print(f"wrote {output} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
