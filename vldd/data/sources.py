"""Loading the source dataset: any `datasets` image-classification set, one class at a time.

Example:
    >>> source = load_source(DataConfig(dataset="sample"))
    >>> images, rows, skipped = source.load_class(source.classes[0])
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..configs.distill import DataConfig
from ..configs.profiles import Recognition, recognise
from .classnames import ClassNames, is_numeric, resolve_class_names

logger = logging.getLogger(__name__)

# What "this dataset cannot be loaded" looks like: missing repos, revisions, files, splits and configs (FileNotFoundError,
# ValueError), HTTP and auth errors (huggingface_hub's HfHubHTTPError is an OSError), offline mode (ConnectionError).
# Anything else (a TypeError, a KeyError) is a bug and keeps its traceback.
NOT_LOADABLE = (OSError, ValueError)
# What a corrupt or unreadable image file raises while decoding (PIL raises SyntaxError for some broken headers).
UNDECODABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
ORIENTATION = 0x0112  # the EXIF orientation tag
# Files an image folder may hold beside its images without being skipped images (datasets' metadata files).
_METADATA = {"metadata.csv", "metadata.jsonl", "metadata.parquet"}


@dataclass
class SourceDataset:
    """A source dataset ready to be read class by class; images stay undecoded until asked for."""

    dataset: object  # datasets.Dataset whose image column is Image(decode=False)
    source_id: str  # what the user asked for: Hub id, path, or "sample"
    image_column: str
    label_column: str
    class_names: list[str]  # every ClassLabel name of the source, in label order
    classes: list[int]  # the selected label ids, ascending
    indices: dict[int, list[int]]  # row indices per selected label (after the per-class cap)
    revision: str | None = None  # resolved dataset fingerprint / commit, for the manifest
    skipped: dict[int, int] = field(default_factory=dict)  # undecodable images per label, filled by load_class
    positions: dict[int, int] | None = None  # streamed sources: source row -> position in the local copy
    resolved_names: ClassNames | None = None  # the class names prompts and the text filter use (see vldd.data.classnames)
    profile: Recognition | None = None  # the recognised dataset profile and its evidence (see vldd.configs.profiles)

    @property
    def prompt_names(self) -> list[str]:
        """Per label, the name the captioning prompt and the text-prototype filter use (e.g. "tench, Tinca tinca")."""
        return self.resolved_names.names if self.resolved_names is not None else self.class_names

    def counts(self) -> dict[int, int]:
        return {label: len(rows) for label, rows in self.indices.items()}

    def load_class(self, label: int) -> tuple[list[Image.Image], list[int], int]:
        """Decodes one class's images as RGB.

        Returns:
            (images, row indices of those images, number of undecodable images skipped)
        """
        rows = self.indices[label]
        positions = [self.positions[r] for r in rows] if self.positions is not None else rows
        column = self.dataset.select(positions)[self.image_column] if rows else []
        images, kept, skipped = [], [], 0
        for row, value in zip(rows, column):
            try:
                images.append(decode_image(value))
                kept.append(row)
            except UNDECODABLE as err:  # corrupt or unreadable files are skipped and counted, never fatal
                skipped += 1
                logger.warning("skipping undecodable image at row %d of class %r: %s", row, self.class_names[label], err)
        self.skipped[label] = skipped
        return images, kept, skipped


def decode_image(value) -> Image.Image:
    """Decodes a `datasets` Image value (dict with bytes/path, or a PIL image) to RGB, upright.

    The EXIF orientation is applied (a phone photo stored sideways is turned upright). Transparent images (RGBA, LA,
    palette with transparency) are composited over white; grayscale, CMYK, 16-bit and palette images are converted.
    """
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict) and value.get("bytes") is not None:
        image = Image.open(io.BytesIO(value["bytes"]))
    elif isinstance(value, dict) and value.get("path"):
        image = Image.open(value["path"])
    else:
        raise ValueError(f"expected an image (bytes or path), got {type(value).__name__}")
    image.load()
    if image.getexif().get(ORIENTATION, 1) != 1:  # a camera's rotation flag: turn the pixels upright
        image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255).clip(0, 255).astype(np.uint8))
    return image.convert("RGB") if image.mode != "RGB" else image


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def is_run_directory(path: Path) -> bool:
    """Whether `path` is a vldd run directory (its manifest, or its config and stage work)."""
    return (path / "manifest.json").is_file() or ((path / "config.yaml").is_file() and (path / "work").is_dir())


def scan_image_folder(path: Path, split: str = "train") -> dict[str, int]:
    """Images per class folder of an image folder (its `split` sub-folder when it has one), before `datasets` reads it.

    Empty class folders and files that are not images (both of which `datasets` drops without a word) are listed
    once, per class, in a warning.

    Raises:
        ValueError: the folder holds no image, or a single class.
    """
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    root = path / split if (path / split).is_dir() else path
    extensions = set(ImageFolder.EXTENSIONS)
    images: dict[str, int] = {}
    others: dict[str, list[str]] = {}
    empty: list[str] = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        name = os.path.relpath(folder, root)
        count = 0
        for file in files:
            if os.path.splitext(file)[1].lower() in extensions:
                count += 1
            elif not file.startswith(".") and file not in _METADATA:
                others.setdefault(name, []).append(file)
        if count:
            images[name] = count
        elif not subfolders and folder != str(root):
            empty.append(name)
    if not images:
        found = sum(len(v) for v in others.values())
        example = next(iter(others.values()), [""])[0]
        raise ValueError(f"image folder {str(path)!r} holds no images (found {found} other files"
                         f"{f', e.g. {example!r}' if found else ''}); expected one sub-folder per class holding "
                         ".png/.jpg/... images")
    leaves = {Path(name).name for name in images}
    if len(images) > 1 and len(leaves) == 1:  # Tiny-ImageNet's own train layout: CLASS/images/*.JPEG
        raise ValueError(f"every image of image folder {str(path)!r} sits in a folder named {leaves.pop()!r} (e.g. "
                         f"{next(iter(images))!r}), and an image's class is the name of its own folder; move each "
                         "class's images up into its class folder")
    if len(images) == 1:
        (only, count), = images.items()
        found = (f"{count} images but no class sub-folders" if only == "." else
                 f"a single class ({only!r}, {count} images)")
        raise ValueError(f"image folder {str(path)!r} has {found}; expected one sub-folder per class and at least 2 "
                         "classes")
    if empty:
        logger.warning("image folder %r: %d empty class folder(s) left out (not classes of this source): %s",
                       str(path), len(empty), ", ".join(sorted(empty)[:20]) + (" ..." if len(empty) > 20 else ""))
    if others:
        listed = "; ".join(f"{name}: {len(files)} ({', '.join(sorted(files)[:3])}{', ...' if len(files) > 3 else ''})"
                           for name, files in sorted(others.items())[:20])
        logger.warning("image folder %r: skipped %d file(s) that are not images, per class: %s%s", str(path),
                       sum(len(v) for v in others.values()), listed, " ..." if len(others) > 20 else "")
    return images


def is_hub_dataset(dataset: str) -> bool:
    """Whether `open_dataset` reads `dataset` from the Hub: it is neither the embedded "sample" nor an existing local
    path (an image folder or a `save_to_disk` directory)."""
    return dataset != "sample" and not Path(dataset).expanduser().exists()


def open_dataset(dataset: str, split: str = "train", config_name: str | None = None, revision: str | None = None,
                 streaming: bool = False):
    """Opens `dataset` (Hub id, image folder, `save_to_disk` directory, or "sample") and returns one split.

    With `streaming`, returns an `IterableDataset` that reads rows as they are iterated.
    """
    import datasets

    path = Path(dataset).expanduser()
    if dataset != "sample" and path.is_dir():
        if is_run_directory(path):
            raise ValueError(f"{dataset!r} is a vldd run directory, not a source dataset; its distilled images are "
                             f"the saved dataset {str(path / 'dataset')!r} (give that path to use them as a source; "
                             f"`vldd evaluate {dataset}` evaluates them)")
        if not _is_saved_dataset(path):
            scan_image_folder(path, split)
    if streaming:
        if dataset == "sample" or (path.is_dir() and _is_saved_dataset(path)):
            return open_dataset(dataset, split, config_name, revision).to_iterable_dataset()
        kwargs = {"data_dir": str(path)} if path.is_dir() else {"name": config_name, "revision": revision}
        try:
            return datasets.load_dataset("imagefolder" if path.is_dir() else dataset, split=split, streaming=True,
                                         **kwargs)
        except NOT_LOADABLE as err:
            raise ValueError(f"could not stream dataset {dataset!r} (split {split!r}) ({type(err).__name__}: {err})"
                             ) from err
    if dataset == "sample":
        from .sample import load_sample

        return load_sample(split)
    if not is_hub_dataset(dataset):
        if not path.is_dir():
            raise ValueError(f"dataset path {dataset!r} is a file; expected a directory (image folder or saved dataset)")
        if _is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"split {split!r} not in saved dataset {dataset!r}; it has {sorted(loaded)}")
                return loaded[split]
            return loaded
        try:
            return datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
        except ValueError as err:
            raise ValueError(f"could not read split {split!r} of image folder {dataset!r}: {err}") from err
    try:
        return datasets.load_dataset(dataset, name=config_name, split=split, revision=revision)
    except NOT_LOADABLE as err:
        raise ValueError(
            f"could not load dataset {dataset!r} (split {split!r}): it is neither an existing local path nor a "
            f"loadable Hub dataset id ({type(err).__name__}: {err})"
        ) from err


def find_column(dataset, kind, wanted: str | None, what: str) -> str:
    """The `what` column (label, image) of `dataset`: `wanted` when given (checked), else the first feature of type
    `kind` (`datasets.ClassLabel`, `datasets.Image`); a one-line error naming the columns when there is none."""
    features = dataset.features
    if wanted is not None:
        if wanted not in features:
            raise ValueError(f"{what} column {wanted!r} not in dataset; columns are {list(features)}")
        return wanted
    for name, feature in features.items():
        if isinstance(feature, kind):
            return name
    raise ValueError(
        f"no {what} column found (expected a {kind.__name__} feature); columns are "
        f"{ {k: type(v).__name__ for k, v in features.items()} }; pass the column name explicitly"
    )


def _resolve_classes(wanted: list[str | int] | None, names: list[str]) -> list[int]:
    if wanted is None:
        return list(range(len(names)))
    labels = []
    for item in wanted:
        if isinstance(item, str) and item in names:
            labels.append(names.index(item))
        elif isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            index = int(item)
            if not 0 <= index < len(names):
                raise ValueError(f"class index {index} out of range; the dataset has {len(names)} classes")
            labels.append(index)
        else:
            raise ValueError(f"class {item!r} is not a label name of this dataset; names are {names[:20]}"
                             + (" ..." if len(names) > 20 else ""))
    if not labels:
        raise ValueError("`classes` selects no class; give at least one name or index")
    return sorted(set(labels))


def load_source(config: DataConfig, stream_dir: str | Path | None = None) -> SourceDataset:
    """Opens the source split, finds the image and label columns, and indexes the selected classes.

    Args:
        config: what to load and which classes/images to keep.
        stream_dir: where a streamed source's local copy is written (a new folder inside it); None = the system's
            temporary directory.
    """
    import datasets

    dataset = open_dataset(config.dataset, config.split, config.config_name, config.revision, config.streaming)
    if config.streaming:
        return _load_streamed(dataset, config, stream_dir)
    label_column = config.label_column
    if label_column is not None and label_column in dataset.features and not isinstance(
            dataset.features[label_column], datasets.ClassLabel):
        dataset = dataset.class_encode_column(label_column)  # string or int labels become a ClassLabel
    label_column = find_column(dataset, datasets.ClassLabel, label_column, "label")
    image_column = find_column(dataset, datasets.Image, config.image_column, "image")
    if not isinstance(dataset.features[image_column], datasets.Image):
        raise ValueError(f"column {image_column!r} is a {type(dataset.features[image_column]).__name__}, not an Image")
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    names = list(dataset.features[label_column].names)
    _check_classes(config.dataset, names)
    resolved = resolve_class_names(names, config.class_names, numeric_ok=config.numeric_names)
    classes = _resolve_classes(config.classes, names)
    labels = np.asarray(dataset.select_columns([label_column]).with_format("numpy")[label_column])
    indices = {}
    for label in classes:
        rows = np.flatnonzero(labels == label).tolist()
        if config.max_images_per_class is not None:
            rows = rows[: config.max_images_per_class]
        indices[label] = rows
    revision = getattr(dataset, "_fingerprint", None)
    profile = recognise_source(config.dataset, dataset, image_column, names, config.profile, resolved)
    return SourceDataset(dataset, config.dataset, image_column, label_column, names, classes, indices, revision,
                         resolved_names=resolved, profile=profile)


def _check_classes(dataset: str, names: list[str]) -> None:
    if len(names) < 2:
        raise ValueError(f"dataset {dataset!r} has {len(names)} class{'' if len(names) == 1 else 'es'} "
                         f"({', '.join(map(repr, names))}); distillation needs a source with at least 2 classes")


def image_sizes(dataset, image_column: str, count: int = 8) -> list[tuple[int, int]]:
    """(width, height) of up to `count` images spread evenly over `dataset` (headers only: nothing is decoded).

    `dataset` holds undecoded images (`Image(decode=False)`); unreadable ones are left out.
    """
    rows = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, min(count, len(dataset)))}) if len(dataset) else []
    sizes = []
    for value in dataset.select(rows)[image_column]:
        try:
            source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
            with Image.open(source) as image:
                sizes.append(image.size)
        except (*UNDECODABLE, KeyError, TypeError):
            continue
    return sizes


def recognise_source(source_id: str, dataset, image_column: str, names: list[str], override: str | None = None,
                     resolved: ClassNames | None = None) -> Recognition:
    """A source's dataset profile (`vldd.configs.profiles.recognise`) from its names, class count and a few images' size;
    its warnings are logged. Distillation and evaluation recognise their datasets with this one function.

    Args:
        source_id: the dataset as the user named it.
        dataset: its rows, images undecoded (`Image(decode=False)`).
        image_column: the image column.
        names: every class name, in label order (numeric ones named by a `data.class_names` file: the file's).
        override: `data.profile`, or None.
        resolved: the names as `resolve_class_names` resolved them (None = resolved here).
    """
    if resolved is None:
        try:
            resolved = resolve_class_names(names, numeric_ok=True)
        except ValueError:  # ambiguous ImageNet short names: not read as ImageNet classes here
            resolved = None
    if resolved is not None and resolved.rule == "override" and is_numeric(names):
        names = resolved.names  # numeric folders named by the user's file: those names are what the classes are
    recognition = recognise(source_id, names, image_sizes(dataset, image_column), override,
                            imagenet_classes=resolved is not None and resolved.rule == "imagenet")
    for warning in recognition.warnings:
        logger.warning("%s", warning)
    return recognition


def _load_streamed(stream, config: DataConfig, stream_dir: str | Path | None = None) -> SourceDataset:
    """Reads a streamed split only until every selected class has its images, into a local Arrow file.

    Row numbers are positions in the stream, so they match the non-streamed dataset's rows.
    """
    import tempfile

    import datasets
    from datasets.arrow_writer import ArrowWriter

    features = stream.features
    if features is None:
        raise ValueError(f"dataset {config.dataset!r} does not declare its features when streamed; "
                         "run without streaming")
    label_column = find_column(stream, datasets.ClassLabel, config.label_column, "label")
    image_column = find_column(stream, datasets.Image, config.image_column, "image")
    names = list(features[label_column].names)
    _check_classes(config.dataset, names)
    resolved = resolve_class_names(names, config.class_names, numeric_ok=config.numeric_names)
    classes = _resolve_classes(config.classes, names)
    cap = config.max_images_per_class
    wanted = {label: cap if cap is not None else float("inf") for label in classes}
    stream = stream.select_columns([image_column, label_column]).cast_column(image_column,
                                                                             datasets.Image(decode=False))
    local = datasets.Features({image_column: datasets.Image(decode=False), label_column: features[label_column],
                               "source_row": datasets.Value("int64")})
    if stream_dir is not None:
        Path(stream_dir).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="vldd-stream-", dir=stream_dir)) / "data.arrow"
    indices: dict[int, list[int]] = {label: [] for label in classes}
    with ArrowWriter(features=local, path=str(path)) as writer:
        kept = 0
        for row, example in enumerate(stream):
            label = example[label_column]
            if wanted.get(label, 0) > 0:
                wanted[label] -= 1
                indices[label].append(row)
                writer.write({image_column: example[image_column], label_column: label, "source_row": row})
                kept += 1
                if all(left <= 0 for left in wanted.values()):
                    break  # every selected class is full: stop reading the stream
        writer.finalize()
    local_dataset = datasets.Dataset.from_file(str(path))
    position = {row: i for i, row in enumerate(local_dataset["source_row"])}
    source = SourceDataset(local_dataset, config.dataset, image_column, label_column, names, classes, indices,
                           revision=None, resolved_names=resolved,
                           profile=recognise_source(config.dataset, local_dataset, image_column, names,
                                                    config.profile, resolved))
    source.positions = position
    return source
