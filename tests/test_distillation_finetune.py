"""Fine-tuning inside `distill` (VLCP step 2) and per-dataset settings derived from the source, on the tiny preset."""

import json
import os
import shutil
import signal
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
import yaml
from helpers import image_folder, tiny_overrides, wait_for

from vldd.cli.commands import build_parser, config_from_args, main
from vldd.configs.distill import load_config
from vldd.jobs.distill import NOT_FINETUNED, distill
from vldd.models.registry import resolve_model

# Three optimizer steps (one epoch of 24 pairs in batches of 8), a resumable checkpoint after each.
TUNE = {"enabled": True, "max_train_steps": 3, "checkpointing_steps": 1}


def _images(dataset):
    return [np.asarray(im) for im in dataset["image"]]


def _stamps(root, pattern="*"):
    return {p: p.stat().st_mtime_ns for p in root.rglob(pattern) if p.is_file()}


@pytest.fixture(scope="module")
def tuned(tiny_cache, tmp_path_factory):
    """An uninterrupted tiny run that fine-tunes for 3 steps before generating."""
    out = tmp_path_factory.mktemp("tuned")
    return distill(load_config(overrides=tiny_overrides(out, finetune=TUNE)), cache_dir=tiny_cache)


@pytest.fixture(scope="module")
def untuned(tiny_cache, tmp_path_factory):
    """The same run with fine-tuning asked for in the config and turned off by `--no-finetune` (D4M-style)."""
    out = tmp_path_factory.mktemp("untuned")
    config = out / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(out / "run", finetune=TUNE)))
    assert main(["distill", "--config", str(config), "--no-finetune", "--cache-dir", str(tiny_cache), "--quiet"]) == 0
    return datasets.load_from_disk(str(out / "run" / "dataset")), out / "run"


def test_distill_fine_tunes_then_generates_with_the_fine_tuned_model(tuned, untuned):
    run, manifest = tuned.run_dir, tuned.manifest
    model = run / "finetune" / "seed0"
    assert (model / "finetune.json").is_file() and (model / "unet").is_dir()
    assert sorted(p.name for p in (model / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert [json.loads(line)["step"] for line in (model / "losses.jsonl").read_text().splitlines()] == [1, 2, 3]
    ft = manifest["finetune"]
    assert ft["used"] is True and ft["model"] == "finetune/seed0" and ft["global_step"] == 3 and ft["seed"] == 0
    assert ft["resolution"] == 64 and ft["base_model"] == "tiny://stable-diffusion"
    assert manifest["models"]["fine-tuning"]["id"].startswith("finetune/seed0 (full fine-tune of tiny://")
    assert manifest["stages_done"] == ["caption", "finetune", "prototypes", "text", "generate"]
    assert "finetune" in manifest["timings"]
    # The fine-tuned model kept the base's VAE: same prototypes and prompts as the untuned run, other images.
    reference, untuned_run = untuned
    other = json.loads((untuned_run / "manifest.json").read_text())
    assert manifest["fingerprints"]["prototypes"] == other["fingerprints"]["prototypes"]
    assert manifest["fingerprints"]["generate"] != other["fingerprints"]["generate"]
    for label in (0, 4):
        a, b = (torch.load(r / "work" / "prototypes" / f"{label:06d}.pt", weights_only=True)["centers"]
                for r in (run, untuned_run))
        assert torch.equal(a, b)
    assert tuned.dataset["prompt"] == reference["prompt"]
    assert not any(np.array_equal(a, b) for a, b in zip(_images(tuned.dataset), _images(reference)))


def test_no_finetune_generates_with_the_base_model_and_says_so(untuned):
    _, run = untuned
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["finetune"] == {"used": False, "note": NOT_FINETUNED}
    assert manifest["models"]["fine-tuning"]["id"] == "not fine-tuned (D4M-style)"
    assert manifest["config"]["finetune"]["enabled"] is False
    assert yaml.safe_load((run / "config.yaml").read_text())["finetune"]["enabled"] is False
    assert "finetune" not in manifest["stages_done"] and not (run / "finetune").exists()


def test_no_finetune_flag_and_presets():
    parse = lambda *argv: config_from_args(build_parser().parse_args(["distill", *argv]))  # noqa: E731
    assert parse().finetune.enabled is True  # the paper preset fine-tunes
    assert parse("--no-finetune").finetune.enabled is False
    assert parse("--finetune.enabled", "false").finetune.enabled is False
    assert parse("--preset", "tiny").finetune.enabled is False
    tiny = parse("--preset", "tiny", "--finetune.enabled", "true", "--finetune.max_train_steps", "3").finetune
    assert tiny.enabled is True and tiny.max_train_steps == 3 and tiny.resolution == 64


def test_rerun_reuses_the_finished_model(tuned, tiny_cache):
    stamps = _stamps(tuned.run_dir / "finetune") | _stamps(tuned.run_dir / "work")
    again = distill(load_config(overrides=tiny_overrides(tuned.run_dir, finetune=TUNE)), cache_dir=tiny_cache)
    assert _stamps(tuned.run_dir / "finetune") | _stamps(tuned.run_dir / "work") == stamps
    assert all(np.array_equal(a, b) for a, b in zip(_images(tuned.dataset), _images(again.dataset)))


def test_more_finetune_steps_regenerate_images_but_keep_latents(tuned, tiny_cache, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tuned.run_dir, out)
    kept = {stage: _stamps(out / "work" / stage, "0*") for stage in ("caption", "prototypes", "text")}
    generated = _stamps(out / "work" / "generate", "*.png")
    result = distill(load_config(overrides=tiny_overrides(out, finetune={**TUNE, "max_train_steps": 4})),
                     cache_dir=tiny_cache)
    for stage, stamps in kept.items():  # no latent re-encoded, no k-means, no text prototype redone
        assert stamps and _stamps(out / "work" / stage, "0*") == stamps, stage
    assert generated and all(p.stat().st_mtime_ns != t for p, t in generated.items() if p.exists())
    assert result.manifest["finetune"]["global_step"] == 4
    assert result.dataset["prompt"] == tuned.dataset["prompt"]
    assert not any(np.array_equal(a, b) for a, b in zip(_images(tuned.dataset), _images(result.dataset)))


@pytest.mark.slow  # a subprocess run of the CLI
def test_sigkill_during_finetuning_then_rerun_gives_the_same_dataset(tuned, tiny_cache, tmp_path):
    out = tmp_path / "killed"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(out, finetune=TUNE)))
    command = [sys.executable, "-m", "vldd.cli.commands", "distill", "--config", str(config), "--cache-dir", str(tiny_cache),
               "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as here: CPU training is then bitwise reproducible
    model = out / "finetune" / "seed0"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reached = wait_for((model / "checkpoints" / "checkpoint-1").exists, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert reached, "the run ended before the first fine-tuning checkpoint appeared"
    assert not (model / "finetune.json").exists() and not (out / "work" / "generate" / "000000").exists()
    first = (model / "checkpoints" / "checkpoint-1" / "vldd_step.json").stat().st_mtime_ns

    distill(load_config(config), cache_dir=tiny_cache)  # the rerun, here (one thread too)
    # resumed, not restarted: a fresh start would have deleted and rewritten checkpoint-1
    assert (model / "checkpoints" / "checkpoint-1" / "vldd_step.json").stat().st_mtime_ns == first
    resumed = datasets.load_from_disk(str(out / "dataset"))
    assert resumed["prompt"] == tuned.dataset["prompt"]
    assert all(np.array_equal(a, b) for a, b in zip(_images(resumed), _images(tuned.dataset)))
    losses = [json.loads(line)["loss"] for line in (model / "losses.jsonl").read_text().splitlines()]
    reference = [json.loads(line)["loss"] for line in
                 (tuned.run_dir / "finetune" / "seed0" / "losses.jsonl").read_text().splitlines()]
    assert losses == reference


def test_a_given_diffusion_model_is_used_as_is(untuned, tiny_cache, tmp_path):
    # The tiny model's own directory: the same weights under another id, so no fine-tuning, the same VAE fingerprint.
    path = resolve_model("tiny://stable-diffusion", tiny_cache)
    result = distill(load_config(overrides=tiny_overrides(tmp_path, finetune=TUNE, generation={"model": path})),
                     cache_dir=tiny_cache)
    reference, untuned_run = untuned
    assert not (tmp_path / "finetune").exists()
    assert result.manifest["finetune"]["used"] is False and "used as is" in result.manifest["finetune"]["note"]
    other = json.loads((untuned_run / "manifest.json").read_text())
    assert result.manifest["fingerprints"]["prototypes"] == other["fingerprints"]["prototypes"]
    assert all(np.array_equal(a, b) for a, b in zip(_images(result.dataset), _images(reference)))


def test_generating_needs_the_finished_fine_tuned_model(tiny_cache, tmp_path):
    overrides = tiny_overrides(tmp_path, finetune=TUNE)
    with pytest.raises(ValueError, match=r"generation needs this run's fine-tuned model .*\(--no-finetune\)"):
        distill(load_config(overrides=overrides), stages=("generate",), cache_dir=tiny_cache)


# --- per-dataset settings derived from the source ------------------------------------------------------------------

def derived_evidence(dataset, classes):
    if classes == 1000:
        return ["1000 classes, as ImageNet-1K"]
    if "imagenette" in dataset:
        return ["no CIFAR-10/100, Tiny-ImageNet or ImageNet-1K signature in the names, class count or image size",
                f"{classes} classes"]
    return [f"the name {dataset!r} reads as {dataset.split('/')[-1]}", f"{classes} classes"]


@pytest.mark.parametrize("dataset, classes, expected", [
    ("uoft-cs/cifar10", 10, {"family": "cifar10", "generation.output_size": 32, "prototypes.contamination": 0.0,
                             "text.common_threshold": 0.3, "finetune.resolution": 32, "evaluation.image_size": 32}),
    ("uoft-cs/cifar100", 100, {"family": "cifar100", "generation.output_size": 32, "prototypes.contamination": 0.0,
                               "text.common_threshold": 0.2, "finetune.resolution": 32, "evaluation.image_size": 32}),
    ("frgfm/imagenette", 10, {"family": "imagenet-subset", "generation.output_size": 256,
                              "prototypes.contamination": 0.1, "text.common_threshold": 0.7,
                              "finetune.resolution": 512, "evaluation.image_size": 224}),
    ("/data/train", 1000, {"family": "imagenet-1k", "generation.output_size": 224, "prototypes.contamination": 0.1,
                           "text.common_threshold": 0.7, "finetune.resolution": 512, "evaluation.image_size": 224}),
])
def test_unset_settings_are_derived_from_the_source(dataset, classes, expected):
    config = load_config(overrides={"data": {"dataset": dataset}})
    from vldd.configs.profiles import recognise

    resolved, derived = config.resolve(recognise(dataset, num_classes=classes))  # no content: name and class count
    assert derived.pop("profile") == {"family": expected["family"], "source": {1000: "content"}.get(classes, "default" if "imagenette" in dataset else "name"),
                                      "evidence": derived_evidence(dataset, classes), "image_side": None,
                                      "warnings": []}
    assert derived == expected
    assert (resolved.generation.output_size, resolved.prototypes.contamination, resolved.text.common_threshold,
            resolved.finetune.resolution) == tuple(expected[k] for k in (
                "generation.output_size", "prototypes.contamination", "text.common_threshold", "finetune.resolution"))
    assert config.generation.output_size is None  # the user's config is left as given


def test_explicit_values_win_over_derived_ones():
    config = load_config(overrides={"data": {"dataset": "uoft-cs/cifar10"}, "generation": {"output_size": 64},
                                    "prototypes": {"contamination": 0.2}})
    resolved, derived = config.resolve()
    assert resolved.generation.output_size == 64 and resolved.prototypes.contamination == 0.2
    assert resolved.text.common_threshold == 0.3
    assert "generation.output_size" not in derived and "prototypes.contamination" not in derived
    tiny = load_config(overrides={"preset": "tiny", "data": {"dataset": "uoft-cs/cifar10"}})
    assert tiny.resolve()[0].generation.output_size == 64  # the tiny preset's explicit 64


def test_a_cifar_named_source_distills_with_the_cifar_settings(tiny_cache, tmp_path):
    image_folder(tmp_path / "my_cifar10", ["cat", "dog"], size=32)
    overrides = tiny_overrides(tmp_path / "run", ipc=6, data={"dataset": str(tmp_path / "my_cifar10"), "classes": None,
                                                              "max_images_per_class": None},
                               generation={"output_size": None}, text={"common_threshold": None})
    result = distill(load_config(overrides=overrides), cache_dir=tiny_cache)
    profile = result.manifest["derived"].pop("profile")
    assert (profile["family"], profile["source"], profile["image_side"], profile["warnings"]) == (
        "cifar10", "name", 32, [])  # 2 classes named cat and dog: only the path says CIFAR-10
    assert result.manifest["derived"] == {"family": "cifar10", "generation.output_size": 32,
                                          "prototypes.contamination": 0.0, "text.common_threshold": 0.3,
                                          "evaluation.image_size": 32}  # the tiny preset sets finetune.resolution
    assert result.dataset[0]["image"].size == (32, 32)
    assert result.dataset.num_rows == 12  # contamination 0: no outlier dropped, 6 clusters from 6 images
    assert result.manifest["counts"]["outliers_per_class"] == {"cat": 0, "dog": 0}
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["generation"]["output_size"] is None and saved["text"]["common_threshold"] is None  # as given
    assert result.manifest["config"]["generation"]["output_size"] == 32  # the values used
    assert result.manifest["config"]["text"]["common_threshold"] == 0.3


def test_vae_fingerprint_follows_the_weights_not_the_id(tuned, tiny_cache, tmp_path):
    from safetensors.torch import load_file, save_file

    from vldd.jobs.distill import vae_fingerprint

    base = vae_fingerprint("tiny://stable-diffusion", cache_dir=tiny_cache)
    tuned_model = tuned.run_dir / "finetune" / "seed0"
    assert vae_fingerprint(str(tuned_model)) == base  # saved again by the fine-tuning: same tensors, same name
    copy = tmp_path / "other"
    shutil.copytree(tuned_model / "vae", copy / "vae")
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = sorted(state)[0]
    state[key] = state[key] + 1e-3
    save_file(state, weights)
    assert vae_fingerprint(str(copy)) != base
    (tmp_path / "no_vae").mkdir()
    with pytest.raises(ValueError, match="has no vae/config.json"):
        vae_fingerprint(str(tmp_path / "no_vae"))


@pytest.mark.slow
def test_two_processes_fine_tune_together_and_finish(tuned, tiny_cache, tmp_path):
    out = tmp_path / "sharded"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(out, finetune=TUNE)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vldd.cli.commands",
               "distill", "--config", str(config), "--cache-dir", str(tiny_cache), "--quiet", "--device", "cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)  # a deadlock times out
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["finetune"]["global_step"] == 3
    # Data parallel: each process takes its half of the 24 pairs in micro-batches of 8, so an epoch is 2 optimizer
    # steps (1 epoch of 3 steps with one process) and the 3 steps span 2 epochs.
    assert manifest["finetune"]["epochs"] == 2 and tuned.manifest["finetune"]["epochs"] == 1
    assert manifest["fingerprints"]["prototypes"] == tuned.manifest["fingerprints"]["prototypes"]
    assert datasets.load_from_disk(str(out / "dataset"))["prompt"] == tuned.dataset["prompt"]


def test_dataset_card_names_the_fine_tuned_model_or_says_none_was(tuned, untuned):
    from vldd.hub.cards import PublishedRun, render_dataset_card
    from vldd.hub.push import public_manifest

    runs = [PublishedRun("ipc3-seed0", public_manifest(tuned.manifest), 6),
            PublishedRun("ipc3-seed0-d4m", public_manifest(json.loads((untuned[1] / "manifest.json").read_text())), 6)]
    card = render_dataset_card(runs, "alice/sample-vldd-ipc3", default_config="ipc3-seed0")
    tuned_row = "`finetune/seed0 (full fine-tune of tiny://stable-diffusion, 3 steps at 64 px, seed 0)`"
    assert f"| fine-tuning | {tuned_row} |" in card
    assert "| fine-tuning | `not fine-tuned (D4M-style)` |" in card


def test_finetune_settings_take_the_recipe_the_source_and_the_dtype(tmp_path):
    from vldd.jobs.finetune import finetune_settings

    def settings(dtype=torch.float16, **overrides):
        config, _ = load_config(overrides={"output": str(tmp_path), **overrides}).resolve()
        return finetune_settings(config, tmp_path, dtype)

    paper = settings(data={"dataset": "frgfm/imagenette"})
    assert (paper.resolution, paper.num_train_epochs, paper.train_batch_size, paper.gradient_accumulation_steps,
            paper.learning_rate, paper.use_ema, paper.mixed_precision) == (512, 8, 32, 4, 1e-5, True, "fp16")
    assert paper.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5" and paper.seed == 0
    assert paper.output == str(tmp_path / "finetune" / "seed0") and paper.captions == str(tmp_path)
    assert settings(data={"dataset": "uoft-cs/cifar10"}).resolution == 32
    assert settings(seed=2).output == str(tmp_path / "finetune" / "seed2")
    assert settings(torch.float32).mixed_precision == "no" and settings(torch.bfloat16).mixed_precision == "bf16"
    mine = settings(finetune={"max_train_steps": 100, "lora": True, "learning_rate": 1e-4, "mixed_precision": "bf16",
                              "resolution": 256, "base_model": "my/sd-mirror"})
    assert (mine.max_train_steps, mine.lora, mine.learning_rate, mine.mixed_precision, mine.resolution,
            mine.base_model) == (100, True, 1e-4, "bf16", 256, "my/sd-mirror")
    assert settings(finetune={"enabled": False}) is None
    assert settings(generation={"model": "someone/finetuned-sd"}) is None  # a given model is used as is
    assert settings(generation={"lora": "someone/sd-lora"}) is None
