"""`vldd plan` against the `vldd distill` it predicts: predicted / measured seconds per stage, side by side.

Each round runs the plan and then the distillation of the same tiny-preset run, each in a fresh Python process (so
both pay the same imports and model loads), on the same machine, one after the other; the tiny models are built
once beforehand. Stages compared: caption (captioner load + captions), prototypes (pipeline load + VAE encoding +
clustering: the plan's `encode` + `cluster`), generate, and their total. A ratio of 1 is a perfect prediction; the
goal is within 2x (0.5-2.0) on a quiet and on a loaded machine. The load average is printed with each round.

    python benchmarks/plan_accuracy.py                 # the tiny preset on the embedded sample: 5 classes, IPC 10
    python benchmarks/plan_accuracy.py --rounds 3      # three rounds; the median ratio per stage
    python benchmarks/plan_accuracy.py --smoke         # 1 class x 6 images, IPC 2, 4 steps: the mechanics
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

STAGES = {"caption": (("caption",), ("caption",)), "prototypes": (("encode", "cluster"), ("pipeline", "prototypes")),
          "generate": (("generate",), ("generate",))}


def run_config(output: Path, smoke: bool) -> dict:
    values = {"preset": "tiny", "output": str(output), "device": "cpu"}
    if smoke:
        values.update(ipc=2, data={"classes": ["circle"], "max_images_per_class": 6},
                      caption={"max_new_tokens": 4}, generation={"num_inference_steps": 4})
    return values


def child(kind: str, config_path: str, cache: str, out: str) -> None:
    """Runs one side in this (fresh) process and writes its per-stage seconds to `out`."""
    from vldd.configs.distill import load_config

    config = load_config(config_path)
    if kind == "plan":
        from vldd.jobs.plan import plan_run

        seconds = {e.stage: e.seconds for e in plan_run(config, cache_dir=cache)}
    else:
        from vldd.jobs.distill import distill

        seconds = distill(config, cache_dir=cache).manifest["timings"]
    Path(out).write_text(json.dumps(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="plan + distill pairs; the median ratio is reported")
    parser.add_argument("--smoke", action="store_true", help="a tiny run: the mechanics only, not a meaningful ratio")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on each side")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "CONFIG", "CACHE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:  # the tiny shapes are overhead-bound: one thread is faster on a busy machine
        args.threads = 1
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        from vldd.models.tiny import build_tiny_models

        build_tiny_models(cache)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
        ratios: dict[str, list[float]] = {name: [] for name in [*STAGES, "total"]}
        for r in range(args.rounds):
            config = tmp / f"run{r}.yaml"
            config.write_text(yaml.safe_dump(run_config(tmp / f"run{r}", args.smoke)))
            result = {}
            for kind in ("plan", "distill"):
                out = tmp / f"{kind}{r}.json"
                subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", kind, str(config),
                                str(cache), str(out)], check=True, env=env, stdout=subprocess.DEVNULL)
                result[kind] = json.loads(out.read_text())
            load = os.getloadavg()[0]
            print(f"round {r + 1}: load average {load:.1f} on {os.cpu_count()} CPUs")
            print(f"  {'stage':<11} {'predicted':>10} {'measured':>10} {'ratio':>7}")
            total = [0.0, 0.0]
            for name, (planned, measured) in STAGES.items():
                predicted = sum(result["plan"].get(s, 0.0) for s in planned)
                actual = sum(result["distill"].get(s, 0.0) for s in measured)
                total[0] += predicted
                total[1] += actual
                ratios[name].append(predicted / actual)
                print(f"  {name:<11} {predicted:>9.1f}s {actual:>9.1f}s {predicted / actual:>7.2f}")
            ratios["total"].append(total[0] / total[1])
            print(f"  {'total':<11} {total[0]:>9.1f}s {total[1]:>9.1f}s {total[0] / total[1]:>7.2f}")
        if args.rounds > 1:
            print("median ratio (predicted / measured): " + ", ".join(
                f"{name} {statistics.median(values):.2f}" for name, values in ratios.items()))
        inside = all(0.5 <= statistics.median(v) <= 2.0 for v in ratios.values())
        print("within 2x: " + ("yes" if inside else "NO"))


if __name__ == "__main__":
    main()
