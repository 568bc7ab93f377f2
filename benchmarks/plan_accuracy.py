"""`vldd plan` against the `vldd distill` it predicts: predicted / measured seconds per stage, side by side.

Plans and distillations of the same tiny-preset run alternate: plan, distill, plan, distill, ..., plan (`--rounds`
distillations, one more plan), each in a fresh Python process (so both pay the same imports and model loads), on the
same machine; the tiny models are built once beforehand. Each distillation is compared with the plan just before it
and the plan just after it (two predictions per run, made under the conditions the run saw), and the median over all
of them is reported per stage. Stages compared: caption (captioner load + captions), prototypes (pipeline load + VAE
encoding + clustering: the plan's `encode` + `cluster`), generate, and their total. A ratio of 1 is a perfect
prediction; the goal is within 2x (0.5-2.0) on a quiet and on a loaded machine.

`--load N` makes the machine loaded, the same way for every process: N busy-loop processes run from before the first
plan to after the last one (and are stopped at the end, also on an error or Ctrl-C). The 1-minute load average at the
end of each process is printed.

    python benchmarks/plan_accuracy.py                 # the tiny preset on the embedded sample: 5 classes, IPC 10
    python benchmarks/plan_accuracy.py --rounds 3      # three distillations between four plans; median ratios
    python benchmarks/plan_accuracy.py --load 4 --rounds 3   # the same with 4 busy loops running throughout
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
BUSY_LOOP = "while True:\n    pass"


def run_config(output: Path, smoke: bool) -> dict:
    values = {"preset": "tiny", "output": str(output), "device": "cpu"}
    if smoke:
        values.update(ipc=2, data={"classes": ["circle"], "max_images_per_class": 6},
                      caption={"max_new_tokens": 4}, generation={"num_inference_steps": 4})
    return values


def child(kind: str, config_path: str, cache: str, out: str) -> None:
    """Runs one side in this (fresh) process and writes its per-stage seconds to `out` (the plan's: with how each
    stage was measured)."""
    from vldd.configs.distill import load_config

    config = load_config(config_path)
    if kind == "plan":
        from vldd.jobs.plan import plan_run

        result = {e.stage: {"seconds": e.seconds, "load": e.load_seconds, "per_item": e.seconds_per_item,
                            "samples": e.samples, "spread": e.spread} for e in plan_run(config, cache_dir=cache)}
    else:
        from vldd.jobs.distill import distill

        result = {stage: {"seconds": s} for stage, s in distill(config, cache_dir=cache).manifest["timings"].items()}
    Path(out).write_text(json.dumps(result))


def stage_seconds(result: dict) -> dict[str, float]:
    """Per compared stage (and "total"): the plan's predicted or the run's measured seconds."""
    side = 0 if "encode" in result else 1  # a plan has an `encode` row, a run's timings have `pipeline`
    seconds = {name: sum(result[s]["seconds"] for s in names[side] if s in result) for name, names in STAGES.items()}
    return {**seconds, "total": sum(seconds.values())}


def start_load(n: int) -> list[subprocess.Popen]:
    """`n` busy-loop processes (one core each while they run)."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="distillations (each between two plans); the median "
                        "ratio over the 2 x rounds plan-run pairs is reported")
    parser.add_argument("--load", type=int, default=0, help="busy-loop processes running throughout (0: none)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run: the mechanics only, not a meaningful ratio")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on each side")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "CONFIG", "CACHE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1 or args.load < 0:
        parser.error(f"--rounds must be >= 1 and --load >= 0, got {args.rounds} and {args.load}")
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

        def side(kind: str, index: int) -> tuple[dict, float]:
            """One plan or distillation of run `index` in a fresh process: its result and the load average after."""
            config = tmp / f"run{index}.yaml"
            config.write_text(yaml.safe_dump(run_config(tmp / f"run{index}", args.smoke)))
            out = tmp / f"{kind}{index}.json"
            subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", kind, str(config),
                            str(cache), str(out)], check=True, env=env, stdout=subprocess.DEVNULL)
            return json.loads(out.read_text()), os.getloadavg()[0]

        hogs = start_load(args.load)
        if hogs:
            print(f"{len(hogs)} busy loops running (pids {' '.join(str(p.pid) for p in hogs)})")
        try:
            plans = [side("plan", 0)]
            runs = []
            for r in range(args.rounds):
                runs.append(side("distill", r))
                plans.append(side("plan", r + 1))
        finally:
            stop_load(hogs)
    ratios: dict[str, list[float]] = {name: [] for name in [*STAGES, "total"]}
    print(f"{os.cpu_count()} CPUs, {args.load} busy loops, {args.threads} torch threads per process")
    for r, (run, run_load) in enumerate(runs):
        (before, load_before), (after, load_after) = plans[r], plans[r + 1]
        measured, early, late = stage_seconds(run), stage_seconds(before), stage_seconds(after)
        print(f"round {r + 1}: load average (1 min) after plan {load_before:.1f}, distill {run_load:.1f}, "
              f"plan {load_after:.1f}")
        print(f"  {'stage':<11} {'plan before':>11} {'measured':>9} {'plan after':>10} {'ratios':>11}")
        for name, actual in measured.items():
            pair = (early[name] / actual, late[name] / actual)
            ratios[name] += pair
            print(f"  {name:<11} {early[name]:>10.2f}s {actual:>8.2f}s {late[name]:>9.2f}s {pair[0]:>5.2f} {pair[1]:>5.2f}")
    print("how each plan measured (model load + items x mean seconds per item, repeats, min-max per item):")
    for i, (plan, load) in enumerate(plans):
        print(f"  plan {i + 1} (load average {load:.1f}): " + "; ".join(
            f"{stage} {m['load']:.1f}s + {m['seconds'] - m['load']:.1f}s (n={m['samples']}, {m['spread'][0]:.3g}-"
            f"{m['spread'][2]:.3g})" for stage, m in plan.items()))
    print("median ratio (predicted / measured, " + f"{2 * args.rounds} pairs): " + ", ".join(
        f"{name} {statistics.median(values):.2f}" for name, values in ratios.items()))
    print("range of ratios: " + ", ".join(f"{name} {min(v):.2f}-{max(v):.2f}" for name, v in ratios.items()))
    inside = all(0.5 <= statistics.median(v) <= 2.0 for v in ratios.values())
    print("within 2x (median): " + ("yes" if inside else "NO"))


if __name__ == "__main__":
    main()
