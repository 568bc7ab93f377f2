"""Every benchmark runs: `python benchmarks/<script>.py --smoke` exits 0, prints its figures, writes nothing into the
repository. Also `benchmarks/gpu_check.sh`: its README rows from a hand-made result, and its refusal without CUDA."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
NUMBER = r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)"


def repository_status() -> str:
    """`git status` of the checkout (untracked files included), or "" outside a git checkout."""
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                          text=True)
    return done.stdout if done.returncode == 0 else ""


def run_smoke(script: str, cwd: Path, *extra: str, timeout: int = 900) -> str:
    """Runs `benchmarks/<script>.py --smoke` from `cwd` with this checkout's vldd; returns its output."""
    before = repository_status()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), "--smoke", *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script}.py --smoke exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert repository_status() == before, f"{script}.py --smoke wrote into the repository"
    assert not any(cwd.iterdir()), f"{script}.py --smoke wrote into its working directory: {list(cwd.iterdir())}"
    return done.stdout


def ratios(pattern: str, text: str, count: int) -> list[float]:
    """The numbers the groups of `pattern` capture in `text` (multi-line): `count` of them, all positive."""
    values = [float(v) for match in re.findall(pattern, text, re.M) for v in ([match] if isinstance(match, str) else match)]
    assert len(values) == count, f"expected {count} matches of {pattern!r} in:\n{text}"
    assert all(v > 0 for v in values), values
    return values


SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))
CHECKED = {"prototypes", "cli_startup", "batching", "memory", "paper_scale", "plan_accuracy"}  # own tests below


def test_the_known_scripts_are_all_there():
    assert CHECKED <= set(SCRIPTS)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(set(SCRIPTS) - CHECKED))
def test_every_other_benchmark_has_a_smoke_mode(script, tmp_path):
    run_smoke(script, tmp_path)


def test_cli_startup_smoke(tmp_path):
    out = run_smoke("cli_startup", tmp_path)
    ratios(rf"vldd --help\s+{NUMBER}s\s+{NUMBER}s\s+{NUMBER}x", out, 3)
    assert re.search(r"False/False\s*$", out, re.M), out  # `vldd --help` imports no torch, on both sides
    ratios(rf"python -m vldd --help \(this checkout\): {NUMBER} s", out, 1)


def test_cli_startup_needs_a_baseline_without_smoke():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "cli_startup.py")], capture_output=True, text=True)
    assert done.returncode == 2 and "--baseline is required" in done.stderr, done.stderr


@pytest.mark.slow
def test_prototypes_smoke(tmp_path):
    out = run_smoke("prototypes", tmp_path)
    ratios(rf"IPC 4: median time ratio \(sklearn / torch\) {NUMBER}x", out, 1)
    ratios(rf"inertia ratio \(torch / sklearn\) median {NUMBER}", out, 1)
    assert re.search(r"identical outlier sets [01]/1$", out, re.M), out


@pytest.mark.slow
def test_batching_smoke(tmp_path, tiny_cache):
    out = run_smoke("batching", tmp_path, "--cache-dir", str(tiny_cache))
    ratios(rf"(?:captioning|generation|VAE encoding).*speed-up median {NUMBER}x", out, 3)


@pytest.mark.slow
def test_memory_smoke(tmp_path):
    out = run_smoke("memory", tmp_path)
    assert len(re.findall(r"^  [12] classes: peak RSS", out, re.M)) == 2, out
    ratios(rf"^peak RSS: 1 classes .* ratio {NUMBER}", out, 1)
    ratios(rf"^peak anonymous RSS: 1 classes .* ratio {NUMBER}", out, 1)


@pytest.mark.slow
def test_paper_scale_smoke(tmp_path, tiny_cache):
    out = run_smoke("paper_scale", tmp_path, "--cache-dir", str(tiny_cache))
    written = Path(re.search(r"^wrote (.+) \(\d+ s\)$", out, re.M).group(1))
    assert ROOT not in written.parents and tmp_path not in written.parents
    result = json.loads(written.read_text())
    shutil.rmtree(written.parent)  # the script's own temporary directory
    assert result["smoke"] and result["settings"]["decode_tokens"] == 3 and result["settings"]["resolution"] == 64
    assert set(result["stages"]) == {"caption", "encode", "generate", "finetune", "prototypes"}
    for stage in ("caption", "encode", "generate", "finetune"):
        assert result["stages"][stage]["best"]["images_per_s"] > 0
    assert [p["run"] for p in result["projections"]] == ["ImageNette IPC 10", "ImageNet-1K IPC 10",
                                                         "ImageNet-1K IPC 50"]
    for p in result["projections"]:
        assert p["total_s"] == pytest.approx(sum(p["seconds"].values())) and p["total_s"] > 0
    assert set(result["speed"]) == {"sdpa", "channels_last"}  # torch.compile is skipped in a smoke run
    rows = out.split("README rows:\n", 1)[1].splitlines()
    assert len([r for r in rows if r.startswith("| ")]) == 4, rows


# --- gpu_check.sh and the README rows -----------------------------------------------------------------------------

def hand_made_result() -> dict:
    """A result as paper_scale.py writes it, with round numbers worked by hand."""
    def stage(rate, batch, gb):
        row = {"batch": batch, "images_per_s": rate, "peak_gb": gb}
        return {"rows": [row], "best": row, "notes": []}

    day = 86400.0
    return {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "dtype": "float16", "torch": "2.11.0",
            "quick": False, "smoke": False, "settings": {"per_layer": False, "decode_tokens": 128},
            "stages": {"caption": stage(0.25, 32, 20.04), "encode": stage(40.0, 32, 3.5),
                       "finetune": stage(8.0, 32, 21.96), "generate": stage(2.0, 16, 9.0),
                       "prototypes": {"rows": [{"ipc": 10, "seconds_per_class": 1.0, "peak_gb": 1.0}]}},
            "projections": [
                {"run": "ImageNette IPC 10", "total_s": 3 * 3600.0,
                 "seconds": {"caption": 7200.0, "finetune": 1800.0, "encode": 1200.0, "prototypes": 10.0,
                             "generate": 590.0}},
                {"run": "ImageNet-1K IPC 10", "total_s": 61.5 * day,
                 "seconds": {"caption": 59 * day, "finetune": 2 * day, "encode": 0.5 * day, "prototypes": 0.0,
                             "generate": 0.0}}]}


def test_readme_rows_from_a_hand_made_result(tmp_path):
    path = tmp_path / "paper_scale_cuda.json"
    path.write_text(json.dumps(hand_made_result()))
    done = subprocess.run([sys.executable, str(BENCHMARKS / "paper_scale.py"), "--rows", str(path)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "| NVIDIA H100 80GB HBM3 (measured, decode timed over 128 tokens) | float16 | 0.25 images/s (batch 32) | "
        "40 images/s (batch 32) | 8 images/s (batch 32) | 2 images/s (batch 16) | 20.0 GB caption, 22.0 GB "
        "fine-tune | 3.0 h | 61.5 days |",
        "| ImageNette IPC 10 | 2.0 h | 30.0 min | 20.0 min | 10.0 s | 9.8 min | **3.0 h** |",
        "| ImageNet-1K IPC 10 | 59.0 days | 2.0 days | 12.0 h | 0.0 s | 0.0 s | **61.5 days** |",
    ]


def test_readme_rows_refuse_an_unfinished_result(tmp_path):
    result = hand_made_result()
    result["projections"], result["skipped"] = [], ["prototypes"]
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(result))
    done = subprocess.run([sys.executable, str(BENCHMARKS / "paper_scale.py"), "--rows", str(path)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1 and "has no projections" in done.stderr, done.stderr


def test_gpu_check_refuses_without_cuda(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), str(out)], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "no CUDA device" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not out.exists()


@pytest.mark.slow
def test_plan_accuracy_smoke_under_load(tmp_path):
    out = run_smoke("plan_accuracy", tmp_path, "--load", "1")
    pids = [int(p) for p in re.search(r"^1 busy loops running \(pids (\d+)\)$", out, re.M).group(1).split()]
    for pid in pids:  # stopped (and reaped) before the benchmark ended
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    ratios(rf"^round 1: load average \(1 min\) after plan {NUMBER}, distill {NUMBER}, plan {NUMBER}$", out, 3)
    for stage in ("caption", "prototypes", "generate", "total"):  # plan before, measured, plan after, 2 ratios
        ratios(rf"^  {stage}\s+{NUMBER}s\s+{NUMBER}s\s+{NUMBER}s\s+{NUMBER}\s+{NUMBER}$", out, 5)
    ratios(rf"^median ratio \(predicted / measured, 2 pairs\): caption {NUMBER}, prototypes {NUMBER}, generate "
           rf"{NUMBER}, total {NUMBER}$", out, 4)
