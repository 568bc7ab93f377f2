"""Hub kernels are a choice: every `from_pretrained` vldd makes gets `use_kernels`, off unless asked for, never offline.

transformers (5.25 and later) replaces layers with compute kernels downloaded from the Hub by default on CUDA; offline
and uncached, loading a model then fails. The `kernel_choices` spy records what `from_pretrained` decided for each
model it built (transformers calls `set_use_kernels` once per load with its decision).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import PreTrainedModel

from vldd.app.controls import run_config
from vldd.app.models import ModelCache
from vldd.app.settings import load_space_config
from vldd.cli.commands import main
from vldd.configs.distill import load_config
from vldd.core.devices import hub_kernels_allowed

ROOT = Path(__file__).resolve().parents[1]
# One class, one image per cluster, one fine-tuning step: every loader of a run, in seconds.
RUN = ["--preset", "tiny", "--classes", "circle", "--data.max_images_per_class", "6", "--ipc", "1",
       "--generation.num_inference_steps", "4", "--finetune.enabled", "true", "--finetune.max_train_steps", "1",
       "--quiet"]


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub reports itself online (HF_HUB_OFFLINE stays set underneath: a real download would still fail)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)


@pytest.fixture
def kernel_choices(monkeypatch):
    """(model class, use_kernels) for every model transformers' `from_pretrained` builds during the test."""
    seen = []
    original = PreTrainedModel.set_use_kernels

    def spy(self, use_kernels, *args, **kwargs):
        seen.append((type(self).__name__, bool(use_kernels)))
        return original(self, use_kernels, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", spy)
    return seen


def test_allowed_only_when_asked_for_and_online(monkeypatch):
    import huggingface_hub

    assert hub_kernels_allowed(True) is False  # the tests run offline (conftest)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    assert hub_kernels_allowed(True) is True
    assert hub_kernels_allowed(False) is False
    with pytest.raises(ValueError, match=r"`hub_kernels` must be true or false, got 'yes'"):
        load_config(overrides={"preset": "tiny", "hub_kernels": "yes"})


def test_the_entry_points_turn_off_the_lazily_loaded_kernels_unless_asked_for_and_online(monkeypatch):
    import huggingface_hub

    from vldd.core.devices import hub_kernels_for_process

    hub_kernels_for_process(True)  # offline (conftest): off even when asked for
    assert os.environ.pop("USE_HUB_KERNELS") == "0"
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    hub_kernels_for_process(True)
    assert "USE_HUB_KERNELS" not in os.environ  # left to transformers (on by default)
    hub_kernels_for_process(False)
    assert os.environ["USE_HUB_KERNELS"] == "0"


def test_transformers_default_is_on_so_the_spy_can_tell(tiny_cache, kernel_choices):
    """Without vldd's choice, transformers turns kernels on (so the tests below would see True where vldd did not
    pass False)."""
    from transformers import CLIPTextModel

    from vldd.configs.distill import TINY_DIFFUSION
    from vldd.models.registry import resolve_model

    CLIPTextModel.from_pretrained(resolve_model(TINY_DIFFUSION, tiny_cache), subfolder="text_encoder")
    assert kernel_choices == [("CLIPTextModel", True)]


def _run(tmp_path, tiny_cache, *flags):
    out = tmp_path / "run"
    assert main(["distill", *RUN, "--output", str(out), "--cache-dir", str(tiny_cache), *flags]) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.slow  # whole tiny runs, fine-tuning included
def test_off_by_default_every_loader_of_a_run_passes_it_and_the_cli_turns_off_the_lazy_ones(
        tiny_cache, tmp_path, kernel_choices):
    manifest = _run(tmp_path, tiny_cache)
    # the captioner, the fine-tuning's text encoder (trained with, then saved with the model) and the pipeline's
    assert [name for name, _ in kernel_choices] == ["LlavaForConditionalGeneration", "CLIPTextModel", "CLIPTextModel",
                                                    "CLIPTextModel"]
    assert not any(use for _, use in kernel_choices)
    assert manifest["config"]["hub_kernels"] is False
    assert os.environ.get("USE_HUB_KERNELS") == "0"  # transformers' lazily loaded kernels read only this


@pytest.mark.slow  # whole tiny runs, fine-tuning included
def test_asked_for_and_online_every_loader_turns_them_on(tiny_cache, tmp_path, kernel_choices, online):
    manifest = _run(tmp_path, tiny_cache, "--hub_kernels", "true")
    assert len(kernel_choices) == 4 and all(use for _, use in kernel_choices)
    assert manifest["config"]["hub_kernels"] is True
    assert "USE_HUB_KERNELS" not in os.environ
    # kernels may change results' last bits: the stages that load transformers models are redone, the VAE's are not
    off = _run(tmp_path / "off", tiny_cache)["fingerprints"]
    on = manifest["fingerprints"]
    assert {stage for stage in on if on[stage] != off[stage]} == {"caption", "finetune", "text", "generate"}


@pytest.mark.slow  # whole tiny runs, fine-tuning included
def test_asked_for_but_offline_nothing_is_tried(tiny_cache, tmp_path, kernel_choices):
    manifest = _run(tmp_path, tiny_cache, "--hub_kernels", "true")
    assert len(kernel_choices) == 4 and not any(use for _, use in kernel_choices)
    assert manifest["config"]["hub_kernels"] is True and os.environ.get("USE_HUB_KERNELS") == "0"


def test_the_apps_model_cache_passes_it(tiny_cache, tmp_path, kernel_choices, online):
    space = load_space_config(ROOT / "spaces_config.yaml")
    config = run_config(space, tmp_path, dataset="sample", classes=["0"], preset="tiny")
    models = ModelCache(tiny_cache)
    for hub_kernels in (False, True):
        config.hub_kernels = hub_kernels
        models.captioner(config, ("cpu", "float32"))
        models.pipeline(config, ("cpu", "float32"))
    assert kernel_choices == [("LlavaForConditionalGeneration", False), ("CLIPTextModel", False),
                              ("LlavaForConditionalGeneration", True), ("CLIPTextModel", True)]


def test_a_standalone_fine_tuning_loads_its_text_encoder_with_the_choice(tiny_cache, kernel_choices, online):
    from vldd.jobs.finetune import _load_models, finetune_config
    from vldd.models.registry import resolve_model

    for hub_kernels in (False, True):
        config = finetune_config("tiny", captions="unused", hub_kernels=hub_kernels)
        _load_models(config, resolve_model(config.base_model, tiny_cache))
    assert kernel_choices == [("CLIPTextModel", False), ("CLIPTextModel", True)]


EMULATED = """
import json, sys
import spaces  # noqa: F401  (first, as on a Space: it installs the CUDA emulation)
import torch
from transformers import AutoModelForImageTextToText
from vldd.models.registry import resolve_model
from vldd.stages.caption import load_captioner

cache = sys.argv[1]
out = {"cuda": torch.cuda.is_available(), "loads": []}
for requested in (False, True):
    captioner = load_captioner("tiny://llava", device="cuda", cache_dir=cache, hub_kernels=requested)
    out["loads"].append([requested, str(captioner.model.device), captioner.model.use_kernels])
try:  # transformers' default, for contrast
    AutoModelForImageTextToText.from_pretrained(resolve_model("tiny://llava", cache), device_map="cuda")
    out["default"] = "loaded"
except Exception as err:
    out["default"] = str(err)
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow  # a subprocess under the `spaces` emulation
def test_the_captioner_loads_on_emulated_zerogpu_offline_with_no_kernel_cached(tiny_cache, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    env.update({"SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": "http://127.0.0.1:9",  # never called here
                "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
                "HF_DEACTIVATE_ASYNC_LOAD": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    done = subprocess.run([sys.executable, "-c", EMULATED, str(tiny_cache)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["cuda"] is True
    assert result["loads"] == [[False, "cuda:0", False], [True, "cuda:0", False]]  # offline: not even when asked
    # the same load with transformers' defaults fetches a kernel and fails: this test reproduces the problem
    assert "kernels-community/" in result["default"] and "offline" in result["default"], result["default"]
    assert not (tmp_path / "hf" / "hub").exists() or not any((tmp_path / "hf" / "hub").iterdir())
