"""The Evaluate tab: a quick hard-label evaluation of the session's distilled set, sized to the Space's limits."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..configs.base import check
from ..core.runs import read_json
from ..data.sources import is_hub_dataset
from .controls import parse_int
from .gpu import LimitError
from .settings import SpaceConfig


def evaluation_available() -> bool:
    try:
        from ..jobs.evaluate import evaluate  # noqa: F401
    except ImportError:
        return False
    return True


def prepare_eval_data(run_dir: str | Path, dest: str | Path, per_class: int, baseline: bool) -> Path:
    """Copies, on the CPU, what the quick evaluation reads of the real dataset: the first `per_class` validation
    images of each distilled class and, for the random baseline, the first `per_class` training images (a Hub source
    is streamed, never downloaded whole). Returns the saved `DatasetDict` (splits "validation", "train").
    """
    import datasets

    from ..configs.distill import load_config
    from ..configs.evaluate import VAL_SPLIT_FALLBACKS

    data = load_config(Path(run_dir) / "config.yaml").data
    dest = Path(dest)
    streaming = is_hub_dataset(data.dataset)

    def copy(split: str):
        from ..data.sources import load_source

        source = load_source(dataclasses.replace(data, split=split, max_images_per_class=per_class,
                                                 streaming=streaming), stream_dir=dest.parent / "stream")
        rows = [r for label in source.classes for r in source.indices[label]]
        positions = [source.positions[r] for r in rows] if source.positions is not None else rows
        table = source.dataset.select(positions).select_columns([source.image_column, source.label_column])
        table = table.rename_columns({source.image_column: "image", source.label_column: "label"})
        return table.cast_column("image", datasets.Image())

    splits, errors = {}, []
    for split in ("validation", *VAL_SPLIT_FALLBACKS):
        try:
            splits["validation"] = copy(split)
            break
        except ValueError as err:
            errors.append(f"{split}: {err}")
    check("validation" in splits, f"{data.dataset!r} has no split to test on ({'; '.join(errors)})")
    if baseline:
        splits["train"] = copy(data.split)
    shutil.rmtree(dest, ignore_errors=True)
    datasets.DatasetDict(splits).save_to_disk(str(dest))
    return dest


def eval_settings(space: SpaceConfig, epochs, random_baseline: bool) -> dict[str, Any]:
    """The quick evaluation's EvalConfig values, with `epochs` checked against the limit."""
    e = space.evaluation
    epochs = parse_int(epochs, "epochs")
    check(epochs >= 1, f"`epochs` must be >= 1, got {epochs}")
    if epochs > e["max_epochs"]:
        raise LimitError(f"{epochs} epochs asked for; this Space's quick evaluation allows at most {e['max_epochs']}")
    return {"protocol": e["protocol"], "student": e["student"], "student_width": e["student_width"],
            "image_size": e["image_size"], "epochs": epochs, "repeats": e["repeats"],
            "baselines": ["random"] if random_baseline else [], "num_workers": 0, "val_per_class": e["val_per_class"]}


def check_evaluable(run_dir: str | Path) -> None:
    """Raises ValueError when the session has no distilled set yet (checked before any GPU call)."""
    if not (Path(run_dir) / "dataset").is_dir():
        raise ValueError("there is no distilled set to evaluate yet: run the Generate tab first")


def estimate_eval_seconds(run_dir: str | Path, settings: dict[str, Any], space: SpaceConfig) -> int:
    """GPU seconds of the quick evaluation: load + epochs x (training + test images) x seconds per image-epoch."""
    manifest = read_json(Path(run_dir) / "manifest.json", default={})
    classes = len((manifest.get("source") or {}).get("classes", [])) or 1
    ipc = (manifest.get("config") or {}).get("ipc", 1)
    sets = 1 + len(settings["baselines"])
    per = space.evaluation["gpu_seconds"]
    images = classes * ipc * sets + classes * space.evaluation["val_per_class"]
    return max(1, int(per["load"] + settings["epochs"] * images * per["image_epoch"] + 0.999))


@dataclass
class EvalView:
    plot_path: Path
    summary: str


def quick_evaluate(run_dir: str | Path, settings: dict[str, Any]) -> EvalView:
    """Trains a small student on the distilled set (and a random real subset) and tests it on real images."""
    from ..jobs.evaluate import EvalConfig, evaluate

    run_dir = Path(run_dir)
    result = evaluate(EvalConfig(distilled=str(run_dir), **settings), progress=True)
    from ..jobs.reports import evaluation_lines

    lines = [line for line in evaluation_lines(result) if not line.startswith("results:")]
    return EvalView(result.plot_path, f"{lines[0]}\n```\n" + "\n".join(line.strip() for line in lines[1:]) + "\n```")

