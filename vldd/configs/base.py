"""What every job's settings share: one validation helper, one nested merge, YAML reading and the fingerprint that
names a stage's inputs. Plain Python (no torch), like the rest of `vldd.configs`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

# Model ids that more than one job's defaults or presets name.
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the paper's Stable Diffusion: generation and fine-tuning
TINY_DIFFUSION = "tiny://stable-diffusion"  # random-weight test models built from configs (`vldd.models.tiny`)
TINY_CAPTIONER = "tiny://llava"
TINY_RESOLUTION = 64  # the tiny preset's image side in pixels: prototypes, generated images and fine-tuning


def check(ok: bool, message: str) -> None:
    """Raises ValueError(message) unless `ok`: every config's validation, one rule a line."""
    if not ok:
        raise ValueError(message)


def merge(base: dict, override: dict) -> dict:
    """`base` with `override` on top, nested mappings merged key by key (neither argument is changed)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path, what: str = "a run's config.yaml") -> dict[str, Any]:
    """A config file's nested values, with a one-line error naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(f"config file {str(path)!r} is not valid YAML ({problem}{where}); expected a mapping "
                         f"with the layout of {what}") from err
    check(isinstance(loaded, dict), f"config file {str(path)!r} must hold a mapping, got {type(loaded).__name__}")
    return loaded


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (dataclasses included): names a stage's inputs."""

    def default(obj):
        if dataclasses.is_dataclass(obj):
            return dataclasses.asdict(obj)
        return str(obj)

    blob = json.dumps(parts, sort_keys=True, default=default)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
