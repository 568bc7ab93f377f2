"""Cards: the helpers every Hub card shares, and the fine-tuned model's card. Pure functions (no network).

The distilled and captions dataset cards are rendered in `vldd.hub.push` from `templates/dataset_card.md` and
`templates/captions_card.md`, the fine-tuned model's here from `templates/model_card.md`, all with these helpers.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

PAPER_BIBTEX = """@inproceedings{zou2025vlcp,
  title         = {Dataset Distillation via Vision-Language Category Prototype},
  author        = {Zou, Yawen and Li, Guang and Su, Duo and Wang, Zi and Yu, Jun and Zhang, Chao},
  booktitle     = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year          = {2025},
  eprint        = {2506.23580},
  archivePrefix = {arXiv}
}"""
MODEL_SUMMARY = "finetune.json"  # a fine-tuned model directory's summary, which its card is rendered from
SD15_LICENSE = "creativeml-openrail-m"
KNOWN_LICENSES = {"stable-diffusion-v1-5/stable-diffusion-v1-5": SD15_LICENSE,
                  "benjamin-paine/stable-diffusion-v1-5": SD15_LICENSE, "runwayml/stable-diffusion-v1-5": SD15_LICENSE}


def template(name: str) -> str:
    """A card template shipped in `vldd/hub/templates/`."""
    return resources.files("vldd.hub").joinpath("templates").joinpath(name).read_text(encoding="utf-8")


def md_cell(value: Any) -> str:
    """A value as one markdown table cell."""
    if value is None:
        text = "—"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value) if value else "[]"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def flatten(values: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as ("a.b", value) rows."""
    out = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out += flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def robust_text(robust: dict | None) -> str:
    """HLR, IOR (points) and LRS ([0, 1]) as "HLR 12.3 ± 1.0   IOR +4.5 ± 0.8   LRS 0.480 ± 0.010"; "" when none."""
    parts = []
    for name, sign, digits in (("hlr", "", 1), ("ior", "+", 1), ("lrs", "", 3)):
        value = (robust or {}).get(name)
        if value:
            parts.append(f"{name.upper()} {value['mean']:{sign}.{digits}f} ± {value['std']:.{digits}f}")
    return "   ".join(parts)


def size_text(n: int) -> str:
    """A byte count as KiB or MiB."""
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def is_hub_id(value: str | None) -> bool:
    """Whether `value` looks like a Hub repository id ("namespace/name")."""
    return bool(value) and not value.startswith(("tiny://", "shapes://")) and re.fullmatch(
        r"[\w.-]+/[\w.-]+", value) is not None


def render_model_card(summary: dict[str, Any], repo_id: str | None = None) -> str:
    """The model card (README.md) of a fine-tuned model, from `templates/model_card.md`. Pure.

    Args:
        summary: the model directory's `finetune.json` content.
        repo_id: the model repository, when published (used in the usage snippets).
    """
    from huggingface_hub import ModelCard, ModelCardData

    base, data, config = summary["base_model"], summary["data"], summary["config"]
    lora = summary["kind"] == "lora"
    tags = ["stable-diffusion", "stable-diffusion-diffusers", "text-to-image", "diffusers", "vldd",
            "dataset-distillation"] + (["lora"] if lora else [])
    card_data = ModelCardData(
        license=KNOWN_LICENSES.get(base), library_name="diffusers", pipeline_tag="text-to-image", tags=tags,
        base_model=base if is_hub_id(base) else None,
        datasets=[d for d in (data.get("dataset"), data.get("captions")) if is_hub_id(d)] or None)
    where = repo_id or summary["config"]["output"]
    # Where the data came from is in the "Training data" section, resolved; the table holds how it was trained.
    hidden = ("captions", "output", "push_to_hub", "private", "resume", "dataset", "config_name", "split")
    settings = [(k, md_cell(v)) for k, v in config.items() if k not in hidden]
    card = ModelCard.from_template(
        card_data, template_str=template("model_card.md"), title=f"{'LoRA' if lora else 'Fine-tuned'} {base} on "
        f"{data.get('dataset')} captions (vldd)", lora=lora, base=base, base_revision=summary.get("base_revision"),
        data=data, settings=settings, summary=summary, where=where, versions=list(summary["versions"].items()),
        bibtex=PAPER_BIBTEX, tiny=summary.get("tiny"), weights_size=size_text(summary["weights_bytes"]))
    return str(card)
