"""Typed configuration for a distillation run.

One `DistillConfig` describes a whole job. Presets are plain data (`PRESETS`); a YAML file can hold a whole run, and
flags override it (see `vldd.cli.commands`). Every field is validated on construction with a message that names the bad
value and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

import yaml

from .base import SD15, TINY_CAPTIONER, TINY_DIFFUSION, TINY_RESOLUTION, check, merge, read_yaml
from .finetune import STAGE_SETTINGS, FinetuneConfig, check_settings

if TYPE_CHECKING:
    from .profiles import Recognition

# The paper's prompt, verbatim, including the missing space after "image." (docs/method.md, "1. Captions").
PAPER_PROMPT = (
    "Describe the physical appearance of the {class_name} in the image."
    "Include details about its shape, posture, color, and any distinct features."
)

# The stage commands (`vldd caption|prototypes|generate`, the app's buttons) and the stages each runs; later stages
# resume from what earlier ones left on disk (`vldd.jobs.distill`). Here, torch-free, so the CLI builds its commands
# without importing the job.
STAGE_COMMANDS = {"caption": ("caption",), "prototypes": ("caption", "prototypes", "text"),
                  "generate": ("caption", "finetune", "prototypes", "text", "generate")}
TINY_NOTE = ("tiny preset: random-weight models built from configs; the images are noise and the captions "
             "gibberish. It exercises the whole product offline in seconds; it is not a distilled dataset.")


@dataclass
class DataConfig:
    dataset: str = "sample"  # Hub id, local image folder, `save_to_disk` directory, or "sample" (embedded)
    config_name: str | None = None  # Hub dataset configuration (subset) name
    split: str = "train"  # split to distill
    revision: str | None = None  # Hub dataset revision (branch, tag or commit)
    image_column: str | None = None  # auto-detected (first Image feature) when None
    label_column: str | None = None  # auto-detected (first ClassLabel feature) when None
    classes: list[str | int] | None = None  # subset of classes by name or index; None = all
    max_images_per_class: int | None = None  # cap on source images per class (first N); None = all
    too_few_images: str = "error"  # class with fewer usable images than IPC: "error" or "reduce" (fewer clusters)
    streaming: bool = False  # stream the source, keeping only the selected classes' first images (no full download)
    # names for the captioning prompt and the text filter, one per source class in label order: a file (one name per
    # line) or a list; None = resolved from the labels (WordNet ids and ImageNet short names -> full ImageNet names)
    class_names: str | list[str] | None = None
    # class names that are only digits ("00000", as the RDED harness stores CIFAR) are refused unless this is true:
    # prompts would read "the 00000 in the image"; give the real names with `data.class_names` instead
    numeric_names: bool = False
    # per-dataset settings: "cifar10", "cifar100", "tiny-imagenet", "imagenet-1k" or "imagenet-subset"; None =
    # recognised from the source (class names, class count, image size; the id or path only breaks ties)
    profile: str | None = None

    def __post_init__(self):
        check(bool(self.dataset), "`data.dataset` must be a dataset id or path, got an empty string")
        check(self.too_few_images in ("error", "reduce"),
               f"`data.too_few_images` must be 'error' or 'reduce', got {self.too_few_images!r}")
        check(self.max_images_per_class is None or self.max_images_per_class >= 1,
               f"`data.max_images_per_class` must be >= 1 or None, got {self.max_images_per_class}")
        check(self.class_names is None or isinstance(self.class_names, (str, list)),
               f"`data.class_names` must be a file path or a list of names, got {self.class_names!r}")
        from .profiles import PROFILES

        check(self.profile is None or self.profile in PROFILES,
               f"`data.profile` must be one of {sorted(PROFILES)} or None, got {self.profile!r}")


@dataclass
class CaptionConfig:
    model: str = "llava-hf/llava-1.5-7b-hf"  # any image-text-to-text model id or directory
    revision: str | None = None  # model revision on the Hub
    prompt: str = PAPER_PROMPT  # template; {class_name} is replaced by the label name
    do_sample: bool = True  # paper: sampling at temperature 0.2; False = greedy
    temperature: float = 0.2  # sampling temperature
    max_new_tokens: int = 1024  # generation budget per caption, in tokens
    batch_size: int = 8  # images per captioner call
    # LLaVA-1.5 captioners: "llava_v1" = the paper's conversation (LLaVA's system prompt, "USER: <image>\n{prompt}
    # ASSISTANT:"); "chat_template" = the processor's template (no system prompt). Other captioners use their template
    conversation: str = "llava_v1"
    pad_to_square: bool = True  # LLaVA-1.5: pad images to a centred square of the CLIP mean colour (no edge cropped)
    clean_captions: bool = True  # the official post-processing: remove '"' and "'s" from captions before storing
    from_hub: str | None = None  # reuse a published captions dataset (Hub id or directory) instead of captioning

    def __post_init__(self):
        check("{class_name}" in self.prompt,
               f"`caption.prompt` must contain '{{class_name}}', got {self.prompt!r}")
        check(self.temperature > 0, f"`caption.temperature` must be > 0, got {self.temperature}")
        check(self.max_new_tokens >= 1, f"`caption.max_new_tokens` must be >= 1, got {self.max_new_tokens}")
        check(self.batch_size >= 1, f"`caption.batch_size` must be >= 1, got {self.batch_size}")
        check(self.conversation in ("llava_v1", "chat_template"),
               f"`caption.conversation` must be 'llava_v1' or 'chat_template', got {self.conversation!r}")


@dataclass
class PrototypeConfig:
    resolution: int = 512  # images are resized to resolution x resolution (aspect not kept) before VAE encoding
    encode_batch_size: int = 16  # images per VAE call
    lof_neighbors: int = 10  # LocalOutlierFactor n_neighbors
    contamination: float | None = None  # fraction of each class dropped as outliers, 0 = none; None = derived (CIFAR 0)
    n_init: int = 10  # k-means restarts (best inertia kept)
    max_iter: int = 300  # k-means Lloyd iterations per restart
    tol: float = 1e-4  # k-means convergence tolerance, relative to the mean per-feature variance (as sklearn)

    def __post_init__(self):
        check(self.resolution >= 8 and self.resolution % 8 == 0,
               f"`prototypes.resolution` must be a positive multiple of 8, got {self.resolution}")
        check(self.contamination is None or 0.0 <= self.contamination < 0.5,
               f"`prototypes.contamination` must be in [0.0, 0.5), got {self.contamination}")
        check(self.lof_neighbors >= 1, f"`prototypes.lof_neighbors` must be >= 1, got {self.lof_neighbors}")
        check(self.n_init >= 1, f"`prototypes.n_init` must be >= 1, got {self.n_init}")
        check(self.encode_batch_size >= 1,
               f"`prototypes.encode_batch_size` must be >= 1, got {self.encode_batch_size}")


@dataclass
class TextPrototypeConfig:
    top_k: int = 30  # tpk: most frequent cluster words used to score descriptions (paper 30, code default 20)
    # a word in >= this fraction of the class's descriptions is class-common; None = derived (0.7 ImageNet and its
    # subsets, 0.3 CIFAR-10, 0.2 CIFAR-100 and Tiny-ImageNet)
    common_threshold: float | None = None
    fallback: str = "nearest"  # when every description scores 0: "nearest" (image nearest the centre) or "class_name"
    # "prototypes" = VLCP's text prototypes; "class_name" = every image's prompt is its class name (D4M-style, the
    # paper's ablation without text prototypes)
    mode: str = "prototypes"

    def __post_init__(self):
        check(self.top_k >= 1, f"`text.top_k` must be >= 1, got {self.top_k}")
        check(self.mode in ("prototypes", "class_name"),
               f"`text.mode` must be 'prototypes' or 'class_name', got {self.mode!r}")
        check(self.common_threshold is None or 0.0 < self.common_threshold <= 1.0,
               f"`text.common_threshold` must be in (0.0, 1.0], got {self.common_threshold}")
        check(self.fallback in ("nearest", "class_name"),
               f"`text.fallback` must be 'nearest' or 'class_name', got {self.fallback!r}")


PROMPT_CHUNKING = ("official", "windows")  # how long prompts are encoded (`vldd.stages.generate.prompt_token_ids`)


def denoising_steps(num_inference_steps: int, strength: float) -> int:
    """How many denoising steps img2img runs: int(num_inference_steps x strength) (0.7 of 50 = 35), at most all."""
    return min(int(num_inference_steps * strength), num_inference_steps)


@dataclass
class GenerationConfig:
    model: str = SD15  # SD checkpoint id or directory (fine-tuned too)
    revision: str | None = None  # model revision on the Hub
    lora: str | None = None  # LoRA adapter id or directory applied to the UNet
    scheduler: str | None = None  # diffusers scheduler class name; None = the checkpoint's (PNDM for SD v1.5)
    num_inference_steps: int = 50  # full schedule length; strength decides how many are run
    strength: float = 0.7  # fraction of the schedule denoised from the noised prototype (0.7 of 50 = 35 steps)
    guidance_scale: float = 10.0  # classifier-free guidance (D4M: 8)
    eta: float = 0.0  # DDIM eta
    compile: bool = False  # torch.compile the UNet: opt-in (minutes of compiling first; kernels may change last bits)
    negative_prompt: str = "cartoon, anime, painting"  # what guidance steers every image away from
    prompt_chunking: str = "official"  # long prompts: "official" slices token ids every 77 (the paper's code); "windows" wraps 75-token windows in BOS/EOS, padded to 77
    batch_size: int = 4  # prototypes per pipeline call
    # generated images are resized to output_size x output_size pixels; None = derived (256 ImageNet subsets, 224
    # ImageNet-1K, 64 Tiny-ImageNet, 32 CIFAR)
    output_size: int | None = None

    def __post_init__(self):
        check(0.0 < self.strength <= 1.0, f"`generation.strength` must be in (0.0, 1.0], got {self.strength}")
        check(self.num_inference_steps >= 1,
               f"`generation.num_inference_steps` must be >= 1, got {self.num_inference_steps}")
        check(denoising_steps(self.num_inference_steps, self.strength) >= 1,
               f"`generation.strength` {self.strength} x `num_inference_steps` {self.num_inference_steps} "
               "leaves no denoising step")
        check(self.guidance_scale >= 0, f"`generation.guidance_scale` must be >= 0, got {self.guidance_scale}")
        check(self.batch_size >= 1, f"`generation.batch_size` must be >= 1, got {self.batch_size}")
        check(self.prompt_chunking in PROMPT_CHUNKING,
               f"`generation.prompt_chunking` must be 'official' or 'windows', got {self.prompt_chunking!r}")
        check(self.output_size is None or self.output_size >= 8,
               f"`generation.output_size` must be >= 8 pixels or None, got {self.output_size}")


def _finetune_stage_config() -> type:
    """`FinetuneStageConfig`: `enabled`, then the `STAGE_SETTINGS` of `FinetuneConfig`, each declared there once (type,
    comment, the recipe's value) and here `<type> | None = None`: None = the recipe's value, or what the run derives."""
    hints = get_type_hints(FinetuneConfig)
    settings = [(name, hints[name] | None, field(default=None, metadata={
        "same_as": FinetuneConfig, "unset": FINETUNE_UNSET.get(name, "the recipe's (paper: {default})")}))
                for name in STAGE_SETTINGS]

    def __post_init__(self):
        check(isinstance(self.enabled, bool), f"`finetune.enabled` must be true or false, got {self.enabled!r}")
        check(self.base_model != "", "`finetune.base_model` must be a model id or directory, got an empty string")
        check_settings({name: getattr(self, name) for name in STAGE_SETTINGS if getattr(self, name) is not None},
                       prefix="finetune.")

    cls = dataclasses.make_dataclass(
        "FinetuneStageConfig", [("enabled", bool, field(default=True, metadata={"help": FINETUNE_ENABLED_HELP})),
                                *settings],
        namespace={"__post_init__": __post_init__, "__doc__": "The fine-tuning stage of `distill` (VLCP step 2): "
                   "unset (None) settings take `vldd.configs.finetune`'s recipe (the preset of the run's preset name)."})
    cls.__module__ = __name__
    return cls


# What the fine-tuning stage of a run does with a setting it leaves None, when that is not "the recipe's value" (the
# CLI's help says it after the setting's comment in `FinetuneConfig`; "" = the comment says it already).
FINETUNE_UNSET = {"base_model": "generation.model", "resolution": "derived (512 ImageNet and subsets, 32 CIFAR)",
                  "mixed_precision": 'from dtype (fp16 on CUDA, "no" on CPU)', "max_train_steps": ""}
FINETUNE_ENABLED_HELP = "fine-tune SD on the run's captions, generate with it; False = base model (D4M-style)"
FinetuneStageConfig = _finetune_stage_config()


@dataclass
class DistillConfig:
    output: str = "runs/default"  # run directory: every stage's results, the dataset, manifest and preview
    ipc: int = 10  # images per class in the distilled set
    seed: int = 0  # seeds VAE sampling, k-means, captions and every generated image
    preset: str = "paper"  # name of the preset the run started from (informational once resolved)
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    dtype: str = "auto"  # "auto" (fp16 on cuda, fp32 on cpu), "fp32", "fp16" or "bf16"
    # let transformers replace layers of the captioner and SD's text encoder with compute kernels downloaded from the
    # Hub (kernels-community, CUDA only); off = PyTorch's own layers, nothing fetched. Never tried while offline
    hub_kernels: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    prototypes: PrototypeConfig = field(default_factory=PrototypeConfig)
    text: TextPrototypeConfig = field(default_factory=TextPrototypeConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    finetune: FinetuneStageConfig = field(default_factory=FinetuneStageConfig)

    def __post_init__(self):
        check(isinstance(self.ipc, int) and self.ipc >= 1, f"`ipc` must be an integer >= 1, got {self.ipc!r}")
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
               f"`device` must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        check(self.dtype in ("auto", "fp32", "fp16", "bf16"),
               f"`dtype` must be 'auto', 'fp32', 'fp16' or 'bf16', got {self.dtype!r}")
        check(isinstance(self.hub_kernels, bool), f"`hub_kernels` must be true or false, got {self.hub_kernels!r}")
        check(self.preset in PRESETS, f"`preset` must be one of {sorted(PRESETS)}, got {self.preset!r}")

    @property
    def is_tiny(self) -> bool:
        return self.caption.model.startswith("tiny://") or self.generation.model.startswith("tiny://")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve(self, recognition: Recognition | None = None) -> tuple[DistillConfig, dict[str, Any]]:
        """Fills the settings left unset (None = derived) from the source's dataset profile (`vldd.configs.profiles`).

        Args:
            recognition: the source's recognised profile (`SourceDataset.profile`); None = judged from the dataset
                id or path alone (and `data.profile`).

        Returns:
            (a resolved copy of this config, the derived values: the profile's family, the recognition (`profile`:
            family, source, evidence), every filled setting by its dotted name, and `evaluation.image_size`). Values
            the user set are kept and not listed.
        """
        from .profiles import recognise

        recognition = recognition or recognise(self.data.dataset, override=self.data.profile)
        profile = recognition.profile
        resolved = copy.deepcopy(self)
        derived: dict[str, Any] = {"family": profile.family, "profile": recognition.to_dict()}
        for dotted, value in (("generation.output_size", profile.output_size),
                              ("prototypes.contamination", profile.contamination),
                              ("text.common_threshold", profile.common_threshold),
                              ("finetune.resolution", profile.finetune_resolution)):
            section, name = dotted.split(".")
            if getattr(getattr(resolved, section), name) is None:
                setattr(getattr(resolved, section), name, value)
                derived[dotted] = value
        derived["evaluation.image_size"] = profile.eval_image_size
        return resolved, derived

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_SECTIONS = {"data": DataConfig, "caption": CaptionConfig, "prototypes": PrototypeConfig,
             "text": TextPrototypeConfig, "generation": GenerationConfig,
             "finetune": FinetuneStageConfig}

# Presets are data: nested overrides applied on top of the dataclass defaults (which are the paper's values; the
# per-dataset ones, left None, are derived from the source when the run starts: `DistillConfig.resolve`).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": {
        "ipc": 10,
        "data": {"dataset": "sample"},
        "caption": {"model": TINY_CAPTIONER, "max_new_tokens": 12, "batch_size": 16},
        "prototypes": {"resolution": TINY_RESOLUTION, "encode_batch_size": 32},
        "text": {"top_k": 30, "common_threshold": 0.7},
        "generation": {"model": TINY_DIFFUSION, "batch_size": 10, "output_size": TINY_RESOLUTION},
        # off by default (CPU seconds matter here); `--finetune.enabled true` runs the tiny recipe
        # (`vldd.configs.finetune.PRESETS["tiny"]`) at the tiny preset's resolution, not the one the source derives
        "finetune": {"enabled": False, "resolution": TINY_RESOLUTION},
    },
}


def from_dict(values: dict[str, Any]) -> DistillConfig:
    """Builds a validated config from nested values, starting from the preset the values name (default "paper")."""
    preset = values.get("preset", "paper")
    check(preset in PRESETS, f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}")
    merged = merge(PRESETS[preset], values)
    top = {f.name for f in fields(DistillConfig)}
    unknown = set(merged) - top
    check(not unknown, f"unknown config keys {sorted(unknown)}; expected some of {sorted(top)}")
    kwargs: dict[str, Any] = {}
    for key, value in merged.items():
        if key in _SECTIONS:
            check(isinstance(value, dict), f"`{key}` must be a mapping, got {value!r}")
            known = {f.name for f in fields(_SECTIONS[key])}
            bad = set(value) - known
            check(not bad, f"unknown keys {sorted(bad)} in `{key}`; expected some of {sorted(known)}")
            kwargs[key] = _SECTIONS[key](**value)
        else:
            kwargs[key] = value
    kwargs["preset"] = preset
    return DistillConfig(**kwargs)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> DistillConfig:
    """Loads a run config from a YAML file (optional) and applies nested `overrides` on top.

    Args:
        path: YAML file with the same nested layout as `DistillConfig.to_dict()`; may hold only a few keys.
        overrides: nested values that win over the file (what CLI flags set).
    """
    values = read_yaml(path) if path is not None else {}
    if overrides:
        if "preset" in overrides and "preset" in values and overrides["preset"] != values["preset"]:
            values = {k: v for k, v in values.items() if k != "preset"}
        values = merge(values, overrides)
    return from_dict(values)
