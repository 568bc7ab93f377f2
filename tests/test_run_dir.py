"""The run directory never lies: a failed command changes nothing, and the manifest describes the results on disk.

Every `DistillConfig` setting is enumerated from the dataclasses, so a new setting must be classified here: either it
changes the fingerprint of a stage it affects (checked), or it is one of `UNFINGERPRINTED`, and a rerun of a finished
run with it changed must leave the manifest describing the results (checked on real reruns).
"""

import dataclasses
import shutil

import numpy as np
import pytest
import torch
import yaml
from helpers import image_folder, tiny_overrides

from vldd.cli.commands import main
from vldd.configs.distill import DistillConfig, load_config
from vldd.data.sources import load_source
from vldd.jobs.distill import RECORDED_SETTINGS, UNFINGERPRINTED, distill, stage_fingerprints
from vldd.jobs.finetune import finetune_settings
from vldd.models.registry import resolve_model


def _leaves(cls, prefix=""):
    names = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            names += _leaves(type(default), f"{prefix}{f.name}.")
        else:
            names.append(prefix + f.name)
    return names


def _set(values: dict, dotted: str, value) -> dict:
    node = values
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return values


def _stamps(run):
    return {p: p.stat().st_mtime_ns for p in (run / "work").rglob("*") if p.is_file() and p.name != "fingerprint.json"}


def _bytes(run):
    return {name: (run / name).read_bytes() for name in ("config.yaml", "manifest.json")}


@pytest.fixture(scope="module")
def finished(tiny_cache, tmp_path_factory):
    """A finished small tiny run, written through the CLI from a YAML file (so commands can reuse it)."""
    root = tmp_path_factory.mktemp("finished")
    run = root / "run"
    (root / "run.yaml").write_text(yaml.safe_dump(tiny_overrides(run)))
    assert main(["distill", "--config", str(root / "run.yaml"), "--cache-dir", str(tiny_cache), "--quiet"]) == 0
    return run


def _copy(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(run)))
    return run, config


def test_a_failed_command_leaves_config_manifest_and_results_as_they_were(finished, tiny_cache, tmp_path, capsys):
    run, config = _copy(finished, tmp_path)
    before, stamps = _bytes(run), _stamps(run)
    (tmp_path / "empty").mkdir()
    common = ["--config", str(config), "--cache-dir", str(tiny_cache), "--quiet"]
    failing = {
        "bad dataset": ["distill", *common, "--dataset", str(tmp_path / "missing")],
        "bad flag value": ["distill", *common, "--ipc", "0"],
        "too few images for IPC": ["distill", *common, "--ipc", "50"],
        "stage command, bad class": ["generate", "--output", str(run), "--classes", "no-such-class",
                                     "--cache-dir", str(tiny_cache)],
    }
    if not torch.cuda.is_available():
        failing["--device cuda without CUDA"] = ["distill", *common, "--device", "cuda"]
    for what, argv in failing.items():
        assert main(argv) == 2, what
        assert "vldd: error:" in capsys.readouterr().err, what
        assert _bytes(run) == before, what
        assert _stamps(run) == stamps, what
    # and the run still works from its own config.yaml (the failing settings were not kept)
    assert main(["generate", "--output", str(run), "--cache-dir", str(tiny_cache), "--quiet"]) == 0
    assert _stamps(run) == stamps


def test_a_dtype_change_recomputes_what_it_changes_and_the_manifest_says_so(finished, tiny_cache, tmp_path):
    run, _ = _copy(finished, tmp_path)
    first = yaml.safe_load((run / "manifest.json").read_text())
    assert first["dtype"] == "float32"
    images = [np.asarray(im) for im in distill(load_config(overrides=tiny_overrides(run)), cache_dir=tiny_cache
                                               ).dataset["image"]]
    result = distill(load_config(overrides=tiny_overrides(run, dtype="bf16")), cache_dir=tiny_cache)
    manifest = result.manifest
    for stage in ("caption", "prototypes", "generate"):  # the stages whose models run in the dtype
        assert manifest["fingerprints"][stage] != first["fingerprints"][stage], stage
        assert [r["dtype"] for r in manifest["stages"][stage]["computed_with"]] == ["bfloat16"], stage
    assert manifest["dtype"] == "bfloat16"
    assert not all(np.array_equal(a, np.asarray(b)) for a, b in zip(images, result.dataset["image"]))


# A changed value for every setting; the test below fails when a new setting is missing here.
def _changed_values(tmp_path, tiny_cache):
    sd = str(resolve_model("tiny://stable-diffusion", tiny_cache))  # the same VAE under another name
    return {
        "output": str(tmp_path / "elsewhere"), "ipc": 2, "seed": 1, "preset": "paper", "device": "cpu",
        "dtype": "bf16", "hub_kernels": True,
        "data.dataset": str(image_folder(tmp_path / "folder", ["circle", "stripes"])),
        "data.config_name": "other", "data.split": "test", "data.revision": "v1", "data.image_column": "img",
        "data.label_column": "lbl", "data.classes": ["circle"], "data.max_images_per_class": 10,
        "data.too_few_images": "reduce", "data.streaming": True, "data.class_names": None,  # set below
        "data.numeric_names": True, "data.profile": "cifar10",
        "caption.model": "tiny://other", "caption.revision": "v1", "caption.prompt": "the {class_name}",
        "caption.do_sample": False, "caption.temperature": 0.5, "caption.max_new_tokens": 5,
        "caption.batch_size": 3, "caption.conversation": "chat_template", "caption.pad_to_square": False,
        "caption.clean_captions": False, "caption.from_hub": "someone/captions",
        "prototypes.resolution": 32, "prototypes.encode_batch_size": 4, "prototypes.lof_neighbors": 5,
        "prototypes.contamination": 0.2, "prototypes.n_init": 2, "prototypes.max_iter": 10, "prototypes.tol": 1e-3,
        "text.top_k": 5, "text.common_threshold": 0.5, "text.fallback": "class_name",
        "text.mode": "class_name",
        "generation.model": sd, "generation.revision": "v1", "generation.lora": "someone/lora",
        "generation.scheduler": "DDIMScheduler", "generation.num_inference_steps": 20, "generation.strength": 0.5,
        "generation.guidance_scale": 3.0, "generation.eta": 0.5, "generation.compile": True,
        "generation.negative_prompt": "blurry", "generation.prompt_chunking": "windows", "generation.batch_size": 2,
        "generation.output_size": 32,
        "finetune.enabled": False, "finetune.base_model": sd, "finetune.resolution": 32,
        "finetune.num_train_epochs": 3, "finetune.max_train_steps": 3, "finetune.train_batch_size": 3,
        "finetune.gradient_accumulation_steps": 2, "finetune.learning_rate": 3e-4, "finetune.lora": True,
        "finetune.mixed_precision": "bf16", "finetune.checkpointing_steps": 7,
    }


def test_every_setting_is_fingerprinted_or_listed_as_not(tiny_cache, tmp_path):
    from vldd.core.devices import resolve_device, resolve_dtype

    changed = _changed_values(tmp_path, tiny_cache)
    assert set(changed) == set(_leaves(DistillConfig)), "classify the new settings: add them to _changed_values"
    assert UNFINGERPRINTED <= set(changed)

    def fingerprints(values):
        config = load_config(overrides=values)
        source = load_source(config.data)
        config, _ = config.resolve(source.profile)
        dtype = resolve_dtype(config.dtype, resolve_device(config.device))
        tune = finetune_settings(config, config.output, dtype)
        return stage_fingerprints(config, source, tune, dtype, tiny_cache)

    # fine-tuning on, so that its settings count
    base_values = tiny_overrides(tmp_path / "run", finetune={"enabled": True}, device="auto")
    base = fingerprints(base_values)
    sample = load_source(load_config(overrides=base_values).data)
    for dotted, value in changed.items():
        values = _set(yaml.safe_load(yaml.safe_dump(base_values)), dotted, value)
        if dotted == "preset":  # every other value spelled out: only the preset's name changes
            values = {**load_config(overrides=base_values).to_dict(), "preset": value}
        if dotted == "data.class_names":
            values["data"]["class_names"] = [f"{name} shape" for name in sample.class_names]
        if dotted.startswith("data.") and dotted not in ("data.class_names", "data.classes", "data.streaming",
                                                         "data.max_images_per_class", "data.profile",
                                                         "data.numeric_names"):
            # a source that cannot be opened here: fingerprint the values with the sample's rows (the key is the
            # settings themselves, plus the source's revision)
            import vldd.jobs.distill as d

            config, _ = load_config(overrides=values).resolve(sample.profile)
            dtype = torch.float32
            after = d.stage_fingerprints(config, sample, finetune_settings(config, config.output, dtype), dtype,
                                         tiny_cache)
        else:
            after = fingerprints(values)
        if dotted in UNFINGERPRINTED:
            assert after == base, f"{dotted} changes a fingerprint: take it out of UNFINGERPRINTED"
        else:
            assert after != base, f"{dotted} is in no stage's fingerprint and not in UNFINGERPRINTED"


@pytest.mark.parametrize("dotted", sorted(UNFINGERPRINTED))
def test_a_rerun_with_an_unfingerprinted_setting_changed_keeps_the_manifest_true(finished, tiny_cache, tmp_path,
                                                                                    dotted):
    run, _ = _copy(finished, tmp_path)
    first = yaml.safe_load((run / "manifest.json").read_text())
    stamps = _stamps(run)
    value = _changed_values(tmp_path, tiny_cache)[dotted]
    values = _set(tiny_overrides(run), dotted, value)
    if dotted == "output":  # the run directory moved: the copy is used from its new place
        shutil.move(run, value)
        stamps = {type(p)(str(p).replace(str(run), value)): t for p, t in stamps.items()}
        run = type(run)(value)
    result = distill(load_config(overrides=values), cache_dir=tiny_cache)
    manifest = result.manifest
    assert _stamps(run) == stamps  # nothing recomputed...
    for stage in manifest["stages"]:  # ...so each stage still names the settings that computed it
        assert manifest["stages"][stage]["computed_with"] == first["stages"][stage]["computed_with"], stage
        for name in RECORDED_SETTINGS[stage]:
            recorded = [r[name] for r in manifest["stages"][stage]["computed_with"]]
            section, leaf = name.split(".")
            assert recorded == [first["config"][section][leaf]], (stage, name)
    # the dataset holds what the manifest says
    assert sorted(set(result.dataset["label"])) == manifest["source"]["classes"]
    assert manifest["counts"]["classes"] == len(manifest["source"]["classes"])
    assert manifest["stages_done"] == first["stages_done"]


def test_a_stage_command_that_invalidates_the_images_removes_the_stale_dataset(finished, tiny_cache, tmp_path):
    run, _ = _copy(finished, tmp_path)
    distill(load_config(overrides=tiny_overrides(run, text={"top_k": 2})), stages=("caption", "prototypes", "text"),
            cache_dir=tiny_cache)
    manifest = yaml.safe_load((run / "manifest.json").read_text())
    assert "generate" not in manifest["stages_done"]
    assert not (run / "dataset").exists() and not (run / "preview.png").exists()
