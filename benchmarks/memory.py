"""Peak memory of the image-prototype stage for few vs many classes: it must not grow with the class count.

The stage works one class at a time (docs/method.md, "Scale": memory bounded by the largest class, not the dataset), so a run
over 8 classes should peak where a run over 2 classes of the same size does. Each setting runs `distill(...,
stages=("prototypes",))` on the tiny preset in a fresh subprocess; the settings alternate (2, 8, 8, 2, ...) so drift
hits both. The source is a synthetic image dataset written with `save_to_disk`. Linux only (reads /proc).

Two peaks are reported, because they differ:
- peak RSS (`VmHWM`): everything resident, including pages of the memory-mapped Arrow dataset that have been read.
  Those are file-backed and the kernel drops them under pressure; they add up as more classes are read.
- peak anonymous RSS (`RssAnon`, sampled every 5 ms): the process's own allocations, what actually bounds a run.
`ru_maxrss` is not used: a child's starts at its parent's RSS at spawn (the kernel carries the high-water mark across
fork and exec), so it would measure this script rather than the run.

    python benchmarks/memory.py                                      # 2 vs 8 classes x 300 images of 256 px
    python benchmarks/memory.py --images 40 --size 64 --repeats 1    # a quick run
    python benchmarks/memory.py --smoke                              # 1 vs 2 classes x 4 images of 32 px
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def write_dataset(path: Path, classes: int, images: int, size: int) -> None:
    """`classes` x `images` smooth random RGB images (PNG), labelled with a ClassLabel, saved with save_to_disk."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows, labels = [], []
    for label in range(classes):
        for _ in range(images):
            coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            noisy = np.asarray(coarse.resize((size, size), Image.BICUBIC), dtype=np.int16)
            noisy += rng.integers(-12, 13, (size, size, 3), dtype=np.int16)
            rows.append(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)))
            labels.append(label)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"class{i}" for i in range(classes)])})
    datasets.Dataset.from_dict({"image": rows, "label": labels}, features=features).save_to_disk(str(path))


def status_mb(*keys: str) -> dict[str, float]:
    """Fields of /proc/self/status (VmHWM, VmRSS, RssAnon, RssFile...), in MiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            values[key] = int(value.split()[0]) / 1024  # kB
    return values


class AnonPeak:
    """Samples RssAnon in a background thread; `peak` is the largest value seen."""

    def __init__(self, interval: float = 0.005):
        self.peak, self.interval, self.done = 0.0, interval, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, status_mb("RssAnon")["RssAnon"])
            time.sleep(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def worker(args) -> None:
    """Runs the prototype stage over the first `args.worker` classes; prints its memory figures as JSON."""
    import torch

    from vldd.configs.distill import load_config
    from vldd.jobs.distill import distill
    from vldd.stages.generate import load_pipeline

    torch.set_num_threads(args.threads)
    config = load_config(overrides={
        "preset": "tiny", "output": args.output, "ipc": args.ipc,
        "data": {"dataset": args.dataset, "classes": list(range(args.worker))},
        "prototypes": {"resolution": args.size}})
    pipe = load_pipeline(config.generation.model, cache_dir=args.cache_dir)
    before = status_mb("VmRSS", "RssAnon")
    start = time.perf_counter()
    with AnonPeak() as anon:
        distill(config, stages=("prototypes",), cache_dir=args.cache_dir, pipeline=pipe)
    print(json.dumps({"peak": status_mb("VmHWM")["VmHWM"], "peak_anon": anon.peak, "before": before["VmRSS"],
                      "before_anon": before["RssAnon"], "seconds": time.perf_counter() - start}))


def _quiet() -> None:
    """No loading or saving progress bars in the output."""
    import datasets
    import diffusers
    import transformers

    datasets.disable_progress_bars()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs=2, default=[2, 8], help="the two class counts compared")
    parser.add_argument("--images", type=int, default=300, help="images per class")
    parser.add_argument("--size", type=int, default=256, help="image size and encoding resolution, in pixels")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="runs per class count")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None,
                        help="where the dataset, tiny models and runs go (default: a temp dir, removed at the end)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 vs 2 classes x 4 images of 32 px, IPC 2, one run each: checks the script")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # a run over this many classes
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not Path("/proc/self/status").exists():
        sys.exit("benchmarks/memory.py reads /proc/self/status: Linux only")
    _quiet()
    if args.worker is not None:
        return worker(args)
    if args.smoke:
        args.classes, args.images, args.size, args.ipc, args.repeats, args.threads = [1, 2], 4, 32, 2, 1, 1
    if args.workdir:
        return measure(args, Path(args.workdir))
    with tempfile.TemporaryDirectory(prefix="vldd-memory-") as work:
        measure(args, Path(work))


def measure(args, work: Path) -> None:
    """Writes the dataset and the tiny models into `work`, then runs and compares the two class counts."""
    from vldd.models.tiny import build_tiny_models

    dataset, cache = work / "dataset", work / "cache"
    few, many = args.classes
    if not dataset.exists():
        write_dataset(dataset, many, args.images, args.size)
    build_tiny_models(cache)  # built here, so no worker pays for it
    per_class = args.images * (3 * args.size**2 + 4 * 4 * (args.size // 8) ** 2) / 2**20
    print(f"{args.images} images of {args.size} px per class (decoded images + latents: {per_class:.0f} MB a class); "
          f"prototype stage of the tiny preset, IPC {args.ipc}, one fresh process per run")
    results: dict[int, list[dict]] = {few: [], many: []}
    for i, k in enumerate(([few, many, many, few] * args.repeats)[: 2 * args.repeats]):
        run = work / f"run-{i}"
        shutil.rmtree(run, ignore_errors=True)  # a run directory left over would resume instead of computing
        cmd = [sys.executable, __file__, "--worker", str(k), "--dataset", str(dataset), "--output", str(run),
               "--cache-dir", str(cache), "--size", str(args.size), "--ipc", str(args.ipc),
               "--threads", str(args.threads)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        results[k].append(r)
        print(f"  {k} classes: peak RSS {r['peak']:7.1f} MB, peak anonymous {r['peak_anon']:7.1f} MB "
              f"(before the stage: {r['before']:.1f} / {r['before_anon']:.1f} MB; stage {r['seconds']:.1f} s)",
              flush=True)
    med = {key: {k: statistics.median(r[key] for r in v) for k, v in results.items()} for key in ("peak", "peak_anon")}
    print(f"peak RSS: {few} classes {med['peak'][few]:.1f} MB, {many} classes {med['peak'][many]:.1f} MB, ratio "
          f"{med['peak'][many] / med['peak'][few]:.3f} (includes the mapped Arrow pages read)")
    print(f"peak anonymous RSS: {few} classes {med['peak_anon'][few]:.1f} MB, {many} classes "
          f"{med['peak_anon'][many]:.1f} MB, ratio {med['peak_anon'][many] / med['peak_anon'][few]:.3f} "
          f"(holding every class's images and latents would add ~{(many - few) * per_class:.0f} MB)")


if __name__ == "__main__":
    main()
