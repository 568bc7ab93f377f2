"""Class names for the captioning prompt and the text-prototype filter (docs/faithfulness.md, "Class names").

The official code names every class by its full ImageNet synonym string ("garbage truck, dustcart"), looked up from
the class folder's WordNet id. Sources label their classes differently: WordNet ids (image folders,
Tiny-ImageNet), short names (`frgfm/imagenette`: "garbage truck"), or names with underscores (CIFAR-100's
"aquarium_fish"). `resolve_class_names` turns any of these into the names the paper's code would have used. The
ImageNet table is timm's (`timm.data.ImageNetInfo`), equal to the official `IMAGENET2012_CLASSES` except that the
official table spells the second "crane" (n03126707, the machine) "crane2".

Example:
    >>> resolve_class_names(["n01440764", "n03417042"]).names
    ['tench, Tinca tinca', 'garbage truck, dustcart']
    >>> resolve_class_names(["tench", "English springer"]).names
    ['tench, Tinca tinca', 'English springer, English springer spaniel']
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

WNID = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class ClassNames:
    """The names prompts and the text filter use, one per source class, and how they were found."""

    names: list[str]  # in label order
    rule: str  # "override" (user's list), "imagenet" (ImageNet names from the table), "labels" (the label names)
    wnids: list[str | None]  # the ImageNet WordNet id of each class, when known
    origin: str = "the source's labels"  # where the names came from, in words (for the manifest and the card)


@functools.lru_cache(maxsize=1)
def _imagenet():
    """(ImageNet-1K wnids in index order, wnid -> full name for 1K, ImageNet-22K info)."""
    from timm.data import ImageNetInfo

    one_k = ImageNetInfo()
    wnids = list(one_k.label_names())
    return wnids, {w: one_k.label_name_to_description(w) for w in wnids}, ImageNetInfo("imagenet-22k")


@functools.lru_cache(maxsize=1)
def _lookups() -> list[dict[str, list[str]]]:
    """ImageNet-1K name -> wnids tables, most exact first: full name, first synonym (both as written), full name or
    first synonym case-folded, any synonym case-folded."""
    _, full, _ = _imagenet()
    tables: list[dict[str, list[str]]] = [{}, {}, {}, {}]
    for wnid, name in full.items():
        synonyms = name.split(", ")
        keys = [[name], [synonyms[0]], {name.casefold(), synonyms[0].casefold()}, {s.casefold() for s in synonyms}]
        for table, names in zip(tables, keys):
            for key in names:
                table.setdefault(key, []).append(wnid)
    return tables


def imagenet_name(wnid: str) -> str | None:
    """The full ImageNet name of a WordNet id (ImageNet-1K, else ImageNet-22K); None when neither has it."""
    _, full, in22k = _imagenet()
    if wnid in full:
        return full[wnid]
    try:
        return in22k.label_name_to_description(wnid)
    except KeyError:
        return None


def _candidates(name: str, every: bool = False) -> list[str]:
    """ImageNet classes a label may denote: its wnid, else those of the most exact lookup that knows it ("Cardigan"
    is the corgi, "cardigan" the sweater, "CARDIGAN" either); with `every`, those of all lookups."""
    if WNID.fullmatch(name):
        return [name] if imagenet_name(name) is not None else []
    full, first, folded, any_synonym = _lookups()
    found = [full.get(name, []), first.get(name, []), folded.get(name.casefold(), []),
             any_synonym.get(name.casefold(), [])]
    return [w for f in found for w in f] if every else next((f for f in found if f), [])


def read_class_names(override: str | Path | Sequence[str]) -> list[str]:
    """A user's class names: a file path (one name per line, blank lines ignored) or a list of names."""
    if isinstance(override, (str, Path)):
        path = Path(override).expanduser()
        if not path.is_file():
            raise ValueError(f"`data.class_names` {str(override)!r} is not a file; give a file with one class name per "
                             "line (ImageNet names contain commas) or a list of names in the YAML config")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    names = list(override)
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"`data.class_names` must hold non-empty strings, got {bad[:5]}")
    return [n.strip() for n in names]


def _loose(name: str) -> str:
    """A name compared loosely: case-folded, "_" and "-" read as spaces."""
    return " ".join(re.sub(r"[_\-]", " ", name).casefold().split())


def is_numeric(labels: Sequence[str]) -> bool:
    """Whether every label is only digits ("00000", "7"): folder numbers, not names."""
    return bool(labels) and all(str(label).strip().isdigit() for label in labels)


def _pairs(labels: list[str], names: list[str], lines: Sequence[int]) -> str:
    return ", ".join(f"line {k + 1} {names[k]!r} -> class {labels[k]!r} ({k})" if k < len(labels) else
                     f"line {k + 1} {names[k]!r} -> no class" for k in lines)


def _check_names_file(labels: list[str], names: list[str], auto: list[str]) -> None:
    """Refuses a names file that names a class of the source at another class's place (another order)."""
    where: dict[str, int] = {}
    for i, label in enumerate(labels):
        for key in (label, auto[i], auto[i].split(", ")[0]):
            where.setdefault(_loose(key), i)

    def found(name: str) -> int | None:  # plurals too: the official CIFAR-100 list says "apples", "poppies"
        loose = _loose(name)
        variants = [loose, loose[:-3] + "y" if loose.endswith("ies") else "",
                    loose[:-2] if loose.endswith("es") else "", loose[:-1] if loose.endswith("s") else ""]
        return next((where[v] for v in variants if v in where), None)

    wrong = [k for k, name in enumerate(names) if found(name) not in (None, k)]
    if wrong:
        first = "; ".join(f"line {k + 1} {names[k]!r} is class {labels[found(names[k])]!r} "
                          f"({found(names[k])}) but would name class {labels[k]!r} ({k})" for k in wrong[:3])
        raise ValueError(f"`data.class_names` lists the source's classes in another order ({len(wrong)} of "
                         f"{len(names)} lines misplaced: {first}); give one name per line in label order "
                         f"({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''})")


def resolve_class_names(labels: Sequence[str], override: str | Path | Sequence[str] | None = None, *,
                        numeric_ok: bool = False) -> ClassNames:
    """The class names for the captioning prompt and the text-prototype class-name filter.

    In order:
    1. `override` (a file with one name per line, or a list) wins; it must have one name per source class. When the
       labels are names, a file that names a source class at another class's line (another order, e.g. CIFAR-100's
       superclass-ordered list) is an error. When the labels are numbers ("00000", "7"), line k names the k-th
       class in numeric order.
    2. Labels that are only digits are refused (the prompts would name "the 00000"), unless `numeric_ok`.
    3. ImageNet sources: when every label is a WordNet id, a full ImageNet name or an ImageNet synonym (after
       underscores become spaces), each becomes its full ImageNet name ("n03417042" and "garbage truck" both give
       "garbage truck, dustcart"). A 1000-class source whose i-th label names ImageNet's i-th class maps by
       position (its two "crane"s and two "maillot"s then resolve). A label that names several ImageNet classes
       with different full names is an error, never a guess.
    4. Anything else keeps its label names, underscores read as spaces ("aquarium_fish" -> "aquarium fish");
       WordNet ids among them still become ImageNet names.

    Args:
        labels: the source's label names, in label order (its `ClassLabel` names).
        override: the user's names (`data.class_names`), or None.
        numeric_ok: labels that are only digits are meant as names (`data.numeric_names`).

    Returns:
        `ClassNames` with one name per label, the rule used, the ImageNet WordNet ids when known, and their origin.

    Raises:
        ValueError: an override of the wrong length, in another order, or unreadable; numeric labels without an
            override or `numeric_ok`; an ambiguous ImageNet short name.
    """
    labels = list(labels)
    numeric = is_numeric(labels)
    if override is not None:
        names = read_class_names(override)
        origin = (f"the file {Path(override).name} (data.class_names)" if isinstance(override, (str, Path))
                  else "the list in data.class_names")
        if len(names) != len(labels):
            raise ValueError(f"`data.class_names` has {len(names)} names but the source has {len(labels)} classes "
                             f"(first lines: {_pairs(labels, names, range(min(3, len(names))))}); give one name per "
                             "class, in label order")
        if numeric:
            order = sorted(range(len(labels)), key=lambda i: int(labels[i]))
            mapped = [""] * len(labels)
            for k, i in enumerate(order):
                mapped[i] = names[k]
            logger.info("numeric class folders: line k of `data.class_names` names the k-th folder in numeric order "
                        "(%s)", ", ".join(f"{labels[i]} = {mapped[i]!r}" for i in order[:3]))
            return ClassNames(mapped, "override", [None] * len(labels), origin)
        try:
            auto = resolve_class_names(labels, numeric_ok=True).names
        except ValueError:  # ambiguous ImageNet short names: compare with the labels alone
            auto = labels
        _check_names_file(labels, names, auto)
        return ClassNames(names, "override", [None] * len(labels), origin)
    if numeric and not numeric_ok:
        raise ValueError(f"the source's class names are only digits ({', '.join(labels[:3])}"
                         f"{', ...' if len(labels) > 3 else ''}), so the prompts would name 'the {labels[0]}'; give "
                         "the real names with `data.class_names` (--data.class_names FILE, one name per line, line "
                         "k naming the k-th folder in numeric order), or set `data.numeric_names` true if the digits "
                         "are meant")
    spaced = [label.replace("_", " ").strip() for label in labels]
    candidates = [_candidates(name) for name in spaced]
    one_k, _, _ = _imagenet()
    lookup = "ImageNet names looked up from the source's labels"
    if len(labels) == len(one_k) and all(w in _candidates(n, every=True) for w, n in zip(one_k, spaced)):
        return ClassNames([imagenet_name(w) for w in one_k], "imagenet", list(one_k), lookup)
    if spaced and all(candidates):
        for label, found in zip(labels, candidates):
            if len({imagenet_name(w) for w in found}) > 1:
                options = "; ".join(f"{w} = {imagenet_name(w)!r}" for w in found)
                raise ValueError(f"class {label!r} names several ImageNet classes ({options}); set `data.class_names` "
                                 "to the names to use (a file with one name per line)")
        # several candidates share one name ("crane": the bird and the machine): the name is sure, the wnid is not
        return ClassNames([imagenet_name(found[0]) for found in candidates], "imagenet",
                          [found[0] if len(found) == 1 else None for found in candidates], lookup)
    for label in labels:
        if WNID.fullmatch(label) and imagenet_name(label) is None:
            logger.warning("class %r looks like a WordNet id but is in neither ImageNet-1K nor ImageNet-22K; the "
                           "prompts will name it as is (set `data.class_names` to name it)", label)
    wnids = [label if WNID.fullmatch(label) and imagenet_name(label) else None for label in labels]
    names = [imagenet_name(w) if w else name for w, name in zip(wnids, spaced)]
    origin = "the source's labels" + (" (WordNet ids looked up in ImageNet)" if any(wnids) else "")
    return ClassNames(names, "labels", wnids, origin)
