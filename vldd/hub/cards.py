"""Every Hub card vldd writes, rendered from `templates/`: the distilled set's (`dataset_card.md`), the captions'
(`captions_card.md`) and the fine-tuned model's (`model_card.md`), with the helpers they share. Pure functions (no
network): `vldd.hub.push` loads what is on the Hub and commits what these return.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .. import __version__
from ..core.provenance import is_local_path
from .names import DEFAULT_ENDPOINT, source_dataset, source_short_name

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
DISTILLED_COLUMNS = {  # column -> meaning, for the card (columns a run lacks are left out)
    "image": "the synthetic image",
    "label": "class id; `ClassLabel` with every class name of the source dataset, so ids match the source",
    "class_name": "the class name (the source's label name)",
    "prompt_class_name": "the class name the captioning prompt and the text-prototype filter used (for ImageNet "
                         "sources the full ImageNet name, e.g. `tench, Tinca tinca`)",
    "prompt": "the text prototype the image was generated from",
    "cluster": "index of the image prototype (k-means cluster) within its class",
    "cluster_size": "number of source images in that cluster (after outlier removal)",
    "seed": "the run's seed",
    "source_dataset": "the source dataset",
    "source_row": "source row whose caption became the prompt (-1 when a fallback prompt was used)",
    "text_fallback": "which fallback made the prompt when no description scored (empty when none was needed)",
}
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


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


@dataclass
class PublishedRun:
    """One configuration of a distilled-set repository, as the card describes it."""

    config_name: str
    manifest: dict[str, Any]  # the run's manifest, as published
    num_rows: int
    preview_url: str | None = None  # where the preview grid can be fetched, None when not uploaded


def size_category(num_rows: int) -> str:
    """The Hub's `size_categories` value for a row count."""
    for bound, name in SIZE_CATEGORIES:
        if num_rows < bound:
            return name
    return "n>1B" if num_rows < 10_000_000_000 else "n>1T"


def _hub_link(dataset: str) -> str:
    if "/" in dataset and not is_local_path(dataset):
        return f"[`{dataset}`]({DEFAULT_ENDPOINT}/datasets/{dataset})"
    return f"`{dataset}`"


def _mean_std(result: dict, key: str) -> str:
    value = result.get(key)
    if isinstance(value, dict):
        mean, std = value.get("mean"), value.get("std")
    else:
        mean, std = result.get(f"{key}_mean", value), result.get(f"{key}_std")
    if not isinstance(mean, (int, float)):
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if isinstance(std, (int, float)) else f"{mean:.2f}"


def evaluation_rows(results: list[dict]) -> list[dict]:
    """One row per result, then one per baseline trained under the same recipe (e.g. a random real subset)."""
    shown = {"protocol", "student", "best", "best_mean", "best_std", "final", "final_mean", "final_std",
             "results_file", "robust"}
    rows = []
    for result in results:
        details = "; ".join(f"{k}: {md_cell(v)}" for k, v in result.items()
                            if k not in shown and not isinstance(v, (dict, list)))
        common = {"protocol": md_cell(result.get("protocol")), "student": md_cell(result.get("student"))}
        robust = result.get("robust") if isinstance(result.get("robust"), dict) else None
        rows.append({**common, "data": "this dataset", "best": _mean_std(result, "best"),
                     "final": _mean_std(result, "final"), "robust": robust_text(robust) or "—", "details": details})
        for name, baseline in (result.get("baselines") or {}).items():
            if isinstance(baseline, dict):
                rows.append({**common, "data": f"baseline: {md_cell(name)}", "best": _mean_std(baseline, "best"),
                             "final": _mean_std(baseline, "final"), "robust": "—", "details": "same recipe"})
    return rows


def _license(manifests: Sequence[dict]) -> tuple[str | list[str], bool]:
    """The card's licence (the sources'), and whether it is unknown."""
    found = {(m.get("source") or {}).get("license") for m in manifests}
    if None in found or not found:
        return "unknown", True
    return (found.pop(), False) if len(found) == 1 else (sorted(found), False)


def _class_list(names: list[str], prompt_names: list[str], classes: list[int]) -> str:
    """"name (id)" per class; where the prompts named a class otherwise, "name (id): prompt name" joined by "; "."""
    renamed = any(prompt_names[c] != names[c] for c in classes if c < min(len(names), len(prompt_names)))
    if not renamed:
        return ", ".join(f"{names[c]} ({c})" if c < len(names) else str(c) for c in classes)
    return "; ".join(f"{names[c]} ({c}): {prompt_names[c]}" if c < len(names) else str(c) for c in classes)


def _run_context(run: PublishedRun, default_config: str) -> dict[str, Any]:
    m = run.manifest
    source, config = m.get("source") or {}, m.get("config") or {}
    names = source.get("class_names") or []
    prompt_names = source.get("prompt_class_names") or names
    classes = source.get("classes") or []
    models = [(role, info.get("id"), info.get("revision")) for role, info in (m.get("models") or {}).items()
              if isinstance(info, dict)]
    hyper = [(k, md_cell(v)) for k, v in flatten(config) if k != "output"]
    results = m.get("evaluation") or []
    return {
        "name": run.config_name, "is_default": run.config_name == default_config, "rows": run.num_rows,
        "ipc": config.get("ipc"), "seed": config.get("seed"), "tiny": bool(m.get("tiny")),
        "source": _hub_link(source_dataset(m)), "source_config": source.get("config_name"),
        "split": source.get("split"), "revision": source.get("revision") or source.get("fingerprint"),
        "num_classes": len(classes), "num_source_classes": len(names),
        "class_list": _class_list(names, prompt_names, classes),
        "names_from": source.get("class_names_from"),
        "models": [(role, md_cell(mid), md_cell(rev or "not recorded")) for role, mid, rev in models],
        "hyperparameters": hyper, "seeds": [(k, md_cell(v)) for k, v in (m.get("seeds") or {}).items()],
        "versions": [(k, md_cell(v)) for k, v in (m.get("versions") or {}).items()],
        "timings": [(k, md_cell(v)) for k, v in (m.get("timings") or {}).items()],
        "vldd_version": m.get("vldd_version"), "preview_url": run.preview_url,
        "evaluation": evaluation_rows(results) if results else None,
        "ablation": ({"variant": md_cell(m["ablation"].get("variant")), "changes": md_cell(m["ablation"].get("changes"))}
                     if isinstance(m.get("ablation"), dict) else None),
    }


def _ablations(runs: Sequence[PublishedRun], repo_id: str) -> list[dict[str, Any]]:
    """The ablations (`vldd ablate`) the configurations belong to, each with every variant it evaluated: name, what
    it changes, its configurations (a link where pushed to this repository), scores; the baselines last."""
    pushed = {r.config_name for r in runs}
    found: dict[str, dict[str, Any]] = {}
    for run in runs:
        ablation = run.manifest.get("ablation")
        if not isinstance(ablation, dict) or not isinstance(ablation.get("variants"), list):
            continue
        key = json.dumps([v.get("config_names") for v in ablation["variants"]])
        entry = found.setdefault(key, {"recipe": md_cell(", ".join(
            str(x) for x in (f"{ablation.get('protocol')}-label protocol", ablation.get("student"),
                             f"{ablation.get('image_size')} px", f"{ablation.get('epochs')} epochs",
                             f"{ablation.get('repeats')} repeat(s)",
                             f"seeds {', '.join(map(str, ablation.get('seeds') or []))}"))),
            "members": [], "rows": []})
        entry["members"].append(run.config_name)
        if entry["rows"]:
            continue
        for v in ablation["variants"]:
            names = v.get("config_names") or []
            configs = ", ".join(f"[`{n}`]({DEFAULT_ENDPOINT}/datasets/{repo_id}/viewer/{n})" if n in pushed
                                else f"`{n}` (not pushed)" for n in names) or "—"
            scores = {k: v.get(k) for k in ("hlr_mean", "hlr_std", "ior_mean", "ior_std", "lrs_mean", "lrs_std")}
            robust = {k: {"mean": scores[f"{k}_mean"], "std": scores[f"{k}_std"]} for k in ("hlr", "ior", "lrs")
                      if isinstance(scores[f"{k}_mean"], (int, float))}
            entry["rows"].append({"name": md_cell(v.get("name")), "changes": md_cell(v.get("changes")),
                                  "configs": configs, "best": _mean_std(v, "best"), "final": _mean_std(v, "final"),
                                  "robust": robust_text(robust) or "—"})
    for entry in found.values():
        entry["members"] = ", ".join(f"`{name}`" for name in entry["members"])
    return list(found.values())


def render_dataset_card(runs: Sequence[PublishedRun], repo_id: str, *, default_config: str,
                        metadata: dict[str, Any] | None = None) -> str:
    """Renders the distilled-set card (YAML metadata + markdown body) from `templates/dataset_card.md`. Pure.

    Args:
        runs: the configurations of the repository, each with its published manifest.
        repo_id: the repository ("namespace/name").
        default_config: the configuration `load_dataset(repo_id)` loads.
        metadata: `configs` and `dataset_info` written by `push_to_hub`, kept verbatim in the YAML.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    if not runs:
        raise ValueError("`runs` must hold at least one configuration")
    manifests = [r.manifest for r in runs]
    license_, unknown_license = _license(manifests)
    sources = sorted({source_dataset(m) for m in manifests})
    ipcs = sorted({m["config"]["ipc"] for m in manifests})
    short = ", ".join(source_short_name(s) for s in sources)
    data = DatasetCardData(
        license=license_, task_categories=["image-classification"],
        size_categories=[size_category(max(r.num_rows for r in runs))], source_datasets=sources,
        pretty_name=f"{short} distilled with VLCP (vldd)",
        tags=["dataset-distillation", "vldd", *(f"ipc-{n}" for n in ipcs), "synthetic"],
        **(metadata or {}))
    ordered = sorted(runs, key=lambda r: (r.config_name != default_config, r.config_name))
    card = DatasetCard.from_template(
        data, template_str=template("dataset_card.md"), repo_id=repo_id, title=data.pretty_name,
        sources=[_hub_link(s) for s in sources], unknown_license=unknown_license, license_name=license_,
        default_config=default_config, runs=[_run_context(r, default_config) for r in ordered],
        columns=[(c, DISTILLED_COLUMNS.get(c, "")) for c in _column_names(metadata, default_config)],
        bibtex=PAPER_BIBTEX, vldd_version=__version__, any_tiny=any(m.get("tiny") for m in manifests),
        ablations=_ablations(ordered, repo_id))
    return str(card)


def _column_names(metadata: dict | None, config_name: str) -> list[str]:
    """Column names of a configuration from `dataset_info`, else vldd's standard columns."""
    info = (metadata or {}).get("dataset_info")
    infos = info if isinstance(info, list) else [info] if isinstance(info, dict) else []
    for item in infos:
        if item.get("config_name", "default") == config_name and item.get("features"):
            return [f["name"] for f in item["features"] if "name" in f]
    return list(DISTILLED_COLUMNS)


def render_captions_card(manifest: dict[str, Any], repo_id: str, num_rows: int, *,
                         metadata: dict[str, Any] | None = None) -> str:
    """Renders the captions card from `templates/captions_card.md`. Pure.

    Args:
        manifest: the (published) manifest of the run the captions come from.
        repo_id: the repository ("namespace/name").
        num_rows: number of captions.
        metadata: `configs` and `dataset_info` written by `push_to_hub`, kept verbatim in the YAML.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    license_, unknown_license = _license([manifest])
    source_id = source_dataset(manifest)
    source, config = manifest.get("source") or {}, manifest.get("config") or {}
    captioner = (manifest.get("models") or {}).get("captioner") or {}
    data = DatasetCardData(
        license=license_, task_categories=["image-to-text"], size_categories=[size_category(num_rows)],
        source_datasets=[source_id], pretty_name=f"{source_short_name(source_id)} captions (vldd)",
        tags=["vldd", "captions", "dataset-distillation", "synthetic"], **(metadata or {}))
    caption_settings = [(k, md_cell(v)) for k, v in flatten(config.get("caption") or {}) if k not in ("from_hub",)]
    card = DatasetCard.from_template(
        data, template_str=template("captions_card.md"), repo_id=repo_id, title=data.pretty_name,
        source=_hub_link(source_id), source_id=source_id, source_config=source.get("config_name"),
        split=source.get("split"),
        revision=source.get("revision") or source.get("fingerprint"), num_rows=num_rows,
        num_classes=len(source.get("classes") or []), captioner_id=md_cell(captioner.get("id")),
        captioner_revision=md_cell(captioner.get("revision") or "not recorded"), caption_settings=caption_settings,
        versions=[(k, md_cell(v)) for k, v in (manifest.get("versions") or {}).items()], tiny=bool(manifest.get("tiny")),
        unknown_license=unknown_license, license_name=license_, bibtex=PAPER_BIBTEX, vldd_version=__version__)
    return str(card)
