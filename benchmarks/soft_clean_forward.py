"""The RDED harness's extra student forward (`--clean-forward`, on by default) against one forward per batch.

RDED's training loop (`04_evaluation/RDED/validation/main.py`, `train`) runs the student on the un-mixed batch in
train mode without gradients before the CutMix forward, so batch-norm statistics are updated twice per batch.
This trains the same soft-label evaluation both ways on the embedded sample (a ResNet-18 student, which has batch
norm; a small teacher trained here first with `vldd teacher`'s recipe), with the same seeds, and prints best and
final top-1 per setting.

    python benchmarks/soft_clean_forward.py                # 30 epochs x 3 seeds per setting: a few minutes on 2 cores
    python benchmarks/soft_clean_forward.py --smoke        # seconds: the mechanics only
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def make_teacher(path: Path, size: int, epochs: int) -> float:
    """A small ResNetAP-10 teacher on the sample's 5 classes, trained by `vldd teacher`'s recipe (SGD, cosine, crop +
    flip) at batch 32 (5 steps per epoch); returns its val top-1."""
    from vldd.jobs.teacher import TeacherConfig, train_teacher

    result = train_teacher(TeacherConfig(real="sample", output=str(path), arch="resnetap10", width=0.25, image_size=size,
                                         epochs=epochs, batch_size=32, lr=0.05, device="cpu"))
    return result.val_top1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="seeds per setting (the same seeds for both)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="2 epochs, 1 seed, 16 px: seconds")
    args = parser.parse_args()
    if args.smoke:  # one thread: the tiny shapes are overhead-bound
        args.epochs, args.repeats, args.size, args.threads = 2, 1, 16, 1
    torch.set_num_threads(args.threads)
    from vldd.jobs.evaluate import EvalConfig, evaluate

    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher.pt"
        teacher_top1 = make_teacher(teacher, args.size, 2 if args.smoke else 16)
        results = {}
        for clean in (True, False):
            start = time.perf_counter()
            config = EvalConfig(distilled="sample", real="sample", protocol="soft", teacher=str(teacher),
                                student="resnet18", image_size=args.size, epochs=args.epochs, eval_interval=1,
                                repeats=args.repeats, clean_forward=clean, record=False,
                                output=str(Path(tmp) / f"clean-{clean}.json"))
            results[clean] = (evaluate(config), time.perf_counter() - start)
    recipe = results[True][0].recipe
    print(f"soft protocol on the embedded sample: ResNet-18 student, {args.size} px, {recipe.epochs} epochs, batch "
          f"{recipe.batch_size}, seeds {list(range(args.repeats))} (the same for both settings); teacher val top-1 "
          f"{teacher_top1:.1f}; top-1 %")
    for clean, (result, seconds) in results.items():
        s = result.runs["distilled"].stats()
        best = [r.best for r in result.runs["distilled"].repeats]
        label = "two forwards (RDED)" if clean else "one forward"
        print(f"  {label:20s} best {s['best_mean']:5.1f} ± {s['best_std']:4.1f}   final {s['final_mean']:5.1f} ± "
              f"{s['final_std']:4.1f}   per seed best {best}   {seconds:.0f} s")
    a, b = (results[c][0].runs["distilled"].stats() for c in (True, False))
    diffs = [x.best - y.best for x, y in zip(results[True][0].runs["distilled"].repeats,
                                              results[False][0].runs["distilled"].repeats)]
    print(f"  two - one: best {a['best_mean'] - b['best_mean']:+.1f}, final {a['final_mean'] - b['final_mean']:+.1f} "
          f"points (per seed best: {[round(d, 1) for d in diffs]}; median {statistics.median(diffs):+.1f})")


if __name__ == "__main__":
    main()
