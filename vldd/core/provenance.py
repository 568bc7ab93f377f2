"""Where a run's parts came from, as recorded in manifests and cards: model commits, software versions, public names.

One home for what the manifest (`vldd distill`), the fine-tuned model's summary and the Hub cards all record.

Example:
    >>> resolve_revision("stable-diffusion-v1-5/stable-diffusion-v1-5")  # the cached commit, no network
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import re
from pathlib import Path

from .. import __version__

# The packages whose versions a manifest or card records (those installed).
PACKAGES = ("torch", "diffusers", "transformers", "datasets", "huggingface_hub", "accelerate", "peft", "scikit-learn",
            "numpy", "nltk")
_BUILT_IN = ("tiny://", "shapes://")  # models vldd builds itself: no Hub commit


def versions() -> dict[str, str]:
    """vldd's, Python's and the installed `PACKAGES`' versions."""
    out = {"vldd": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def resolve_revision(repo_id: str, revision: str | None = None, repo_type: str = "model", *,
                     remote: bool = False) -> str | None:
    """The commit a Hub id's `revision` points to; None for local paths and built-in models.

    Args:
        repo_id: a Hub id, a local directory, or a `tiny://` / `shapes://` id.
        revision: branch, tag or commit (None = the default branch); a 40-hex commit is returned as is.
        repo_type: "model" or "dataset".
        remote: ask the Hub when the local cache does not know (pinning before a load); False reads only the cache
            (recording what was loaded). When neither knows, `revision` is returned unchanged.
    """
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    if repo_id.startswith(_BUILT_IN) or Path(repo_id).expanduser().exists():
        return None
    import huggingface_hub
    from huggingface_hub import errors

    try:
        return huggingface_hub.resolve_revision(repo_id, repo_type=repo_type, revision=revision,
                                                local_files_only=not remote).resolved
    except (errors.RevisionResolutionError, errors.HFValidationError, OSError):  # unknown, gated, offline and uncached: the loader reports it better
        return revision


def is_local_path(value: str) -> bool:
    """Whether `value` names a local path rather than a Hub id (without touching the filesystem)."""
    return value.startswith(("/", "~", ".", "\\")) or re.match(r"^[A-Za-z]:[\\/]", value) is not None


def public_name(value: str | None) -> str | None:
    """What a card or published manifest may show: Hub ids and built-in models as they are, a local path (or an
    existing directory) cut to its last component, so no machine path is ever published."""
    if value is None or value.startswith(_BUILT_IN):
        return value
    if is_local_path(value) or Path(value).expanduser().exists():
        return Path(value).name or value
    return value
