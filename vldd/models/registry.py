"""Models vldd builds itself, offline, behind ids that every loader accepts.

- `tiny://stable-diffusion`, `tiny://llava`: the tiny preset's random-weight test models (`vldd.models.tiny`).
- `shapes://sd15`, `shapes://llava-1.5-7b[?layers=N]`: the paper's architectures with random weights
  (`vldd.models.paper_shapes`), for measuring cost without downloading weights.

Example:
    >>> resolve_model("tiny://stable-diffusion")  # a directory, built once into ~/.cache/vldd/tiny/
    >>> resolve_model("llava-hf/llava-1.5-7b-hf")  # any other id is returned unchanged
    'llava-hf/llava-1.5-7b-hf'
"""

from __future__ import annotations

from pathlib import Path


def resolve_model(model_id: str, cache_dir: str | Path | None = None) -> str:
    """Turns a `tiny://` or `shapes://` id into the directory of the built model (building it if needed); other ids
    pass unchanged.

    Args:
        model_id: a `tiny://` id, a `shapes://` id (the paper's architectures with random weights, `vldd.models.paper_shapes`), a
            Hub id or a local directory.
        cache_dir: where the tiny models are kept; defaults to `~/.cache/vldd`.
    """
    if model_id.startswith("shapes://"):  # the paper's architectures with random weights (vldd.models.paper_shapes)
        from .paper_shapes import resolve_shapes

        return resolve_shapes(model_id, cache_dir)
    if not model_id.startswith("tiny://"):
        return model_id
    from .tiny import build_model

    return str(build_model(model_id, cache_dir))
