"""What a run reads: the sample, a Hub id, an uploaded zip or (where allowed) a local folder; the Dataset tab's
overview; and the run's source, opened once on the CPU and checked before any GPU call."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..configs.base import check
from ..configs.distill import DistillConfig
from .controls import check_hub_id, check_text
from .uploads import UploadError, UploadLimits, extract_upload


def resolve_dataset(dataset: str, upload: str | None, *, upload_dir: Path, allow_local_paths: bool,
                    limits: UploadLimits, uploads_cache: Path | None = None) -> str:
    """What to load: an uploaded zip (extracted), else `dataset` ("sample", a Hub id or, where allowed, a folder).

    With `uploads_cache` (Gradio's upload folder), the zip is removed from it once extracted or refused.
    """
    if upload:
        return str(open_upload(upload, upload_dir, limits, uploads_cache))
    dataset = check_text(dataset, "dataset") or "sample"
    if dataset == "sample" or (allow_local_paths and _is_local(dataset)):
        return dataset
    if _is_local(dataset):
        raise ValueError(f"{dataset!r} is a local path, and this app reads only Hub datasets, the sample and "
                         "uploaded zips (local folders only when it serves this machine alone: bound to localhost "
                         "without --share, or started with --allow-local-paths)")
    return check_hub_id(dataset, "dataset")


def open_upload(upload: str | Path, upload_dir: Path, limits: UploadLimits, uploads_cache: Path | None = None) -> Path:
    """An uploaded zip, extracted into the session's `upload_dir` once, and then (or once refused) removed from
    Gradio's `uploads_cache`, where it would otherwise stay for hours.

    Gradio names its copy of an upload by a hash of the content, so the copy's path names the extracted folder: a
    later event of the session that sends the same (since removed) upload finds the folder without the zip.
    """
    path = Path(upload)
    if uploads_cache is None or Path(uploads_cache).resolve() not in path.resolve().parents:
        return extract_upload(path, upload_dir, limits)  # not Gradio's copy: named by its content, and kept
    folder = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    if not path.is_file() and not (upload_dir / folder).is_dir():
        raise UploadError(f"{path.name!r} is no longer on the server (an upload is removed once it is unpacked, and "
                          "a new session starts empty); upload it again")
    try:
        return extract_upload(path, upload_dir, limits, folder_name=folder)
    finally:
        discard_upload(path, uploads_cache)


def discard_upload(path: str | Path, uploads_cache: str | Path) -> None:
    """Removes an upload from Gradio's cache, and its folder once empty; a path outside the cache is left alone."""
    path, cache = Path(path).resolve(), Path(uploads_cache).resolve()
    if cache in path.parents:
        path.unlink(missing_ok=True)
        if path.parent != cache:
            with contextlib.suppress(OSError):  # not empty: something else of Gradio's is there
                path.parent.rmdir()


def _is_local(name: str) -> bool:
    return name.startswith(("/", "~", ".")) or Path(name).exists()


def check_captions_source(captions_from: str | None, *, allow_local_paths: bool) -> None:
    """Refuses, where local paths are not allowed (a Space), published captions named by a path on the server (another
    session's run, say)."""
    captions_from = check_text(captions_from, "captions_from")
    if not captions_from or (allow_local_paths and _is_local(captions_from)):
        return
    if _is_local(captions_from):
        raise ValueError(f"published captions {captions_from!r} name a local path; this app reads captions from "
                         "Hub datasets only")
    check_hub_id(captions_from, "captions_from")


@dataclass
class DatasetOverview:
    class_names: list[str]  # every class of the dataset
    selected: list[str]  # the classes a run will use
    counts: list[list[Any]]  # rows: class, images in the split, images used, selected
    preview: list[tuple[Any, str]]  # (image, caption) per shown image, grouped by class
    message: str


def dataset_overview(dataset: str, *, classes: list[str] | None, images_per_class: int, num_default: int,
                     preview_per_class: int, config_name: str | None = None, split: str = "train",
                     streaming: bool = False, stream_dir: str | Path | None = None) -> DatasetOverview:
    """Opens a dataset and describes it: class names, per-class counts, a preview grid of the selected classes.

    Args:
        classes: the wanted classes (names or index strings); empty = the first `num_default`.
        streaming: read only what the preview needs (class names come from the features; totals stay unknown).
        stream_dir: where the streamed preview is copied (the session directory, deleted with it).
    """
    from ..configs.distill import DataConfig
    from ..data.sources import load_source

    every = None
    if streaming:
        names = _streamed_class_names(dataset, split, config_name)
    else:
        every = load_source(DataConfig(dataset=dataset, config_name=config_name, split=split))
        names = every.class_names
    wanted = [c for c in (classes or []) if c]
    if wanted:
        missing = [c for c in wanted if c not in names and not (c.isdigit() and int(c) < len(names))]
        check(not missing, f"classes {missing} are not in {dataset!r}; its classes are {names[:20]}"
                            + (" ..." if len(names) > 20 else ""))
        selected = [names[int(c)] if c not in names else c for c in wanted]
    else:
        selected = [name for i, name in enumerate(names) if every is None or every.indices[i]][:num_default]
    shown = load_source(DataConfig(dataset=dataset, config_name=config_name, split=split, classes=list(selected),
                                   max_images_per_class=preview_per_class, streaming=streaming),
                        stream_dir=stream_dir)
    preview = []
    for label in shown.classes:
        images, _, _ = shown.load_class(label)
        preview += [(image, names[label]) for image in images]
    if every is not None:
        counts = [[name, len(every.indices[i]), min(len(every.indices[i]), images_per_class), name in selected]
                  for i, name in enumerate(names)]
        size = f"{len(names)} classes, {every.dataset.num_rows} images"
    else:
        counts = [[name, None, images_per_class if name in selected else 0, name in selected] for name in names]
        size = f"{len(names)} classes (streamed: only the selected classes' first images are read)"
    message = f"**{dataset}** ({split}): {size}. Selected {len(selected)}: {', '.join(selected)}."
    return DatasetOverview(names, selected, counts, preview, message)


def _streamed_class_names(dataset: str, split: str, config_name: str | None) -> list[str]:
    import datasets

    from ..data.sources import find_column, open_dataset

    stream = open_dataset(dataset, split, config_name, streaming=True)
    if stream.features is None:
        raise ValueError(f"dataset {dataset!r} does not declare its features when streamed")
    return list(stream.features[find_column(stream, datasets.ClassLabel, None, "label")].names)


def open_source(config: DistillConfig, stream_dir: str | Path | None = None):
    """Opens a run's source once, on the CPU (a Hub source streamed into `stream_dir`, capped per class), and checks
    what can be checked before any GPU call: the classes exist, each has enough images for the IPC, and published
    captions (`caption.from_hub`) load and match the classes.

    Raises:
        ValueError: an unknown class, a class with too few images, unusable captions (the message says which).
    """
    from ..data.sources import load_source

    source = load_source(config.data, stream_dir=stream_dir)
    from ..jobs.distill import cluster_plan

    cluster_plan(config.resolve(source.profile)[0], source)
    if config.caption.from_hub:  # published captions: present, well-formed, and named like the source's classes
        from ..hub.captions import load_published_captions

        load_published_captions(config.caption.from_hub, class_names=source.class_names)
    return source

