"""Fine-tuning (VLCP step 2) on the tiny Stable Diffusion: loss, kill-and-resume, EMA, LoRA, generation, card, Hub."""

import json
import multiprocessing
import os
import shutil
import signal
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vldd.hub.cards import render_model_card
from vldd.hub.push import push_model
from vldd.jobs.finetune import (
    LORA_CHECKPOINT,
    LORA_WEIGHTS,
    FinetuneConfig,
    epoch_batches,
    finetune,
    finetune_config,
    latest_checkpoint,
)
from vldd.stages.generate import generate_images, load_pipeline

TINY = "tiny://stable-diffusion"
# One fixed batch of 4 pairs at 32 px (4x4 latents) and a high learning rate: the loss moves within a few dozen steps.
SMALL = {"resolution": 32, "train_batch_size": 4, "max_train_samples": 4, "learning_rate": 1e-3}
CLI_SMALL = ["--resolution", "32", "--train-batch-size", "4", "--max-train-samples", "4", "--learning-rate", "1e-3"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as `vldd distill` leaves it: captions of 40 sample images and a manifest naming the source."""
    from vldd.data.sample import SAMPLE_CLASSES
    from vldd.stages.caption import captions_dataset

    run = tmp_path_factory.mktemp("run")
    rows = list(range(40))
    labels = [r % len(SAMPLE_CLASSES) for r in rows]  # the sample set interleaves its classes
    captions = [f"a bright {SAMPLE_CLASSES[label]} on a dark background, seen from above" for label in labels]
    captions_dataset(rows, labels, captions, ["describe it"] * 40, "tiny://llava", SAMPLE_CLASSES).save_to_disk(
        str(run / "captions"))
    manifest = {"source": {"dataset": "sample", "split": "train", "config_name": None, "license": "mit"},
                "models": {"captioner": {"id": "tiny://llava"}}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def _config(run_dir, output, **values) -> FinetuneConfig:
    return finetune_config("tiny", captions=str(run_dir), output=str(output), **{**SMALL, **values})


@pytest.fixture(scope="module")
def full(run_dir, tiny_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return finetune(_config(run_dir, out, max_train_steps=30, checkpointing_steps=5), cache_dir=tiny_cache)


@pytest.fixture(scope="module")
def lora(run_dir, tiny_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    # Gradient checkpointing on here (the tiny preset turns it off): the recipe's memory saver runs on CPU too.
    return finetune(_config(run_dir, out, lora=True, max_train_steps=10, checkpointing_steps=5,
                            gradient_checkpointing=True), cache_dir=tiny_cache)


def _image(pipe) -> np.ndarray:
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    image = generate_images(pipe, latents, ["a bright circle on a dark background"], seeds=[0], strength=1.0,
                            num_inference_steps=3)[0]
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def base_image(tiny_cache):
    return _image(load_pipeline(TINY, cache_dir=tiny_cache))


# --- config --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, message", [
    ({"resolution": 60}, "`resolution` must be a positive multiple of 8 pixels, got 60"),
    ({"mixed_precision": "fp8"}, "got 'fp8'"),
    ({"gradient_accumulation_steps": 0}, "`gradient_accumulation_steps` must be an integer >= 1, got 0"),
    ({"lr_scheduler": "wavy"}, "got 'wavy'"),
    ({"ema_decay": 1.5}, "`ema_decay` must be in [0.0, 1.0], got 1.5"),
    ({"captions": ""}, "`captions` must be"),
])
def test_bad_settings_are_named(values, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        FinetuneConfig(**{"captions": "runs/x", **values})


def test_paper_defaults():
    c = FinetuneConfig(captions="runs/x")
    assert (c.resolution, c.center_crop, c.random_flip, c.use_ema, c.mixed_precision, c.gradient_checkpointing,
            c.learning_rate, c.lr_scheduler, c.lr_warmup_steps, c.max_grad_norm, c.num_train_epochs,
            c.train_batch_size, c.gradient_accumulation_steps) == (
        512, True, True, True, "fp16", True, 1e-5, "constant", 0, 1.0, 8, 32, 4)


def test_fp16_on_cpu_is_refused_with_a_way_out(run_dir, tiny_cache, tmp_path):
    with pytest.raises(ValueError, match="'fp16'.*needs a CUDA GPU; on CPU use 'no' or 'bf16'"):
        finetune(_config(run_dir, tmp_path, mixed_precision="fp16", max_train_steps=1), cache_dir=tiny_cache)


def test_epoch_batches_shard_every_pair_once_per_epoch():
    one = [k for b in epoch_batches(10, epoch=3, seed=0, batch_size=4) for k in b]
    shards = [[k for b in epoch_batches(10, epoch=3, seed=0, batch_size=2, process_index=r, num_processes=3)
               for k in b] for r in range(3)]
    assert sorted(k[0] for k in one) == list(range(10))
    assert {len(s) for s in shards} == {4}  # padded to 12 so every process runs as many steps
    assert {k[0] for s in shards for k in s} == set(range(10))
    assert one == [k for b in epoch_batches(10, epoch=3, seed=0, batch_size=4) for k in b]
    assert one != [k for b in epoch_batches(10, epoch=4, seed=0, batch_size=4) for k in b]


# --- full fine-tuning ----------------------------------------------------------------------------------------------

def test_a_few_dozen_steps_lower_the_training_loss(full):
    assert full.global_step == 30 and len(full.losses) == 30
    first, last = np.mean(full.losses[:5]), np.mean(full.losses[-5:])
    assert last < 0.8 * first, (first, last)
    logged = [json.loads(line) for line in (full.output / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 31))
    assert [r["loss"] for r in logged] == full.losses


def test_ema_weights_differ_from_the_raw_weights(full, tiny_cache):
    from vldd.models.registry import resolve_model

    raw = load_file(full.output / "checkpoints" / "checkpoint-30" / "model.safetensors")  # the raw UNet at step 30
    ema = load_file(full.output / "unet" / "diffusion_pytorch_model.safetensors")  # what the output holds
    base = load_file(f"{resolve_model(TINY, tiny_cache)}/unet/diffusion_pytorch_model.safetensors")
    assert raw.keys() == ema.keys() == base.keys()
    assert max((raw[k] - ema[k]).abs().max() for k in raw) > 1e-4
    assert max((base[k] - ema[k]).abs().max() for k in raw) > 1e-4


def test_full_output_loads_for_generation_and_changes_the_images(full, base_image):
    tuned = _image(load_pipeline(str(full.output)))  # what `vldd generate --diffusion-model DIR` calls
    assert tuned.shape == base_image.shape
    assert np.abs(tuned - base_image).max() > 0


def _cli(argv: list[str]) -> None:
    from vldd.cli.commands import main

    os._exit(main(argv))


@pytest.mark.slow  # a subprocess run of the CLI
def test_a_killed_run_resumes_at_its_checkpoint_with_identical_losses(full, run_dir, tiny_cache, tmp_path):
    out = tmp_path / "killed"
    # The same run as `full`, asked for 1000 steps through the CLI in a child process that is killed (SIGKILL) once a
    # checkpoint exists. Forked, so the child starts with everything imported.
    argv = ["finetune", str(run_dir), "--preset", "tiny", "--output", str(out), "--cache-dir", str(tiny_cache),
            "--checkpointing-steps", "5", "--max-train-steps", "1000", "--quiet", *CLI_SMALL]
    child = multiprocessing.get_context("fork").Process(target=_cli, args=(argv,))
    child.start()
    deadline = time.monotonic() + 240
    while latest_checkpoint(out) is None:
        assert child.exitcode is None, f"the child exited early with {child.exitcode}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    step = latest_checkpoint(out)[0]
    assert step % 5 == 0 and step < 30, step

    resumed = finetune(_config(run_dir, out, max_train_steps=30, checkpointing_steps=5), cache_dir=tiny_cache)
    assert resumed.resumed_from == step
    assert resumed.losses == full.losses  # steps up to the checkpoint from the log, the rest recomputed: identical
    logged = [json.loads(line)["step"] for line in (out / "losses.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 31))
    a = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(full.output / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_with_other_settings_is_refused(full, run_dir, tiny_cache, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(full.output, out)
    with pytest.raises(ValueError, match=r"other settings \(learning_rate: 0.001 -> 0.0005\)"):
        finetune(_config(run_dir, out, max_train_steps=30, learning_rate=5e-4), cache_dir=tiny_cache)


# --- LoRA ----------------------------------------------------------------------------------------------------------

def test_lora_output_is_far_smaller_than_the_full_model(lora, full):
    full_model = sum(f.stat().st_size for d in ("unet", "vae", "text_encoder") for f in (full.output / d).iterdir())
    lora_file = (lora.output / LORA_WEIGHTS).stat().st_size
    assert lora.weights_bytes == lora_file
    assert lora_file * 10 < full.weights_bytes  # vs the full UNet alone
    assert lora_file * 100 < full_model  # vs the full pipeline's weights
    assert not (lora.output / "unet").exists()
    checkpoint = latest_checkpoint(lora.output)[1]
    assert (checkpoint / LORA_CHECKPOINT).is_file() and not (checkpoint / "model.safetensors").exists()


def test_lora_output_loads_for_generation_and_changes_the_images(lora, tiny_cache, base_image):
    pipe = load_pipeline(TINY, cache_dir=tiny_cache, lora=str(lora.output))  # `vldd generate --lora DIR`
    assert np.abs(_image(pipe) - base_image).max() > 0


def test_lora_run_resumes_with_identical_losses(lora, run_dir, tiny_cache, tmp_path):
    out = tmp_path / "lora"
    shutil.copytree(lora.output, out)
    shutil.rmtree(out / "checkpoints" / "checkpoint-10")  # as if killed after step 5's checkpoint
    resumed = finetune(_config(run_dir, out, lora=True, max_train_steps=10, checkpointing_steps=5,
                               gradient_checkpointing=True), cache_dir=tiny_cache)
    assert resumed.resumed_from == 5
    assert resumed.losses == lora.losses
    a, b = load_file(out / LORA_WEIGHTS), load_file(lora.output / LORA_WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- card, CLI, Hub ------------------------------------------------------------------------------------------------

def test_model_card_names_base_data_captioner_and_every_setting(full, tmp_path):
    summary = json.loads((full.output / "finetune.json").read_text())
    assert str(tmp_path.parent) not in json.dumps(summary)  # no machine paths
    summary = {**summary, "base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "tiny": False,
               "data": {**summary["data"], "dataset": "frgfm/imagenette", "captioner": "llava-hf/llava-1.5-7b-hf"}}
    card = render_model_card(summary, repo_id="someone/imagenette-sd")
    assert "base_model: stable-diffusion-v1-5/stable-diffusion-v1-5" in card
    assert "license: creativeml-openrail-m" in card and "- frgfm/imagenette" in card
    assert "`llava-hf/llava-1.5-7b-hf`" in card and "--diffusion-model someone/imagenette-sd" in card
    for key in ("resolution", "center_crop", "random_flip", "use_ema", "mixed_precision", "gradient_checkpointing",
                "learning_rate", "lr_scheduler", "max_grad_norm", "train_batch_size", "gradient_accumulation_steps",
                "seed"):
        assert f"| `{key}` |" in card
    assert "| `learning_rate` | `0.001` |" in card


def test_cli_needs_captions(capsys):
    from vldd.cli.commands import main

    assert main(["finetune", "--preset", "tiny", "--output", "x"]) == 2
    assert "give the captions" in capsys.readouterr().err


def test_generate_accepts_a_finetuned_model_and_a_lora():
    from vldd.cli.commands import build_parser, config_from_args

    args = build_parser().parse_args(["generate", "--output", "runs/x", "--diffusion-model", "models/ft",
                                      "--lora", "user/lora"])
    config = config_from_args(args)
    assert (config.generation.model, config.generation.lora) == ("models/ft", "user/lora")


def test_push_uploads_the_model_and_card_and_generation_loads_it(lora, hub_server, tiny_cache, monkeypatch):
    import diffusers.loaders.lora_base

    # hub_fixtures points huggingface_hub and datasets at the test Hub; diffusers copied the offline flag at import.
    monkeypatch.setattr(diffusers.loaders.lora_base, "HF_HUB_OFFLINE", False)
    repo = push_model(lora.output, "tiny-lora", token=hub_server.token)
    assert repo == "tester/tiny-lora"
    files = hub_server.server.files(repo, repo_type="model")
    assert {LORA_WEIGHTS, "README.md", "finetune.json", "losses.jsonl"} <= set(files)
    assert not any(path.startswith("checkpoints/") for path in files)
    assert "--lora tester/tiny-lora" in files["README.md"].decode()
    pipe = load_pipeline(TINY, cache_dir=tiny_cache, lora=repo)  # `vldd generate --lora HUB_ID`
    local = load_pipeline(TINY, cache_dir=tiny_cache, lora=str(lora.output))
    assert np.array_equal(_image(pipe), _image(local))
