"""The benchmarks this project added run end to end in their `--smoke` mode (the figures are not checked)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # fresh interpreters, real training and distillation (small)
@pytest.mark.parametrize("script, expected", [("plan_accuracy.py", "within 2x:"),
                                              ("soft_clean_forward.py", "two - one: best")])
def test_benchmark_smoke(script, expected):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke"], capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout
