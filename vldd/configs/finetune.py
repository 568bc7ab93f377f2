"""Settings of `vldd finetune`: Stable Diffusion fine-tuned on (image, caption) pairs, VLCP step 2. The defaults
are the paper's recipe; `PRESETS` holds the overrides of the other presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .base import SD15, TINY_DIFFUSION, TINY_RESOLUTION, check

MIXED_PRECISIONS = ("no", "fp16", "bf16")
# Settings that may change when a run is resumed: they decide how long to train and what to do with the result, not
# how any step is computed.
RESUMABLE_CHANGES = {"output", "max_train_steps", "num_train_epochs", "checkpointing_steps",
                     "checkpoints_total_limit", "resume", "dataloader_num_workers", "push_to_hub", "private",
                     "hub_kernels"}  # kernels change the frozen text encoder's rounding, not what is trained


@dataclass
class FinetuneConfig:
    captions: str = ""  # run directory, captions `save_to_disk` directory, or Hub captions dataset id
    output: str = "models/finetuned"  # where the model, card, losses and checkpoints go
    base_model: str = SD15  # Stable Diffusion checkpoint (Hub id or directory) to start from
    revision: str | None = None  # base model revision on the Hub
    dataset: str | None = None  # source dataset of the captions; None = the one the captions' manifest names
    config_name: str | None = None  # source dataset configuration; None = the manifest's
    split: str | None = None  # source split; None = the manifest's, else "train"
    image_column: str | None = None  # auto-detected (first Image feature) when None
    max_train_samples: int | None = None  # train on the first N caption rows only (class-ordered; debugging)
    resolution: int = 512  # images are resized (shorter side, bilinear) and cropped to resolution x resolution px
    center_crop: bool = True  # crop the center; False = a seeded random crop
    random_flip: bool = True  # seeded horizontal flip with probability 0.5
    train_batch_size: int = 32  # images per process per micro-batch
    gradient_accumulation_steps: int = 4  # micro-batches per optimizer step (effective batch = this x batch x GPUs)
    num_train_epochs: int = 8  # passes over the pairs; ignored when max_train_steps is set
    max_train_steps: int | None = None  # total optimizer steps; None = num_train_epochs epochs
    learning_rate: float = 1e-5  # AdamW learning rate (paper, full fine-tuning; LoRA usually wants ~1e-4)
    lr_scheduler: str = "constant"  # diffusers.optimization schedule: constant, constant_with_warmup, linear, cosine...
    lr_warmup_steps: int = 0  # optimizer steps of warm-up
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.999  # AdamW beta2
    adam_weight_decay: float = 1e-2  # AdamW decoupled weight decay
    adam_epsilon: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # gradients are clipped to this L2 norm (over the trained parameters)
    use_ema: bool = True  # keep an exponential moving average of the trained weights; the output holds the EMA
    ema_decay: float = 0.9999  # EMA's largest decay; early steps use (1 + t) / (10 + t) below it (diffusers' EMAModel)
    mixed_precision: str = "fp16"  # "no", "fp16" (needs CUDA) or "bf16": frozen models in it, UNet under autocast
    gradient_checkpointing: bool = True  # recompute UNet activations in the backward pass: less memory, slower
    prediction_type: str | None = None  # "epsilon" or "v_prediction"; None = the base scheduler's
    seed: int = 0  # seeds data order, flips, crops, noise, timesteps and LoRA init; one model per seed
    checkpointing_steps: int = 500  # save a resumable checkpoint every N optimizer steps (and at the end); 0 = never
    checkpoints_total_limit: int | None = None  # keep only the newest N checkpoints; None = all
    resume: bool = True  # continue from the newest checkpoint in OUTPUT/checkpoints when there is one
    lora: bool = False  # train a LoRA adapter on the UNet attention projections instead of the whole UNet
    lora_rank: int = 4  # LoRA rank r
    lora_alpha: int | None = None  # LoRA alpha (the update is scaled by alpha / r); None = r
    dataloader_num_workers: int = 0  # image-decoding worker processes per training process
    push_to_hub: str | None = None  # model repository ("namespace/name", or "name" in your namespace) to upload to
    private: bool = False  # create that repository private
    # let transformers replace layers of the frozen text encoder with compute kernels downloaded from the Hub
    # (kernels-community, CUDA only); off = PyTorch's own layers, nothing fetched. Never tried while offline
    hub_kernels: bool = False

    def __post_init__(self):
        check(bool(self.captions), "`captions` must be a run directory, a captions directory or a Hub dataset id, "
               "got an empty string")
        check(bool(self.output), "`output` must be a directory, got an empty string")
        check_settings(vars(self))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_settings(values: dict[str, Any], prefix: str = "") -> None:
    """Validates the `FinetuneConfig` settings in `values` (name -> value; absent names are not checked).

    One set of rules for `FinetuneConfig` and for the settings a distillation run's `finetune` section changes
    (`vldd.configs.distill.FinetuneStageConfig`, whose errors name them `finetune.<name>`: the `prefix`).
    """
    def rule(name: str, ok, expected: str) -> None:
        if name in values:
            check(ok(values[name]), f"`{prefix}{name}` must be {expected}, got {values[name]!r}")

    rule("resolution", lambda v: isinstance(v, int) and v >= 8 and v % 8 == 0, "a positive multiple of 8 pixels")
    for name in ("train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "lora_rank"):
        rule(name, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
    for name in ("max_train_steps", "max_train_samples", "checkpoints_total_limit", "lora_alpha"):
        rule(name, lambda v: v is None or (isinstance(v, int) and v >= 1), "an integer >= 1 or None")
    for name in ("lr_warmup_steps", "checkpointing_steps", "seed", "dataloader_num_workers"):
        rule(name, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
    rule("learning_rate", lambda v: v > 0, "> 0")
    rule("max_grad_norm", lambda v: v > 0, "> 0")
    rule("ema_decay", lambda v: 0.0 <= v <= 1.0, "in [0.0, 1.0]")
    for name in ("adam_beta1", "adam_beta2"):
        rule(name, lambda v: 0.0 <= v < 1.0, "in [0.0, 1.0)")
    rule("adam_weight_decay", lambda v: v >= 0, ">= 0")
    rule("adam_epsilon", lambda v: v > 0, "> 0")
    rule("mixed_precision", lambda v: v in MIXED_PRECISIONS, f"one of {list(MIXED_PRECISIONS)}")
    rule("lora", lambda v: isinstance(v, bool), "true or false")
    rule("prediction_type", lambda v: v in (None, "epsilon", "v_prediction"), "'epsilon', 'v_prediction' or None")
    if "lr_scheduler" in values:
        from diffusers.optimization import SchedulerType

        rule("lr_scheduler", lambda v: v in [s.value for s in SchedulerType],
             f"one of {[s.value for s in SchedulerType]}")


# The recipe settings a `vldd distill` run may change for its fine-tuning stage (`--finetune.<name>`, declared as
# None = "the recipe's" in `vldd.configs.distill.FinetuneStageConfig`); the run decides the rest itself (captions,
# output, seed, ...) or takes them from the recipe preset of its own preset's name.
STAGE_SETTINGS = ("base_model", "resolution", "num_train_epochs", "max_train_steps", "train_batch_size",
                  "gradient_accumulation_steps", "learning_rate", "lora", "mixed_precision", "checkpointing_steps")

# Presets are data: overrides of the defaults (which are the paper's recipe).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": {"base_model": TINY_DIFFUSION, "resolution": TINY_RESOLUTION, "train_batch_size": 8, "gradient_accumulation_steps": 1,
             "num_train_epochs": 2, "learning_rate": 1e-4, "mixed_precision": "no", "gradient_checkpointing": False,
             "checkpointing_steps": 20},
}


def finetune_config(preset: str = "paper", **values: Any) -> FinetuneConfig:
    """A validated `FinetuneConfig` from a preset ("paper" or "tiny") and field values that override it."""
    check(preset in PRESETS, f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}")
    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = set(values) - known
    check(not unknown, f"unknown fine-tuning settings {sorted(unknown)}; expected some of {sorted(known)}")
    return FinetuneConfig(**{**PRESETS[preset], **values})


