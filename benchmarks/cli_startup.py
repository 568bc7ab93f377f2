"""Start-up time of `vldd --help` and `vldd <command> --help`: this checkout against another one.

Each command runs in a fresh interpreter, this checkout and the baseline interleaved (this one first on even repeats,
the baseline first on odd); medians over the repeats are reported, with the ratio baseline / this. The baseline is any
other vldd checkout, e.g. `git worktree add /tmp/vldd-main main`. Both sides call `vldd.cli.main` (the console script's entry
point), which every version has; the module-count column says whether torch was imported.

    python benchmarks/cli_startup.py --baseline /tmp/vldd-main
    python benchmarks/cli_startup.py --baseline /tmp/vldd-main --repeats 3 --commands "" distill
    python benchmarks/cli_startup.py --smoke     # `vldd --help` once, this checkout against itself: checks the script
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
PROBE = ("import sys\nfrom vldd.cli import main\ntry:\n    main([*sys.argv[1:], '--help'])\nexcept SystemExit:\n"
         "    pass\nprint('torch' in sys.modules, file=sys.stderr)")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(root: Path, command: list[str]) -> tuple[float, float, bool]:
    """One `vldd <command> --help` (`vldd.cli.main`) with `root` first on the path: wall seconds, CPU seconds (user +
    system; less sensitive to a busy machine), and whether torch was imported."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    start, cpu = time.perf_counter(), cpu_seconds()
    done = subprocess.run([sys.executable, "-c", PROBE, *command], env=env, cwd=root, capture_output=True,
                          text=True, check=True)
    return time.perf_counter() - start, cpu_seconds() - cpu, done.stderr.strip().splitlines()[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another vldd checkout to compare with (required)")
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command on each side")
    parser.add_argument("--commands", nargs="*", default=["", "distill", "evaluate", "finetune"],
                        help='subcommands whose --help is timed ("" = `vldd --help`)')
    parser.add_argument("--smoke", action="store_true",
                        help="`vldd --help` once, this checkout against itself (no --baseline): checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.baseline, args.repeats, args.commands = args.baseline or HERE, 1, [""]
    if args.baseline is None:
        parser.error("--baseline is required (another vldd checkout, e.g. `git worktree add /tmp/vldd-main main`)")
    sides = {"this": HERE, "baseline": args.baseline.resolve()}
    print(f"{'command':21s} {'wall: this':>10s} {'baseline':>9s} {'ratio':>6s}   {'CPU: this':>9s} {'baseline':>9s} "
          f"{'ratio':>6s}   torch imported (this/baseline)")
    for command in args.commands:
        argv = command.split()
        wall: dict[str, list[float]] = {"this": [], "baseline": []}
        cpu: dict[str, list[float]] = {"this": [], "baseline": []}
        torch_loaded = {}
        for r in range(args.repeats):
            for side in (["this", "baseline"] if r % 2 == 0 else ["baseline", "this"]):
                seconds, cpu_s, torch_loaded[side] = run(sides[side], argv)
                wall[side].append(seconds)
                cpu[side].append(cpu_s)
        w = {side: statistics.median(v) for side, v in wall.items()}
        c = {side: statistics.median(v) for side, v in cpu.items()}
        label = f"vldd {command} --help".replace("  ", " ")
        print(f"{label:21s} {w['this']:9.2f}s {w['baseline']:8.2f}s {w['baseline'] / w['this']:5.1f}x   "
              f"{c['this']:8.2f}s {c['baseline']:8.2f}s {c['baseline'] / c['this']:5.1f}x   "
              f"{torch_loaded['this']}/{torch_loaded['baseline']}")
    seconds = []
    for _ in range(args.repeats):  # `python -m vldd` itself: only this checkout has vldd/__main__.py
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vldd", "--help"], env={**os.environ, "PYTHONPATH": str(HERE)}, cwd=HERE,
                       capture_output=True, check=True)
        seconds.append(time.perf_counter() - start)
    print(f"python -m vldd --help (this checkout): {statistics.median(seconds):.2f} s")


if __name__ == "__main__":
    main()
