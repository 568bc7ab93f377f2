"""The run controls (Dataset, Captions, Generate tabs) become one checked `DistillConfig`, and its GPU time.

The controls set `DistillConfig` fields directly (`CONTROL_FIELDS`): the config declares their defaults and checks
their values; the app adds only what the Space limits (`limits`, the seed and guidance ranges its controls offer) and
the text it accepts.

Example:
    >>> space = load_space_config()
    >>> initial_controls(space, "tiny")["guidance_scale"]  # GenerationConfig's default
    10.0
    >>> config = run_config(space, "/tmp/run", dataset="sample", classes=["circle", "square"], preset="tiny", ipc=2)
    >>> config.generation.guidance_scale  # no value given: the initial one
    10.0
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from ..configs.base import check, merge
from ..configs.distill import STAGE_COMMANDS, DistillConfig, denoising_steps, from_dict
from .gpu import LimitError
from .settings import CONTROL_FIELDS, SpaceConfig


def nested(dotted: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} for "a.b": a `DistillConfig` value as `from_dict` takes it."""
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def preset_values(space: SpaceConfig, preset: str) -> dict[str, Any]:
    """A run's nested `DistillConfig` values before the visitor's choices: the preset's, then the Space's `defaults`
    for the run controls. The app reads at most `limits.max_images_per_class` images per class."""
    values = space.presets[preset].values()
    initial = {"images_per_class": space.limits.max_images_per_class, **space.defaults}
    for name, dotted in CONTROL_FIELDS.items():
        if name in initial:
            values = merge(values, nested(dotted, initial[name]))
    return values


def initial_controls(space: SpaceConfig, preset: str) -> dict[str, Any]:
    """The run controls' initial values: the fields of the preset's config with the Space's `defaults`."""
    config = from_dict(preset_values(space, preset))
    values = {}
    for name, dotted in CONTROL_FIELDS.items():
        value = config
        for part in dotted.split("."):
            value = getattr(value, part)
        values[name] = value
    return values


def stages_of(button: str) -> tuple[str, ...]:
    """The stages a tab's button runs, as the CLI's command of that name (the app never fine-tunes: skipped)."""
    return STAGE_COMMANDS[button]


MAX_SEED = 2**32 - 1  # the app's seeds: what the Random seed button draws from, and exact in a JSON number
MAX_GUIDANCE_SCALE = 20.0  # the Guidance scale slider's range is [0, MAX_GUIDANCE_SCALE]
MAX_TEXT = 200  # characters in any text the app reads (dataset, classes, captions source)
NAME = re.compile(r"[\w.\-]{1,64}")  # a configuration or split name


def parse_int(value, name: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"`{name}` must be a whole number, got {value!r}") from None
    check(math.isfinite(number) and number == int(number), f"`{name}` must be a whole number, got {value!r}")
    return int(number)


def _float(value, name: str) -> float:
    """A number (its range is the config's to check); text is refused."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"`{name}` must be a number, got {value!r}") from None


def check_text(value, name: str, pattern: re.Pattern | None = None, max_length: int = MAX_TEXT) -> str:
    """A text control's value, stripped: at most `max_length` printable characters (matching `pattern` when given).

    Raises:
        ValueError: naming the control, the value (shortened) and what is expected.
    """
    text = "" if value is None else str(value).strip()
    shown = repr(text if len(text) <= 60 else text[:60] + "...")
    check(len(text) <= max_length, f"`{name}` must be at most {max_length} characters, got {len(text)}: {shown}")
    check(text.isprintable(), f"`{name}` must not contain control characters (newlines, tabs, ...), got {shown}")
    if pattern is not None and text:
        check(pattern.fullmatch(text) is not None, f"`{name}` may only contain letters, digits, '_', '.' and '-' "
                                                    f"(at most 64), got {shown}")
    return text


def check_hub_id(value: str, name: str) -> str:
    """`value` is a well-formed Hub repository id (`name` or `namespace/name`)."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except ValueError as err:
        raise ValueError(f"`{name}` must be a Hub dataset id such as frgfm/imagenette ({err})") from None
    return value


WHOLE = {"ipc", "seed", "steps", "images_per_class"}  # controls that take whole numbers


def run_config(space: SpaceConfig, run_dir: str | Path, *, dataset: str, classes: list[str] | None, preset: str,
               config_name: str | None = None, split: str | None = None, captions_from: str | None = None,
               streaming: bool = False, **controls: Any) -> DistillConfig:
    """The `DistillConfig` of a run from the UI's values: the preset's values, the Space's defaults, then the
    controls given (`CONTROL_FIELDS`: ipc, seed, images_per_class, strength, guidance_scale, steps; one left out,
    None or "" keeps its initial value), checked by the config itself and against the Space's limits.

    Raises:
        LimitError: a value over a limit (the message names it and the allowed maximum).
        ValueError: a malformed value, or one the config refuses (the message names it).
    """
    unknown = set(controls) - set(CONTROL_FIELDS)
    check(not unknown, f"unknown run controls {sorted(unknown)}; expected some of {sorted(CONTROL_FIELDS)}")
    classes = [check_text(c, "classes") for c in (classes or []) if str(c).strip()]
    check(preset in space.presets, f"`preset` must be one of {sorted(space.presets)}, got {preset!r}")
    check(bool(classes), "choose at least one class (Dataset tab)")
    values = preset_values(space, preset)
    for name, value in controls.items():
        if value is None or value == "":
            continue
        number = parse_int(value, name) if name in WHOLE else _float(value, name)
        values = merge(values, nested(CONTROL_FIELDS[name], number))
    values = merge(values, {
        "output": str(run_dir),
        "data": {"dataset": check_text(dataset, "dataset") or "sample", "classes": classes,
                 "config_name": check_text(config_name, "configuration", NAME) or None,
                 "split": check_text(split, "split", NAME) or "train", "streaming": bool(streaming)},
        "caption": {"from_hub": check_text(captions_from, "captions_from") or None},
    })
    config = from_dict(values)
    g = config.generation
    check(0 <= config.seed <= MAX_SEED, f"`seed` must be a whole number from 0 to {MAX_SEED}, got {config.seed}")
    check(g.guidance_scale <= MAX_GUIDANCE_SCALE,
          f"`guidance_scale` must be at most {MAX_GUIDANCE_SCALE:g} (this Space's range), got {g.guidance_scale}")
    check_selection(space, classes, config.data.max_images_per_class, ipc=config.ipc, steps=g.num_inference_steps)
    return config


def check_selection(space: SpaceConfig, classes: list[str] | None, images_per_class, *, ipc: int = 1,
                    steps: int = 1) -> int:
    """Checks a request against the per-run limits and returns the images per class (default: the limit).

    Raises:
        LimitError: naming every value over its limit and the allowed maximum.
    """
    lim = space.limits
    images = parse_int(images_per_class if images_per_class not in (None, "") else lim.max_images_per_class,
                  "images_per_class")
    check(images >= 1, f"source images per class must be at least 1, got {images}")
    over = []
    if len(classes or []) > lim.max_classes:
        over.append(f"{len(classes)} classes selected; this Space allows at most {lim.max_classes}")
    if ipc > lim.max_ipc:
        over.append(f"IPC {ipc} asked for; this Space allows at most {lim.max_ipc} images per class")
    if images > lim.max_images_per_class:
        over.append(f"{images} source images per class asked for; this Space uses at most {lim.max_images_per_class}")
    if steps > lim.max_steps:
        over.append(f"{steps} inference steps asked for; this Space allows at most {lim.max_steps}")
    if over:
        raise LimitError("Over this Space's limits: " + "; ".join(over) + ". Lower the value, or run vldd on your "
                         "own machine (`vldd distill`), which has no limits.")
    return images



def estimate_run_seconds(config: DistillConfig, stages: tuple[str, ...], gpu_seconds: dict[str, float]) -> int:
    """GPU seconds a run of `stages` needs: load + images x (caption + encode) + classes x IPC x denoising steps.

    Args:
        gpu_seconds: the preset's per-unit estimates (`PresetSpec.gpu_seconds`: load, caption, encode, step).
    """
    s, g = gpu_seconds, config.generation
    classes = len(config.data.classes or [])
    images = classes * config.data.max_images_per_class
    seconds = s.get("load", 0.0)
    if "caption" in stages and not config.caption.from_hub:
        seconds += images * s.get("caption", 0.0)
    if "prototypes" in stages:
        seconds += images * s.get("encode", 0.0) + classes * config.ipc * s.get("encode", 0.0)
    if "generate" in stages:
        steps = denoising_steps(g.num_inference_steps, g.strength)
        seconds += classes * config.ipc * steps * s.get("step", 0.0)
    return max(1, int(seconds + 0.999))


def class_seconds(config: DistillConfig, stages: tuple[str, ...], gpu_seconds: dict[str, float]) -> int:
    """GPU seconds of one class's call (every class has the same inputs: `images_per_class` images, IPC)."""
    one = dataclasses.replace(config.data, classes=(config.data.classes or [])[:1])
    return estimate_run_seconds(dataclasses.replace(config, data=one), stages, gpu_seconds)
