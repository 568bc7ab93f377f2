"""The app's settings: presets, initial control values, limits, queue, ZeroGPU accounting, quick evaluation.

Every setting is declared once, with its comment, in `vldd/app/settings.yaml` (shipped inside the package, so an
installed `vldd app` has them). A Space's `spaces_config.yaml` (the repository root) holds the Space's own deployment
values (`space`: SDK and Python versions, sign-in scopes) and whatever setting it changes; it is read on top.

Example:
    >>> space = load_space_config("spaces_config.yaml")
    >>> space.limits.max_ipc
    10
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configs.base import check, merge, read_yaml
from ..configs.distill import PRESETS, DistillConfig, from_dict
from .gpu import GpuQuota
from .uploads import UploadLimits

SETTINGS_FILE = Path(__file__).with_name("settings.yaml")  # every app setting, once

@dataclass
class PresetSpec:
    name: str
    label: str  # shown in the Preset menu
    base: str  # a vldd preset (vldd.configs.distill.PRESETS)
    overrides: dict[str, Any] = field(default_factory=dict)  # nested DistillConfig values applied on top of `base`
    gpu_seconds: dict[str, float] = field(default_factory=dict)  # load, caption, encode, step (see the YAML)
    zerogpu: bool = True  # offered on ZeroGPU (its models are then loaded at start-up)

    def values(self) -> dict[str, Any]:
        """The preset's nested `DistillConfig` values (before the Space's defaults and the visitor's choices)."""
        return merge(self.overrides, {"preset": self.base})

    def config(self) -> DistillConfig:
        """The preset's run config before the visitor's choices."""
        return from_dict(self.values())


@dataclass
class Limits:
    """Per-run limits (settings.yaml `limits`, where each is explained)."""

    max_classes: int
    max_ipc: int
    max_images_per_class: int
    max_steps: int
    max_upload_mb: int
    max_upload_entries: int
    max_image_pixels: int
    max_image_side: int
    max_image_mb: int
    max_caption_rows: int

    def uploads(self) -> UploadLimits:
        return UploadLimits(self.max_upload_mb * 2**20, self.max_upload_entries, self.max_image_pixels,
                            self.max_image_side, self.max_image_mb * 2**20)


@dataclass
class SpaceConfig:
    """settings.yaml (and a Space's spaces_config.yaml on top), validated."""

    space: dict[str, Any]  # the Space's deployment values (spaces_config.yaml); empty off a Space's checkout
    presets: dict[str, PresetSpec]
    default_preset: dict[str, str]
    defaults: dict[str, Any]
    limits: Limits
    queue: dict[str, Any]
    evaluation: dict[str, Any]
    sessions: dict[str, float]
    zerogpu: GpuQuota
    local_gpu: dict[str, float]

    def preset_for(self, has_gpu: bool) -> str:
        return self.default_preset["gpu" if has_gpu else "cpu"]

    def offered(self, zero_gpu: bool) -> dict[str, PresetSpec]:
        """The presets the menu offers: on ZeroGPU only those whose models are loaded at start-up."""
        return {name: p for name, p in self.presets.items() if p.zerogpu or not zero_gpu}

    def concurrency(self, zero_gpu: bool) -> dict[str, int]:
        """`gpu_concurrency` and `cpu_concurrency` for the runtime: ZeroGPU gives each call its own GPU."""
        return dict(self.queue["zerogpu" if zero_gpu else "local"])


# The run controls the app shows and the `DistillConfig` field each one sets (dotted): the config declares their
# defaults and checks their values; the Space's `defaults` may change the initial value shown.
CONTROL_FIELDS = {"ipc": "ipc", "seed": "seed", "images_per_class": "data.max_images_per_class",
                  "strength": "generation.strength", "guidance_scale": "generation.guidance_scale",
                  "steps": "generation.num_inference_steps"}


PRESET_KEYS = ("base", "label", "overrides", "gpu_seconds", "zerogpu")
FREE_SECTIONS = ("space", "presets")  # the Space's own section; preset names (each preset's keys are checked)


def _check_known(given: dict, known: dict, source: str, top: bool = True) -> None:
    """Every key a settings file gives on top of settings.yaml is one settings.yaml declares (a new preset's name
    aside): a misspelt key is an error naming it and the expected ones, not silently ignored or a TypeError."""
    free = FREE_SECTIONS if top else ()
    for key, value in given.items():
        check(key in known or key in free, f"{source}: unknown setting `{key}`; expected some of "
                                           f"{sorted({*known, *free})}")
        if key == "presets":
            for name, spec in (value or {}).items():
                check(isinstance(spec, dict), f"{source}: preset {name!r} must be a mapping, got {spec!r}")
                bad = sorted(set(spec) - set(PRESET_KEYS))
                check(not bad, f"{source}: preset {name!r}: unknown keys {bad}; expected some of {list(PRESET_KEYS)}")
        elif key != "space" and isinstance(known.get(key), dict) and isinstance(value, dict):
            extra = dict.fromkeys(CONTROL_FIELDS) if top and key == "defaults" else {}  # any run control's
            _check_known(value, {**known[key], **extra}, f"{source}: `{key}`", top=False)


def load_space_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SpaceConfig:
    """The app's settings: settings.yaml, then the file at `path` (a Space's spaces_config.yaml), then `overrides`
    (nested, same layout)."""
    raw = read_yaml(SETTINGS_FILE, "vldd/app/settings.yaml")
    for given, source in ((read_yaml(path, "vldd/app/settings.yaml") if path is not None else {}, str(path)),
                          (overrides or {}, "the overrides")):
        _check_known(given, raw, source)
        raw = merge(raw, given)
    where = str(path) if path is not None else "vldd/app/settings.yaml"
    presets = {}
    for name, spec in (raw.get("presets") or {}).items():
        check(spec.get("base") in PRESETS, f"preset {name!r}: `base` must be one of {sorted(PRESETS)}, got "
                                            f"{spec.get('base')!r}")
        presets[name] = PresetSpec(name, spec.get("label", name), spec["base"], spec.get("overrides") or {},
                                   spec.get("gpu_seconds") or {}, bool(spec.get("zerogpu", True)))
        # The app runs per-class GPU calls; VLCP's fine-tuning trains on every class at once and cannot run there.
        check(not presets[name].config().finetune.enabled,
               f"preset {name!r}: the app does not fine-tune Stable Diffusion; set `overrides: {{finetune: "
               "{enabled: false}}` (a model fine-tuned by `vldd distill` can be given as `generation.model`)")
    check(bool(presets), f"{where!r} must offer at least one preset under `presets`")
    default_preset = raw.get("default_preset") or {}
    for kind in ("gpu", "cpu"):
        check(default_preset.get(kind) in presets,
               f"`default_preset.{kind}` must be one of {sorted(presets)}, got {default_preset.get(kind)!r}")
    limits = Limits(**(raw.get("limits") or {}))
    queue = raw.get("queue") or {}
    for kind in ("zerogpu", "local"):
        check(isinstance(queue.get(kind), dict) and {"gpu_concurrency", "cpu_concurrency"} <= set(queue[kind]),
               f"`queue.{kind}` must give gpu_concurrency and cpu_concurrency, got {queue.get(kind)!r}")
    z = raw["zerogpu"]
    quota = GpuQuota(float(z["duration_factor"]), int(z["max_call_seconds"]), dict(z["daily_quota_seconds"]))
    return SpaceConfig(raw.get("space") or {}, presets, default_preset, raw.get("defaults") or {}, limits,
                       queue, raw.get("evaluation") or {}, raw.get("sessions") or {}, quota,
                       raw.get("local_gpu") or {})
