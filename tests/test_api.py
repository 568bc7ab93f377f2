"""The public Python API: `from vldd import ...` is lazy, complete, and the README's example runs."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vldd

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "datasets", "accelerate", "gradio")


def test_every_public_name_is_the_defining_modules_object():
    for name, module in vldd._EXPORTS.items():
        assert getattr(vldd, name) is getattr(importlib.import_module(f"vldd.{module}"), name), name
    assert set(vldd._EXPORTS) <= set(dir(vldd)) and set(vldd.__all__) == {"__version__", *vldd._EXPORTS}
    with pytest.raises(AttributeError, match="module 'vldd' has no attribute 'no_such_name'"):
        vldd.no_such_name  # noqa: B018


def test_the_api_of_the_brief_is_there():
    from vldd import (  # noqa: F401
        DistillConfig,
        EvalConfig,
        FinetuneConfig,
        distill,
        evaluate,
        finetune,
        load_config,
        push_captions,
        push_distilled,
    )

    assert load_config(overrides={"preset": "tiny", "ipc": 2}).ipc == 2
    assert vldd.DistillResult.__dataclass_fields__["dataset"].type == "datasets.Dataset | None"


@pytest.mark.slow
def test_import_vldd_loads_no_model_library():
    code = ("import sys, vldd; assert vldd.__version__; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
    # ...and the first use of a name imports its module.
    code = "import sys, vldd; vldd.distill; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "True"


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section holds one example"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, tiny_cache, monkeypatch, capsys):
    from vldd.models import tiny

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tiny, "default_cache_dir", lambda: tiny_cache)  # the models the session already built
    namespace: dict = {}
    exec(compile(readme_python_example(), "README.md", "exec"), namespace)
    result, scores = namespace["result"], namespace["scores"]
    assert result.dataset.num_rows == 4 and sorted(set(result.dataset["class_name"])) == ["circle", "stripes"]
    assert (tmp_path / "runs" / "api" / "dataset").is_dir()
    assert scores.config.distilled == ["runs/api"] and len(scores.runs["distilled"].repeats) == 1
    printed = capsys.readouterr().out
    assert "num_rows: 4" in printed and "best_mean" in printed
