"""Reading published captions: a captions dataset pushed with `push_captions` (or a run's `captions/`), its columns
checked, so another run's caption stage can reuse it (`caption.from_hub`) instead of captioning again.

Example:
    >>> captions = load_published_captions("<you>/imagenette-vldd-captions", class_names=names)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .names import scrub

CAPTION_COLUMNS = {"source_index": "int", "label": "class", "caption": "string", "captioner": "string",
                   "prompt": "string"}
REQUIRED_CAPTION_COLUMNS = ("source_index", "label", "caption")


def validate_captions(dataset, class_names: Sequence[str] | None = None):
    """Checks a captions dataset's columns (and label names, when given); returns it unchanged.

    Raises:
        ValueError: naming the missing or mistyped column, or the label-name mismatch.
    """
    import datasets

    features = dataset.features
    missing = [c for c in REQUIRED_CAPTION_COLUMNS if c not in features]
    if missing:
        raise ValueError(f"captions dataset is missing columns {missing}; it must have {list(CAPTION_COLUMNS)} "
                         f"(captioner and prompt optional), it has {list(features)}")

    def is_int(feature) -> bool:
        return isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))

    def is_str(feature) -> bool:
        return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")

    if not is_int(features["source_index"]):
        raise ValueError(f"captions column 'source_index' must be an integer, got {features['source_index']}")
    label = features["label"]
    if not (isinstance(label, datasets.ClassLabel) or is_int(label)):
        raise ValueError(f"captions column 'label' must be a ClassLabel or an integer, got {label}")
    for column in ("caption", "captioner", "prompt"):
        if column in features and not is_str(features[column]):
            raise ValueError(f"captions column {column!r} must be a string, got {features[column]}")
    if class_names is not None and isinstance(label, datasets.ClassLabel) and list(label.names) != list(class_names):
        raise ValueError(f"the captions' label names ({len(label.names)}: {label.names[:5]}...) differ from the "
                         f"source dataset's ({len(class_names)}: {list(class_names)[:5]}...); they were made from "
                         "another dataset")
    if dataset.num_rows and any(c is None for c in dataset["caption"]):
        raise ValueError("captions column 'caption' has empty (null) values")
    return dataset


def load_published_captions(repo_id_or_dir: str | Path, *, revision: str | None = None,
                            config_name: str | None = None, split: str = "train", token: str | None = None,
                            class_names: Sequence[str] | None = None):
    """Loads captions published with `push_captions` (or saved by a run) and validates their columns.

    Args:
        repo_id_or_dir: a Hub dataset id, a run directory (its `captions/` is used), a `save_to_disk` directory, or a
            local copy of a captions repository.
        revision: Hub revision (branch, tag or commit) to load.
        config_name: dataset configuration, when the repository has several.
        split: the split holding the captions.
        token: for private repositories; default the `huggingface_hub` login.
        class_names: the source dataset's label names; when given, the captions' names must match them.

    Returns:
        A `datasets.Dataset` with columns source_index, label, caption (and captioner, prompt when published).
    """
    import datasets

    path = Path(repo_id_or_dir).expanduser()
    if path.is_dir():
        if (path / "captions").is_dir() and (path / "manifest.json").is_file():
            path = path / "captions"
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"split {split!r} not in {str(path)!r}; it has {sorted(loaded)}")
                loaded = loaded[split]
        else:
            loaded = datasets.load_dataset(str(path), name=config_name, split=split)
    else:
        try:
            loaded = datasets.load_dataset(str(repo_id_or_dir), name=config_name, split=split, revision=revision,
                                           token=token)
        except Exception as err:
            raise ValueError(f"could not load captions {str(repo_id_or_dir)!r}: it is neither a local directory nor "
                             f"a loadable Hub dataset ({type(err).__name__}: {scrub(str(err), token)})") from err
    return validate_captions(loaded, class_names)
