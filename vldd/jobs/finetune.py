"""Fine-tuning Stable Diffusion on the (image, caption) pairs (docs/method.md, "2. Fine-tuning"), full or LoRA.

The paper runs diffusers' text-to-image recipe on every captioned training image: 512 px, center crop, random flip,
EMA, fp16 mixed precision, gradient checkpointing, AdamW at a constant 1e-5, gradient norm clipped at 1, 8 epochs of
batch 32 x gradient accumulation 4, the DDPM noise-prediction MSE (v-prediction when the scheduler says so), VAE and
text encoder frozen, captions truncated to CLIP's 77 tokens. This module runs that recipe with stock classes
(`UNet2DConditionModel`, `DDPMScheduler`, `EMAModel`, `StableDiffusionPipeline`), `accelerate` for devices, precision
and data parallelism, and `peft` for LoRA on the UNet's attention projections.

Everything random comes from generators seeded by (seed, epoch, micro-batch, process): the data order, flips and
crops, the VAE sample, the noise and the timesteps. A run killed after a checkpoint and resumed therefore continues
with exactly the losses the uninterrupted run would have had.

Layout of the output directory::

    OUTPUT/
      model_index.json, unet/, vae/, ...   the fine-tuned pipeline (full fine-tuning; EMA weights when use_ema)
      pytorch_lora_weights.safetensors     the UNet LoRA adapter instead (lora=True)
      README.md                            model card: base model, data, captioner, every hyperparameter
      finetune.json                        config, data, steps, losses and versions; written last
      losses.jsonl                         one line per optimizer step: step, epoch, loss, lr
      checkpoints/checkpoint-<step>/       resumable states (model, optimizer, scheduler, EMA)

Example:
    >>> result = finetune(FinetuneConfig(captions="runs/imagenette", output="models/imagenette-sd-seed0"))
    >>> pipe = load_pipeline("models/imagenette-sd-seed0")  # vldd.stages.generate; LoRA: load_pipeline(base, lora=...)
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import __version__
from ..configs.base import check
from ..configs.finetune import PRESETS, RESUMABLE_CHANGES, STAGE_SETTINGS, FinetuneConfig, finetune_config
from ..core import seeding
from ..core.devices import hub_kernels_allowed
from ..hub.cards import MODEL_SUMMARY, render_model_card

if TYPE_CHECKING:
    from ..configs.distill import DistillConfig
from ..core.provenance import public_name, versions
from ..core.runs import read_json, write_json, write_text

logger = logging.getLogger(__name__)

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the UNet attention projections (diffusers' LoRA recipe)
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
LORA_CHECKPOINT = "unet_lora.safetensors"  # a LoRA run's checkpoints hold the adapter only (peft's key names)
SUMMARY = MODEL_SUMMARY
LOSSES = "losses.jsonl"


@dataclass
class FinetuneResult:
    """What a fine-tuning call produced."""

    output: Path
    lora: bool
    base_model: str  # what it was trained from (a LoRA adapter is applied to it)
    global_step: int  # optimizer steps done in total, this call and the ones it resumed
    total_steps: int  # optimizer steps the run was asked for
    epochs: int  # epochs the run spans
    resumed_from: int | None  # the checkpoint step this call continued from; None = started fresh
    losses: list[float] = field(default_factory=list)  # per-step training loss of every step, from step 1
    weights_bytes: int = 0  # size of the saved weights (the UNet, or the LoRA adapter)
    hub_repo: str | None = None  # the model repository it was pushed to


# --- data ----------------------------------------------------------------------------------------------------------

def epoch_batches(n: int, *, epoch: int, seed: int, batch_size: int, process_index: int = 0,
                  num_processes: int = 1) -> list[list[tuple[int, bool, float, float]]]:
    """This process's micro-batches of one epoch: keys (pair index, flip, crop u, crop v), seeded by (seed, epoch).

    The epoch's permutation is padded (wrapping around, as `DistributedSampler`) to a multiple of the process count
    and dealt out round-robin, so every process runs the same number of micro-batches.
    """
    g = seeding.generator(seed, seeding.FINETUNE_ORDER, epoch)
    order = torch.randperm(n, generator=g).tolist()
    flips = (torch.rand(n, generator=g) < 0.5).tolist()
    crops = torch.rand(n, 2, generator=g).tolist()
    order += order[: (-len(order)) % num_processes]
    mine = order[process_index::num_processes]
    keys = [(i, flips[i], crops[i][0], crops[i][1]) for i in mine]
    return [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]


class PairDataset(torch.utils.data.Dataset):
    """(image, caption) pairs: images read from the source by row, transformed as the recipe says, captions tokenized.

    Items are addressed by the keys `epoch_batches` makes, which carry each item's flip and crop draws.
    """

    def __init__(self, images, image_column: str, rows: list[int], captions: list[str], tokenizer, *,
                 resolution: int, center_crop: bool, random_flip: bool):
        self.images, self.image_column, self.rows, self.captions = images, image_column, rows, captions
        self.tokenizer = tokenizer
        self.resolution, self.center_crop, self.random_flip = resolution, center_crop, random_flip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, bool, float, float]) -> dict[str, torch.Tensor]:
        import torchvision.transforms.v2.functional as TF

        from ..data.sources import decode_image

        i, flip, u, v = key
        image = decode_image(self.images[self.rows[i]][self.image_column])
        image = TF.resize(image, self.resolution, interpolation=TF.InterpolationMode.BILINEAR)
        if self.center_crop:
            image = TF.center_crop(image, [self.resolution, self.resolution])
        else:
            top, left = round(u * (image.height - self.resolution)), round(v * (image.width - self.resolution))
            image = TF.crop(image, top, left, self.resolution, self.resolution)
        if self.random_flip and flip:
            image = TF.horizontal_flip(image)
        pixels = TF.to_dtype(TF.to_image(image), torch.float32, scale=True) * 2.0 - 1.0
        # Captions truncated to CLIP's 77 tokens, as the paper trained (generation, by contrast, never truncates).
        ids = self.tokenizer(self.captions[i], max_length=self.tokenizer.model_max_length, padding="max_length",
                             truncation=True, return_tensors="pt").input_ids[0]
        return {"pixel_values": pixels, "input_ids": ids}


def _hub_manifest(repo_id: str) -> dict[str, Any]:
    """The manifest a published captions repository carries (vldd/captions/manifest.json), or {}."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(repo_id, "vldd/captions/manifest.json", repo_type="dataset")).read_text())
    except EntryNotFoundError as err:  # not a vldd repository (or offline, uncached): the caller asks for --dataset
        logger.debug("no vldd manifest in %s: %s", repo_id, err)
        return {}


def load_pairs(config: FinetuneConfig, tokenizer) -> tuple[PairDataset, dict[str, Any]]:
    """Reads the captions and opens their source dataset.

    Returns:
        (the pairs, a description of the data for the card: source, split, captions, captioner, number of pairs).
    """
    from ..configs.distill import DataConfig
    from ..data.sources import load_source
    from ..hub.captions import load_published_captions

    path = Path(config.captions).expanduser()
    if (path / "manifest.json").is_file():
        manifest = read_json(path / "manifest.json", default={})
    else:
        manifest = {} if path.exists() else _hub_manifest(config.captions)
    captions = load_published_captions(config.captions)
    if config.max_train_samples is not None:
        captions = captions.select(range(min(config.max_train_samples, captions.num_rows)))
    check(captions.num_rows > 0, f"the captions {config.captions!r} hold no rows")
    source = manifest.get("source") or {}
    dataset = config.dataset or source.get("dataset")
    if not dataset:
        raise ValueError(f"the captions {config.captions!r} do not name their source dataset (no vldd manifest); "
                         "pass the source dataset with `dataset` (--dataset)")
    from_manifest = config.dataset is None
    split = config.split or (source.get("split") if from_manifest else None) or "train"
    config_name = config.config_name or (source.get("config_name") if from_manifest else None)
    opened = load_source(DataConfig(
        dataset=dataset, split=split, config_name=config_name, image_column=config.image_column,
        revision=source.get("revision") if from_manifest else None,
        label_column=source.get("label_column") if from_manifest else None))
    rows = captions["source_index"]
    if max(rows) >= opened.dataset.num_rows or min(rows) < 0:
        raise ValueError(f"the captions address source rows up to {max(rows)}, but {dataset!r} split {split!r} has "
                         f"{opened.dataset.num_rows} rows: they were made from another dataset or split")
    captioners = sorted(set(captions["captioner"])) if "captioner" in captions.features else []
    pairs = PairDataset(opened.dataset, opened.image_column, rows, captions["caption"], tokenizer,
                        resolution=config.resolution, center_crop=config.center_crop, random_flip=config.random_flip)
    data = {"dataset": dataset, "config_name": config_name, "split": split, "captions": config.captions,
            "captioner": ", ".join(captioners) or ((manifest.get("models") or {}).get("captioner") or {}).get("id"),
            "num_pairs": len(rows), "num_classes": len(set(captions["label"])),
            "license": source.get("license")}
    return pairs, data


# --- checkpoints ---------------------------------------------------------------------------------------------------

def _checkpoints(output: Path) -> list[tuple[int, Path]]:
    root = output / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return sorted(found)


def latest_checkpoint(output: str | Path) -> tuple[int, Path] | None:
    """(step, directory) of the newest complete checkpoint in OUTPUT/checkpoints, or None."""
    found = _checkpoints(Path(output))
    return found[-1] if found else None


def _save_checkpoint(accelerator, output: Path, step: int, limit: int | None) -> None:
    # Written to a temporary directory and renamed when complete: a run killed mid-save leaves no half checkpoint.
    root = output / "checkpoints"
    tmp, final = root / f".checkpoint-{step}.tmp", root / f"checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        if limit is not None:
            for _, old in _checkpoints(output)[: max(0, len(_checkpoints(output)) - limit + 1)]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / "vldd_step.json", {"step": step})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()


def _training_settings(config: FinetuneConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}


def _check_resumable(output: Path, config: FinetuneConfig) -> None:
    stored = read_json(output / "finetune_config.json")
    if stored is None:
        return
    now = _training_settings(config)
    changed = {k: (stored.get(k), v) for k, v in now.items() if stored.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
        raise ValueError(f"{str(output)!r} holds checkpoints of a run with other settings ({detail}); resume with the "
                         "same settings, pick another output, or pass resume=False (--no-resume) to start over")


def _read_losses(output: Path, up_to: int | None = None) -> list[dict[str, Any]]:
    path = output / LOSSES
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if up_to is None or r["step"] <= up_to]


# --- training ------------------------------------------------------------------------------------------------------

def _load_models(config: FinetuneConfig, path: str):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = {"revision": config.revision}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder",
                                                     use_kernels=hub_kernels_allowed(config.hub_kernels), **kw)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
        noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kw)
    except (OSError, ValueError) as err:
        raise ValueError(f"could not load Stable Diffusion model {config.base_model!r}: {err}") from err
    if config.prediction_type is not None:
        noise_scheduler.register_to_config(prediction_type=config.prediction_type)
    return tokenizer, text_encoder, vae, unet, noise_scheduler


def _add_lora(unet, config: FinetuneConfig) -> None:
    from peft import LoraConfig

    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank,
                      init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    with torch.random.fork_rng(devices=[]):  # the adapter's random init is part of the seeded run
        torch.manual_seed(seeding.derive_seed(config.seed, seeding.FINETUNE_INIT))
        unet.add_adapter(lora)


def _lora_state(unet) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)), unet.peft_config["default"].to_dict()


def _save_lora_in_checkpoints(accelerator) -> None:
    """Checkpoints of a LoRA run hold the adapter only (the frozen UNet is the base's): MBs instead of GBs."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    def save(models, weights, output_dir):
        if accelerator.is_main_process:
            state = get_peft_model_state_dict(accelerator.unwrap_model(models[0]))
            save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(output_dir, LORA_CHECKPOINT))
        weights.clear()

    def load(models, input_dir):
        model = accelerator.unwrap_model(models.pop())
        set_peft_model_state_dict(model, load_file(os.path.join(input_dir, LORA_CHECKPOINT)))

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def micro_step(batch, *, vae, text_encoder, unet, noise_scheduler, generator, weight_dtype, device) -> torch.Tensor:
    """The recipe's loss on one micro-batch: MSE between the UNet's prediction and the noise (or velocity)."""
    import torch.nn.functional as F
    from diffusers.utils.torch_utils import randn_tensor

    with torch.no_grad():
        pixels = batch["pixel_values"].to(device, weight_dtype)
        latents = vae.encode(pixels).latent_dist.sample(generator=generator) * vae.config.scaling_factor
        encoder_hidden_states = text_encoder(batch["input_ids"].to(device), return_dict=False)[0]
    noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator).to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")


def finetune_settings(config: DistillConfig, run_dir: str | Path, dtype: torch.dtype) -> FinetuneConfig | None:
    """The `FinetuneConfig` (`vldd.configs.finetune`) of this run's fine-tuning stage, or None when the run does not fine-tune.

    A run fine-tunes when `finetune.enabled` is set and `generation.model` is still the preset's model: a model given
    explicitly (`--diffusion-model`, or a `--lora`) is used as is. Settings left None take the recipe's values
    (`vldd.configs.finetune.PRESETS`, by the same preset name: `STAGE_SETTINGS` the run sets win); the resolution
    is the resolved run's, the mixed precision follows the run's dtype.

    Args:
        config: a `vldd distill` run, resolved (`DistillConfig.resolve`).
        run_dir: the run directory; the model goes to RUN_DIR/finetune/seed<S>.
        dtype: the run's resolved dtype.
    """
    f, g = config.finetune, config.generation
    if not f.enabled or _model_given(config):
        return None
    values = {name: getattr(f, name) for name in STAGE_SETTINGS if getattr(f, name) is not None}
    values.setdefault("mixed_precision", {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no"))
    values["revision"] = None if "base_model" in values else g.revision
    values.setdefault("base_model", g.model)
    return finetune_config(config.preset if config.preset in PRESETS else "paper", **values,
                           captions=str(run_dir), output=str(Path(run_dir) / "finetune" / f"seed{config.seed}"),
                           seed=config.seed, hub_kernels=config.hub_kernels)


def _model_given(config: DistillConfig) -> bool:
    """Whether the user chose the diffusion model (not the preset's): then it is used as given, not fine-tuned."""
    from ..configs.distill import PRESETS as RUN_PRESETS
    from ..configs.distill import GenerationConfig

    preset_model = RUN_PRESETS[config.preset].get("generation", {}).get("model", GenerationConfig.model)
    return config.generation.model != preset_model or config.generation.lora is not None


def finetune(config: FinetuneConfig, *, cache_dir: str | Path | None = None, progress: bool = False) -> FinetuneResult:
    """Fine-tunes Stable Diffusion on captioned images (full or LoRA), resuming from the output's latest checkpoint.

    Under `accelerate launch` every process runs this same call; each trains on its share of every batch.

    Args:
        config: the whole job.
        cache_dir: where tiny models are built (`tiny://` ids).
        progress: a tqdm bar over optimizer steps (main process only).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel, cast_training_params
    from tqdm.auto import tqdm

    from ..models.registry import resolve_model

    output = Path(config.output)
    base_path = resolve_model(config.base_model, cache_dir)

    # 1. Devices and precision.
    # On a machine without GPUs, cpu=True is what lets several processes (torchrun / accelerate launch) train
    # data-parallel over gloo; otherwise accelerate picks the device.
    no_gpu = not torch.cuda.is_available() and not torch.backends.mps.is_available()
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=no_gpu)
    try:
        if config.mixed_precision == "fp16" and accelerator.device.type == "cpu":
            raise ValueError("`mixed_precision` 'fp16' (the paper's) needs a CUDA GPU; on CPU use 'no' or 'bf16'")
        device, main = accelerator.device, accelerator.is_main_process
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

        # 2. Models: VAE and text encoder frozen (in the training precision), UNet (or its LoRA) trained in fp32.
        tokenizer, text_encoder, vae, unet, noise_scheduler = _load_models(config, base_path)
        for frozen in (vae, text_encoder):
            frozen.requires_grad_(False).eval().to(device)
        if config.lora:
            unet.requires_grad_(False)
            _add_lora(unet, config)
        if weight_dtype != torch.float32:
            for frozen in (vae, text_encoder) + ((unet,) if config.lora else ()):
                frozen.to(dtype=weight_dtype)
            if config.lora:
                cast_training_params(unet, dtype=torch.float32)  # the adapter trains in fp32
        unet.to(device)
        unet.train()
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        params = [p for p in unet.parameters() if p.requires_grad]

        # 3. Data, and the schedule it implies.
        pairs, data = load_pairs(config, tokenizer)
        W = accelerator.num_processes
        micro_per_epoch = math.ceil(math.ceil(len(pairs) / W) / config.train_batch_size)
        steps_per_epoch = math.ceil(micro_per_epoch / config.gradient_accumulation_steps)
        total_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
        epochs = math.ceil(total_steps / steps_per_epoch)

        # 4. Optimizer, learning-rate schedule, EMA.
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                      weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
        # accelerate steps a prepared scheduler once per process: scale as diffusers' script does.
        lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps * W,
                                     num_training_steps=total_steps * W)
        unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
        if config.lora:
            _save_lora_in_checkpoints(accelerator)
        ema = None
        if config.use_ema:
            ema = EMAModel(params, decay=config.ema_decay)
            ema.to(device)
            accelerator.register_for_checkpointing(ema)

        # 5. Resume from the newest checkpoint (optimizer, scheduler, EMA and step restored), or start fresh.
        global_step, resumed_from = 0, None
        latest = latest_checkpoint(output) if config.resume else None
        if latest is not None:
            _check_resumable(output, config)
            global_step = resumed_from = latest[0]
            accelerator.load_state(str(latest[1]))
            if ema is not None:
                ema.to(device)  # accelerate loads custom states on the CPU
            logger.info("resuming from %s (step %d)", latest[1], global_step)
        records = _read_losses(output, up_to=global_step) if latest is not None else []
        if main:
            output.mkdir(parents=True, exist_ok=True)
            if latest is None:
                shutil.rmtree(output / "checkpoints", ignore_errors=True)
            for stale in (output / "checkpoints").glob(".checkpoint-*.tmp"):  # left by a run killed mid-save
                shutil.rmtree(stale, ignore_errors=True)
            write_json(output / "finetune_config.json", _training_settings(config))
            write_text(output / LOSSES, "".join(json.dumps(r) + "\n" for r in records))
        accelerator.wait_for_everyone()

        # 6. Train: per optimizer step, gradient_accumulation_steps micro-batches, clipped, stepped, EMA updated.
        loader_kw = {"num_workers": config.dataloader_num_workers, "collate_fn": torch.utils.data.default_collate}
        bar = tqdm(total=total_steps, initial=global_step, desc="finetune", unit="step", disable=not (progress and main))
        ga = config.gradient_accumulation_steps
        log = open(output / LOSSES, "a") if main else None
        try:
            for epoch in range(global_step // steps_per_epoch, epochs):
                if global_step >= total_steps:
                    break
                batches = epoch_batches(len(pairs), epoch=epoch, seed=config.seed,
                                        batch_size=config.train_batch_size, process_index=accelerator.process_index,
                                        num_processes=W)
                first = (global_step - epoch * steps_per_epoch) * ga  # micro-batches already done this epoch
                groups = [list(range(i, min(i + ga, len(batches)))) for i in range(first, len(batches), ga)]
                loader = iter(torch.utils.data.DataLoader(pairs, batch_sampler=batches[first:], **loader_kw))
                for group in groups:
                    if global_step >= total_steps:
                        break
                    step_loss = 0.0
                    for k, micro in enumerate(group):
                        batch = next(loader)
                        g = seeding.generator(config.seed, seeding.FINETUNE_NOISE, epoch, micro, accelerator.process_index)
                        syncing = k == len(group) - 1
                        with nullcontext() if syncing else accelerator.no_sync(unet):  # DDP all-reduces on the last only
                            loss = micro_step(batch, vae=vae, text_encoder=text_encoder, unet=unet,
                                               noise_scheduler=noise_scheduler, generator=g,
                                               weight_dtype=weight_dtype, device=device)
                            accelerator.backward(loss / len(group))
                        step_loss += loss.detach().float() / len(group)
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.step(params)
                    global_step += 1
                    mean_loss = accelerator.reduce(step_loss.to(device), reduction="mean").item()
                    record = {"step": global_step, "epoch": epoch, "loss": mean_loss,
                              "lr": lr_scheduler.get_last_lr()[0]}
                    records.append(record)
                    if log is not None:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    bar.update(1)
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    if config.checkpointing_steps and (global_step % config.checkpointing_steps == 0
                                                       or global_step == total_steps):
                        _save_checkpoint(accelerator, output, global_step, config.checkpoints_total_limit)
        finally:
            bar.close()
            if log is not None:
                log.close()

        # 7. Save the model (EMA weights when kept), the summary and the card.
        accelerator.wait_for_everyone()
        weights_bytes = 0
        if main:
            unet = accelerator.unwrap_model(unet)
            if ema is not None:
                ema.copy_to(params)
            weights_bytes = _save_model(unet, config, base_path, output)
            summary = _summary(config, data, global_step, total_steps, epochs, records, weights_bytes)
            write_json(output / SUMMARY, summary)
            write_text(output / "README.md", render_model_card(summary))
        accelerator.wait_for_everyone()
        result = FinetuneResult(output, config.lora, config.base_model, global_step, total_steps, epochs, resumed_from,
                                [r["loss"] for r in records], weights_bytes)

        # 8. Publish (main process only; the token comes from huggingface_hub's login).
        if config.push_to_hub and main:
            from ..hub.push import push_model

            result.hub_repo = push_model(output, config.push_to_hub, private=config.private)
        return result
    finally:
        accelerator.free_memory()
        AcceleratorState._reset_state()  # so a later call in this process may pick another precision


def _save_model(unet, config: FinetuneConfig, base_path: str, output: Path) -> int:
    """Writes the pipeline (full) or the LoRA adapter into `output`; returns the size of the trained weights."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    if config.lora:
        state, metadata = _lora_state(unet)
        StableDiffusionPipeline.save_lora_weights(output, unet_lora_layers=state, unet_lora_adapter_metadata=metadata,
                                                  safe_serialization=True)
        return (output / LORA_WEIGHTS).stat().st_size
    # The frozen components are loaded afresh from the base, so they are saved in their original precision.
    text_encoder = CLIPTextModel.from_pretrained(base_path, subfolder="text_encoder", revision=config.revision,
                                                 use_kernels=hub_kernels_allowed(config.hub_kernels))
    pipe = StableDiffusionPipeline.from_pretrained(base_path, unet=unet, text_encoder=text_encoder,
                                                   revision=config.revision, safety_checker=None,
                                                   requires_safety_checker=False)
    if config.prediction_type is not None:
        pipe.scheduler.register_to_config(prediction_type=config.prediction_type)
    pipe.save_pretrained(output, safe_serialization=True)
    return sum(f.stat().st_size for f in (output / "unet").glob("*.safetensors"))


def _summary(config, data, global_step, total_steps, epochs, records, weights_bytes) -> dict[str, Any]:
    settings = config.to_dict()
    for key in ("captions", "output", "base_model", "dataset"):
        settings[key] = public_name(settings[key])
    losses = [r["loss"] for r in records]
    return {
        "vldd_version": __version__, "kind": "lora" if config.lora else "full",
        "base_model": public_name(config.base_model), "base_revision": config.revision,
        "tiny": config.base_model.startswith("tiny://"),
        "data": {**data, "dataset": public_name(data["dataset"]), "captions": public_name(data["captions"])},
        "config": settings, "global_step": global_step, "total_steps": total_steps, "epochs": epochs,
        "final_loss": losses[-1] if losses else None,
        "mean_loss_last_10pct": float(np.mean(losses[-max(1, len(losses) // 10):])) if losses else None,
        "weights_bytes": weights_bytes, "versions": versions(),
    }


