"""What the Captions, Prototypes and Generate tabs show of a run, read from its run directory."""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..configs.distill import DistillConfig
from ..core.runs import read_json, result_file, work_dir, write_text


def _result(run_dir: Path, stage: str, label: int, suffix: str) -> Path:
    return result_file(work_dir(run_dir, stage), label, suffix)


def _classes(run_dir: Path) -> list[tuple[int, str]]:
    source = read_json(Path(run_dir) / "manifest.json", default={}).get("source") or {}
    return [(label, source["class_names"][label]) for label in source.get("classes", [])]


def _thumbnail(image, size: int = 56) -> str:
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass
class CaptionView:
    table_html: str  # thumbnails, classes and captions
    csv_path: Path  # every caption, for download
    rows: int


def caption_view(config: DistillConfig, max_rows_per_class: int = 20, source=None) -> CaptionView:
    """The captions of a run as an HTML table with thumbnails (first rows per class) and a CSV of all of them.

    Args:
        source: the run's source, already opened (`open_source`); None = opened here.
    """
    from ..data.sources import load_source

    run_dir = Path(config.output)
    source = source if source is not None else load_source(config.data)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["source_row", "label", "class_name", "caption"])
    cells, total = [], 0
    for label, name in _classes(run_dir):
        record = read_json(_result(run_dir, "caption", label, ".json"))
        if record is None:
            continue
        for row, caption in zip(record["rows"], record["captions"]):
            writer.writerow([row, label, name, caption])
        total += len(record["rows"])
        shown = dict(zip(record["rows"][:max_rows_per_class], record["captions"]))
        if label in source.indices:
            head = dataclasses.replace(source, indices={label: [r for r in source.indices[label] if r in shown]})
            images, rows, _ = head.load_class(label)
            for image, row in zip(images, rows):
                cells.append(f'<tr><td><img src="{_thumbnail(image)}" alt="source row {row}"></td>'
                             f"<td>{html.escape(name)}</td><td>{row}</td><td>{html.escape(shown[row])}</td></tr>")
    csv_path = run_dir / "captions.csv"
    write_text(csv_path, out.getvalue())
    table = ('<table class="vldd-captions"><thead><tr><th>image</th><th>class</th><th>source row</th>'
             f'<th>caption</th></tr></thead><tbody>{"".join(cells)}</tbody></table>')
    return CaptionView(table, csv_path, total)


@dataclass
class PrototypeView:
    clusters: list[list[Any]]  # rows: class, cluster, images, outliers dropped (class), score, fallback
    images: list[tuple[Any, str]]  # decoded prototypes with captions
    highlighted: list[tuple[str, str | None]]  # chosen descriptions, top words marked "top word"
    summary: str


def highlight(prompt: str, top_words: list[tuple[str, int]] | list[list]) -> list[tuple[str, str | None]]:
    """Splits `prompt` into (text, "top word" | None) segments, marking the top words the way the score counts them
    (case-sensitive substrings)."""
    words = sorted({w for w, _ in top_words if w and w in prompt}, key=len, reverse=True)
    if not words:
        return [(prompt, None)]
    segments, last = [], 0
    for match in re.finditer("|".join(re.escape(w) for w in words), prompt):
        if match.start() > last:
            segments.append((prompt[last:match.start()], None))
        segments.append((match.group(), "top word"))
        last = match.end()
    if last < len(prompt):
        segments.append((prompt[last:], None))
    return segments


def prototype_view(run_dir: str | Path, decoded: dict[int, list] | None = None) -> PrototypeView:
    """Cluster sizes, outliers, decoded prototypes (per label, when given) and each cluster's chosen description."""
    import torch

    run_dir = Path(run_dir)
    clusters, images, highlighted, lines = [], [], [], []
    for label, name in _classes(run_dir):
        path = _result(run_dir, "prototypes", label, ".pt")
        texts = read_json(_result(run_dir, "text", label, ".json"), default=[])
        if not path.is_file():
            continue
        protos = torch.load(path, weights_only=True)
        outliers = sum(1 for a in protos["assignment"] if a < 0)
        sizes = protos["cluster_sizes"]
        lines.append(f"**{name}**: {len(protos['assignment'])} images, {outliers} outliers dropped, "
                     f"{len(sizes)} clusters of {', '.join(map(str, sizes))} images")
        pictures = (decoded or {}).get(label, [])
        for c, size in enumerate(sizes):
            text = texts[c] if c < len(texts) else {}
            clusters.append([name, c, size, outliers, text.get("score"), text.get("fallback") or ""])
            if c < len(pictures):
                images.append((pictures[c], f"{name} · prototype {c} ({size} images)"))
            if text:
                highlighted.append((f"{name} · cluster {c} ({size} images): ", "cluster"))
                highlighted += highlight(text["prompt"], text["top_words"])
                highlighted.append(("\n\n", None))
    return PrototypeView(clusters, images, highlighted, "\n\n".join(lines))


def gallery(run_dir: str | Path) -> list[tuple[str, str]]:
    """The generated images, class by class, each captioned with its class and prompt."""
    run_dir = Path(run_dir)
    items = []
    for label, name in _classes(run_dir):
        texts = read_json(_result(run_dir, "text", label, ".json"), default=[])
        folder = _result(run_dir, "generate", label, "")  # the class's images, one file per prototype
        for c, text in enumerate(texts):
            path = folder / f"{c:04d}.png"
            if path.is_file():
                items.append((str(path), f"{name} #{c}: {text['prompt']}"))
    return items

