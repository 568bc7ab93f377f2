"""Throughput of batched vs one-at-a-time calls on the tiny models: captioning, generation and VAE encoding.

Each pair of settings runs on the same inputs, interleaved (batched first on even repeats, single first on odd), and
the ratio is taken per pair; medians over the repeats are reported. The tiny models are random-weight stand-ins
(vldd.models.tiny), so the absolute rates say little about real checkpoints; the ratios show how much of a call is fixed
per-call overhead that batching amortises.

    python benchmarks/batching.py                 # captioning 16 vs 1, generation 10 vs 1, VAE encoding 32 vs 1
    python benchmarks/batching.py --repeats 2     # a quick run
    python benchmarks/batching.py --smoke         # 4 images, batches of 2, one repeat: checks the script
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def images(n: int):
    """The sample dataset's shapes, 64 px."""
    from vldd.data.sample import SAMPLE_CLASSES, draw_sample

    return [draw_sample(i % len(SAMPLE_CLASSES), seed=i) for i in range(n)]


def compare(name: str, run, items: int, batch: int, repeats: int) -> float:
    """Times run(batch) against run(1) on the same `items` inputs; prints and returns the median speed-up."""
    run(batch), run(1)  # warm-up: lazy initialisation, allocator, caches
    rates: dict[int, list[float]] = {batch: [], 1: []}
    ratios = []
    for r in range(repeats):
        for size in ([batch, 1] if r % 2 == 0 else [1, batch]):
            start = time.perf_counter()
            run(size)
            rates[size].append(items / (time.perf_counter() - start))
        ratios.append(rates[batch][-1] / rates[1][-1])
    median = statistics.median(ratios)
    print(f"{name}: batch {batch} {statistics.median(rates[batch]):7.1f} images/s, batch 1 "
          f"{statistics.median(rates[1]):7.1f} images/s; speed-up median {median:.2f}x "
          f"(per repeat: {', '.join(f'{x:.2f}' for x in ratios)})", flush=True)
    return median


def _quiet() -> None:
    """No download/loading progress bars in the benchmark's output."""
    import datasets
    import diffusers
    import transformers

    datasets.disable_progress_bars()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default=None, help="where the tiny models are built (default ~/.cache/vldd)")
    parser.add_argument("--caption-batch", type=int, default=16, help="the tiny preset's caption.batch_size")
    parser.add_argument("--generate-batch", type=int, default=10, help="the tiny preset's generation.batch_size")
    parser.add_argument("--encode-batch", type=int, default=32, help="the tiny preset's encode_batch_size")
    parser.add_argument("--items", type=int, default=40, help="images captioned and encoded per timed call")
    parser.add_argument("--smoke", action="store_true", help="4 images, batches of 2, one repeat, 1 thread: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.items, args.repeats, args.caption_batch, args.generate_batch, args.encode_batch = 4, 1, 2, 2, 2
        args.threads = 1  # tiny shapes are overhead-bound; a second thread only waits on a busy machine
    _quiet()

    from vldd.configs.distill import PAPER_PROMPT, PRESETS, TINY_CAPTIONER, TINY_DIFFUSION
    from vldd.stages.caption import caption_images, load_captioner
    from vldd.stages.generate import generate_images, load_pipeline
    from vldd.stages.prototypes import encode_images

    torch.set_num_threads(args.threads)
    tiny = PRESETS["tiny"]
    pictures = images(args.items)
    print(f"tiny preset models on {args.device}, {args.threads} threads, {args.repeats} repeats")

    # 1. Captioning: the tiny preset's settings (sampling at temperature 0.2, 12 new tokens).
    captioner = load_captioner(TINY_CAPTIONER, device=args.device, cache_dir=args.cache_dir)
    new_tokens = tiny["caption"]["max_new_tokens"]
    compare(f"captioning ({new_tokens} new tokens)",
            lambda b: caption_images(captioner, pictures, "circle", prompt_template=PAPER_PROMPT,
                                     max_new_tokens=new_tokens, batch_size=b),
            args.items, args.caption_batch, args.repeats)

    # 2. Generation: img2img at the paper's strength 0.7 of 50 steps (35 UNet calls per batch), guidance 10.
    pipe = load_pipeline(TINY_DIFFUSION, device=args.device, cache_dir=args.cache_dir)
    latents = encode_images(pipe.vae, pictures, resolution=tiny["prototypes"]["resolution"])
    n = args.generate_batch * 2
    prompts = [f"a bright {w} shape on a dark background" for w in ("red", "green", "blue", "yellow", "white")] * n
    compare("generation (35 denoising steps)",
            lambda b: generate_images(pipe, latents[:n], prompts[:n], seeds=list(range(n)), batch_size=b),
            n, args.generate_batch, args.repeats)

    # 3. VAE encoding at the tiny preset's 64 px.
    compare("VAE encoding",
            lambda b: encode_images(pipe.vae, pictures, resolution=tiny["prototypes"]["resolution"], batch_size=b),
            args.items, args.encode_batch, args.repeats)


if __name__ == "__main__":
    main()
