"""What the students train and are tested on: real splits and distilled sets as labelled rows (images undecoded until
read), classes matched by name, per-class selections and random subsets, and torch loaders over them. Shared with
`vldd.jobs.teacher`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...configs.base import check, fingerprint
from ...configs.evaluate import VAL_SPLIT_FALLBACKS
from ...core.runs import read_manifest
from ...data.sources import decode_image, find_column, open_dataset

# torch is imported where used, so that building the CLI stays fast.

logger = logging.getLogger(__name__)


@dataclass
class LabelledImages:
    """Rows of a `datasets.Dataset` with their student targets (0..C-1); images stay undecoded until read."""

    dataset: Any  # datasets.Dataset holding only the image column, as Image(decode=False)
    rows: list[int]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, positions) -> LabelledImages:
        return LabelledImages(self.dataset, [self.rows[i] for i in positions], [self.targets[i] for i in positions])


class TorchImages:  # a map-style dataset for torch's DataLoader
    def __init__(self, images: LabelledImages, transform):
        self.images, self.transform = images, transform
        self.column = images.dataset.column_names[0]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        value = self.images.dataset[self.images.rows[i]][self.column]
        return self.transform(decode_image(value)), self.images.targets[i]


def images_and_labels(dataset) -> tuple[Any, list[str], np.ndarray]:
    """Returns (image-only dataset with undecoded images, label names, label of every row)."""
    import datasets

    label_column = find_column(dataset, datasets.ClassLabel, None, "label")
    image_column = find_column(dataset, datasets.Image, None, "image")
    names = list(dataset.features[label_column].names)
    labels = np.asarray(dataset.select_columns([label_column]).with_format("numpy")[label_column])
    images = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    return images, names, labels


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a finished vldd run directory (its manifest and its `dataset/`)."""
    path = Path(path)
    return (path / "manifest.json").is_file() and (path / "dataset").is_dir()


def open_validation(real: str, split: str = "validation", *, config_name: str | None = None,
                    revision: str | None = None):
    """Opens the real split to test on; the default "validation" falls back to "valid", "test", then "val" (with a
    warning naming the split chosen).

    Returns:
        (dataset, the split name actually opened)
    """
    candidates = [split] + (list(VAL_SPLIT_FALLBACKS) if split == "validation" else [])
    first_error = None
    for name in candidates:
        try:
            dataset = open_dataset(real, name, config_name, revision)
        except ValueError as err:
            first_error = first_error or err
            continue
        if name != split:
            logger.warning("real dataset %r has no %r split; testing on its %r split instead", real, split, name)
        return dataset, name
    raise ValueError(f"cannot open a split to test on in real dataset {real!r}: tried {candidates} "
                     f"({first_error})") from first_error


def align_classes(distilled_names: list[str], distilled_labels: np.ndarray, real_names: list[str]
                  ) -> tuple[list[str], dict[int, int], list[int]]:
    """Matches the classes present in the distilled set to the real dataset's classes by label name.

    Returns:
        (class names in student output order, distilled label -> student target, real label id of each target)
    """
    present = sorted(set(int(v) for v in distilled_labels))
    check(bool(present), "the distilled set has no images")
    classes = [distilled_names[label] for label in present]
    missing = [name for name in classes if name not in real_names]
    check(not missing, f"{len(missing)} class(es) of the distilled set are not label names of the real dataset: "
                        f"{missing[:10]}{' ...' if len(missing) > 10 else ''}; the distilled set's names are "
                        f"{classes[:10]}{' ...' if len(classes) > 10 else ''}, the real set's "
                        f"{real_names[:10]}{' ...' if len(real_names) > 10 else ''} (give the distilled set's names "
                        "with `class_names`)")
    return classes, {label: i for i, label in enumerate(present)}, [real_names.index(n) for n in classes]


def rename_classes(names: list[str], path: str | Path) -> list[str]:
    """The distilled set's label names read through a `class_names` file.

    Args:
        names: the distilled set's label names, in label-id order (e.g. "00000", "00001", ...).
        path: a text file with one name per line, in label-id order (blank lines ignored), or a `.json` file holding
            such a list or an object mapping some of `names` to new names (the others keep theirs).
    """
    file = Path(path).expanduser()
    check(file.is_file(), f"`class_names` {str(path)!r} is not a file; expected one name per line, or a JSON list "
                           "or object")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"`class_names` {str(path)!r} is not valid JSON: {err}") from None
        if isinstance(value, dict):
            unknown = [k for k in value if k not in names]
            check(not unknown, f"`class_names` {str(path)!r} maps labels the distilled set does not have: "
                                f"{unknown[:10]}; its labels are {names[:10]}{' ...' if len(names) > 10 else ''}")
            new = [str(value.get(n, n)) for n in names]
        else:
            check(isinstance(value, list), f"`class_names` {str(path)!r} must hold a JSON list or object, got "
                                            f"{type(value).__name__}")
            new = [str(v).strip() for v in value]
    else:
        new = [line.strip() for line in text.splitlines() if line.strip()]
    check(len(new) == len(names), f"`class_names` {str(path)!r} holds {len(new)} names; the distilled set has "
                                   f"{len(names)} labels: {names[:10]}{' ...' if len(names) > 10 else ''}")
    twice = sorted({n for n in new if new.count(n) > 1})
    check(not twice, f"`class_names` {str(path)!r} gives two labels the same name: {twice[:10]}")
    return new


def select_classes(images, labels: np.ndarray, real_ids: list[int], per_class: int | None = None) -> LabelledImages:
    """The rows of the classes `real_ids` (target t = real label real_ids[t]), the first `per_class` of each."""
    rows, targets = [], []
    for target, label in enumerate(real_ids):
        found = np.flatnonzero(labels == label).tolist()
        found = found[:per_class] if per_class is not None else found
        rows += found
        targets += [target] * len(found)
    return LabelledImages(images, rows, targets)


def random_subset(pool: LabelledImages, counts: list[int], seed: int | list[int]) -> LabelledImages:
    """Draws `counts[t]` images of every target t from `pool` without replacement, with numpy's `default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(pool.targets)
    positions = []
    for target, count in enumerate(counts):
        available = np.flatnonzero(targets == target)
        check(len(available) >= count, f"the random baseline needs {count} real images of class {target}, the real "
                                         f"train split has {len(available)}")
        positions += sorted(rng.choice(available, size=count, replace=False).tolist())
    return pool.subset(positions)



def data_loader(images: LabelledImages, transform, batch_size: int, *, shuffle: bool, seed: int, workers: int,
                device):
    import torch

    # A last batch of one image would break batch norm in train mode; drop it then.
    drop_last = shuffle and len(images) % batch_size == 1 and len(images) > 1
    return torch.utils.data.DataLoader(
        TorchImages(images, transform), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed))


def cached_batches(loader, max_bytes: int = 1 << 30):
    """Decodes the (deterministic) test set once when it fits in `max_bytes`; else the loader is re-read."""
    dataset = loader.dataset
    sample, _ = dataset[0]
    if len(dataset) * sample.numel() * sample.element_size() > max_bytes:
        return loader
    return [(images, targets) for images, targets in loader]



@dataclass
class DistilledSet:
    """One distilled set to train on: a run directory's `dataset/` or a dataset named directly."""

    source: str  # as the user named it
    run_dir: Path | None
    manifest: dict[str, Any]
    images: Any  # image-only datasets.Dataset, undecoded
    names: list[str]
    labels: np.ndarray
    fingerprint: str | None  # names the set's content: a run's stage fingerprints, else datasets' fingerprint


def open_distilled(path: str, split: str) -> DistilledSet:
    """Opens a run directory's set (with its manifest) or the dataset `path` names, at `split`."""
    run_dir = Path(path) if is_run_dir(path) else None
    dataset = open_dataset(str(run_dir / "dataset")) if run_dir is not None else open_dataset(path, split)
    images, names, labels = images_and_labels(dataset)
    manifest = read_manifest(run_dir) if run_dir is not None else {}
    # A run rewrites dataset/ (with a new datasets fingerprint) on every rerun; its stage fingerprints name the inputs
    # of every image and change exactly when the images do.
    content = fingerprint(manifest["fingerprints"]) if manifest.get("fingerprints") else getattr(
        dataset, "_fingerprint", None)
    return DistilledSet(path, run_dir, manifest, images, names, labels, content)

