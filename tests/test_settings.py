"""Each setting declared once: the distill run's fine-tuning section is FinetuneConfig's settings (one rule set, one
help text, the same recipe as before), stage functions take the configs' defaults, old run configs still load."""

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vldd.configs.base import fingerprint
from vldd.configs.distill import GenerationConfig, PrototypeConfig, denoising_steps, load_config
from vldd.configs.finetune import FinetuneConfig, finetune_config
from vldd.data.sources import is_hub_dataset
from vldd.jobs.finetune import finetune_settings

ROOT = Path(__file__).resolve().parents[1]

# The finetune section of a tiny run's config.yaml as runs written before the section took its settings from
# FinetuneConfig (every recipe setting null, `lora: false`).
OLD_FINETUNE_SECTION = """\
preset: tiny
output: RUN
finetune:
  enabled: true
  base_model: null
  resolution: 64
  num_train_epochs: null
  max_train_steps: null
  train_batch_size: null
  gradient_accumulation_steps: null
  learning_rate: null
  lora: false
  mixed_precision: null
  checkpointing_steps: null
"""

# fingerprint(FinetuneConfig.to_dict()) of the fine-tuning each run below got from the code before this change
# (fp16, then fp32): the same settings now give the same fine-tuning, so resumed runs keep their fingerprints.
CASES = [({"data": {"dataset": "frgfm/imagenette"}}, ("ae81b35e16bdc57b", "098674dcadb53ac3")),
         ({"preset": "tiny", "finetune": {"enabled": True}}, ("566e48384dd2845b", "6c64db62e68d0a3f")),
         ({"data": {"dataset": "uoft-cs/cifar10"}, "finetune": {"lora": True, "max_train_steps": 7,
                                                                "base_model": "my/sd"}},
          ("f29408af54fd282f", "b3c320501d2af9f7"))]


@pytest.mark.parametrize(("overrides", "expected"), CASES)
def test_the_fine_tuning_stage_gives_the_recipe_it_gave_before(overrides, expected):
    config, _ = load_config(overrides={"output": "/RUN", **overrides}).resolve()
    got = tuple(fingerprint(finetune_settings(config, "/RUN", dtype).to_dict())
                for dtype in (torch.float16, torch.float32))
    assert got == expected


def test_an_old_runs_fine_tuning_section_still_loads_and_means_the_same(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(OLD_FINETUNE_SECTION)
    old, _ = load_config(path, {"output": "/RUN"}).resolve()
    new, _ = load_config(overrides={"output": "/RUN", "preset": "tiny", "finetune": {"enabled": True}}).resolve()
    assert old.finetune.lora is False and new.finetune.lora is None  # None = the recipe's (not LoRA)
    assert finetune_settings(old, "/RUN", torch.float32) == finetune_settings(new, "/RUN", torch.float32)
    tune = finetune_settings(old, "/RUN", torch.float32)
    # the tiny recipe (vldd.configs.finetune.PRESETS["tiny"]), the run's resolution, precision from the dtype
    assert (tune.base_model, tune.resolution, tune.train_batch_size, tune.num_train_epochs, tune.learning_rate,
            tune.gradient_checkpointing, tune.mixed_precision) == ("tiny://stable-diffusion", 64, 8, 2, 1e-4, False,
                                                                   "no")


@pytest.mark.parametrize(("finetune", "message"), [
    ({"resolution": 60}, "`finetune.resolution` must be a positive multiple of 8 pixels, got 60"),
    ({"train_batch_size": 0}, "`finetune.train_batch_size` must be an integer >= 1, got 0"),
    ({"learning_rate": -1.0}, "`finetune.learning_rate` must be > 0, got -1.0"),
    ({"mixed_precision": "fp8"}, "`finetune.mixed_precision` must be one of ['no', 'fp16', 'bf16'], got 'fp8'"),
    ({"lora": "yes"}, "`finetune.lora` must be true or false, got 'yes'"),
    ({"enabled": "no"}, "`finetune.enabled` must be true or false, got 'no'"),
])
def test_the_fine_tuning_section_is_checked_by_the_recipes_rules(finetune, message):
    with pytest.raises(ValueError) as err:
        load_config(overrides={"finetune": finetune})
    assert str(err.value) == message


def test_the_recipe_keeps_its_own_names_in_its_errors():
    with pytest.raises(ValueError, match=r"^`resolution` must be a positive multiple of 8 pixels, got 60$"):
        FinetuneConfig(captions="run", resolution=60)
    with pytest.raises(ValueError, match=r"^`lr_scheduler` must be one of \["):
        finetune_config(captions="run", lr_scheduler="sometimes")


def test_unknown_fine_tuning_keys_name_the_section():
    with pytest.raises(ValueError, match=r"unknown keys \['use_ema'\] in `finetune`"):
        load_config(overrides={"finetune": {"use_ema": False}})


def test_stage_functions_leave_derived_settings_to_the_run():
    from vldd.stages.generate import generate_images
    from vldd.stages.prototypes import build_prototypes
    from vldd.stages.text_prototypes import select_text_prototypes

    # derived per dataset (None in the config until `DistillConfig.resolve`): no default of the stage's own
    for function, name in ((build_prototypes, "contamination"), (select_text_prototypes, "common_threshold")):
        assert inspect.signature(function).parameters[name].default is inspect.Parameter.empty, name
    with pytest.raises(TypeError, match="contamination"):
        build_prototypes(torch.zeros(4, 2), 2)
    # the others: the config's defaults (a run passes its own values)
    generate = inspect.signature(generate_images).parameters
    assert {name: generate[name].default for name in ("guidance_scale", "strength", "num_inference_steps")} == {
        "guidance_scale": GenerationConfig().guidance_scale, "strength": GenerationConfig().strength,
        "num_inference_steps": GenerationConfig().num_inference_steps}
    assert inspect.signature(build_prototypes).parameters["n_neighbors"].default == PrototypeConfig().lof_neighbors


def test_denoising_steps():
    assert (denoising_steps(50, 0.7), denoising_steps(50, 1.0), denoising_steps(10, 0.05)) == (35, 50, 0)
    with pytest.raises(ValueError, match="leaves no denoising step"):
        GenerationConfig(num_inference_steps=10, strength=0.05)


def test_is_hub_dataset(tmp_path):
    assert is_hub_dataset("uoft-cs/cifar10") and is_hub_dataset("cifar10")
    assert not is_hub_dataset("sample") and not is_hub_dataset(str(tmp_path))


def test_the_cli_parser_imports_no_torch():
    code = textwrap.dedent("""
        import sys, vldd.cli
        vldd.cli.commands.build_parser()
        assert 'torch' not in sys.modules, 'torch imported'
        print('ok')
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "ok", done.stderr
