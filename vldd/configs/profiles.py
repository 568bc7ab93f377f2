"""Per-dataset settings of the paper's scripts, recognised from what the source is (docs/faithfulness.md,
"Per-dataset settings"; docs/evaluation.md).

The official scripts set output size, outlier contamination, the class-common threshold, the fine-tuning resolution
and the evaluation image size by hand for each dataset. vldd recognises the dataset family from the source's content
(`recognise`): its class names (CIFAR-10's, CIFAR-100's, Tiny-ImageNet's 200 WordNet ids, ImageNet's), its class count
and the size of a few sampled images; the dataset id or path only breaks ties, so a CIFAR-10 copy at
`/data/c10/train` is still CIFAR-10. `data.profile` overrides the recognition.

Example:
    >>> recognise("/data/c10/train", CIFAR10, [(32, 32)] * 8).family
    'cifar10'
    >>> dataset_profile("uoft-cs/cifar100").output_size
    32
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DatasetProfile:
    """The paper's per-dataset settings for one family of sources."""

    family: str  # "cifar10", "cifar100", "tiny-imagenet", "imagenet-1k" or "imagenet-subset" (everything else)
    output_size: int  # generated images are resized to this many pixels a side
    contamination: float  # LocalOutlierFactor contamination; 0 skips outlier removal (CIFAR)
    common_threshold: float  # document-frequency fraction above which a word is class-common (text prototypes)
    finetune_resolution: int  # Stable Diffusion fine-tuning resolution (official CIFAR scripts train at 32)
    eval_image_size: int  # student input size in evaluation
    shuffle_factor: int  # RDED ShufflePatches factor: 1 for CIFAR, 2 otherwise
    small_stem: bool  # students use the "modified" ResNet stem (3x3 conv, no max-pool) for 32/64 px sets

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, DatasetProfile] = {
    "cifar10": DatasetProfile("cifar10", 32, 0.0, 0.3, 32, 32, 1, True),
    "cifar100": DatasetProfile("cifar100", 32, 0.0, 0.2, 32, 32, 1, True),
    # Tiny-ImageNet: the paper gives output 64, threshold 0.2 and the modified stem; contamination and fine-tuning
    # resolution are not stated for it, so the ImageNet values (0.1, 512) are used.
    "tiny-imagenet": DatasetProfile("tiny-imagenet", 64, 0.1, 0.2, 512, 64, 2, True),
    "imagenet-1k": DatasetProfile("imagenet-1k", 224, 0.1, 0.7, 512, 224, 2, False),
    "imagenet-subset": DatasetProfile("imagenet-subset", 256, 0.1, 0.7, 512, 224, 2, False),
}

# The image size (shorter side, pixels) each family's images have; ImageNet images are at least IMAGENET_MIN_SIDE.
EXPECTED_SIDE = {"cifar10": 32, "cifar100": 32, "tiny-imagenet": 64}
IMAGENET_MIN_SIDE = 128

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Spellings other copies use for the same CIFAR-10 classes.
_CIFAR10_ALIASES = {"aeroplane": "airplane", "plane": "airplane", "car": "automobile"}
CIFAR100 = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant
flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel
streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
willow_tree wolf woman worm""".split()
# Tiny-ImageNet's 200 classes (its wnids.txt), as WordNet ids without the leading "n".
TINY_IMAGENET = ["n" + w for w in """
    01443537 01629819 01641577 01644900 01698640 01742172 01768244 01770393 01774384 01774750 01784675 01855672 01882714
    01910747 01917289 01944390 01945685 01950731 01983481 01984695 02002724 02056570 02058221 02074367 02085620 02094433
    02099601 02099712 02106662 02113799 02123045 02123394 02124075 02125311 02129165 02132136 02165456 02190166 02206856
    02226429 02231487 02233338 02236044 02268443 02279972 02281406 02321529 02364673 02395406 02403003 02410509 02415577
    02423022 02437312 02480495 02481823 02486410 02504458 02509815 02666196 02669723 02699494 02730930 02769748 02788148
    02791270 02793495 02795169 02802426 02808440 02814533 02814860 02815834 02823428 02837789 02841315 02843684 02883205
    02892201 02906734 02909870 02917067 02927161 02948072 02950826 02963159 02977058 02988304 02999410 03014705 03026506
    03042490 03085013 03089624 03100240 03126707 03160309 03179701 03201208 03250847 03255030 03355925 03388043 03393912
    03400231 03404251 03424325 03444034 03447447 03544143 03584254 03599486 03617480 03637318 03649909 03662601 03670208
    03706229 03733131 03763968 03770439 03796401 03804744 03814639 03837869 03838899 03854065 03891332 03902125 03930313
    03937543 03970156 03976657 03977966 03980874 03983396 03992509 04008634 04023962 04067472 04070727 04074963 04099969
    04118538 04133789 04146614 04149813 04179913 04251144 04254777 04259630 04265275 04275548 04285008 04311004 04328186
    04356056 04366367 04371430 04376876 04398044 04399382 04417672 04456115 04465501 04486054 04487081 04501370 04507155
    04532106 04532670 04540053 04560804 04562935 04596742 04597913 06596364 07579787 07583066 07614500 07615774 07695742
    07711569 07715103 07720875 07734744 07747607 07749582 07753592 07768694 07871810 07873807 07875152 07920052 09193705
    09246464 09256479 09332890 09428293 12267677
""".split()]

# Matched against the dataset id or path, lower-cased, with "_" and " " read as "-". Order matters: cifar100 first.
_PATTERNS = [
    ("cifar100", re.compile(r"cifar-?100")),
    ("cifar10", re.compile(r"cifar-?10(?!\d)")),
    ("tiny-imagenet", re.compile(r"tiny-?imagenet")),
    ("imagenet-1k", re.compile(r"imagenet-?1k|ilsvrc|imagenet-?2012")),
]


def _norm(name: str) -> str:
    """A class name compared loosely: case-folded, "_" and "-" read as spaces."""
    return " ".join(re.sub(r"[_\-]", " ", str(name)).casefold().split())


@dataclass(frozen=True)
class Recognition:
    """Which profile a source gets, and why."""

    profile: DatasetProfile
    source: str  # "override" (data.profile), "content" (names, class count, image size), "name" (id/path), "default"
    evidence: tuple[str, ...]  # what was seen, in words
    image_side: int | None = None  # median shorter side of the sampled images, pixels; None = not sampled
    warnings: tuple[str, ...] = ()  # e.g. the images' size is not the profile's

    @property
    def family(self) -> str:
        return self.profile.family

    def to_dict(self) -> dict:
        return {"family": self.family, "source": self.source, "evidence": list(self.evidence),
                "image_side": self.image_side, "warnings": list(self.warnings)}

    def describe(self) -> str:
        """One line: the profile, why, and the settings it implies."""
        p = self.profile
        return (f"dataset profile {p.family} (from {self.source}: {'; '.join(self.evidence)}): output {p.output_size} "
                f"px, contamination {p.contamination:g}, class-common threshold {p.common_threshold:g}, fine-tuning "
                f"at {p.finetune_resolution} px, evaluation at {p.eval_image_size} px; set `data.profile` to override")


def family_from_name(dataset: str) -> str | None:
    """The family the dataset id or path spells ("uoft-cs/cifar10" -> "cifar10"), or None."""
    name = re.sub(r"[_ ]", "-", str(dataset).lower())
    return next((family for family, pattern in _PATTERNS if pattern.search(name)), None)


def _from_content(names: Sequence[str], side: int | None, imagenet_classes: bool) -> tuple[str | None, str]:
    count = len(names)
    normed = {_norm(n) for n in names}
    cifar10 = {_CIFAR10_ALIASES.get(n, n) for n in normed}
    if count == 10 and cifar10 == set(CIFAR10):
        return "cifar10", "the 10 class names are CIFAR-10's"
    if count == 100 and normed == {_norm(n) for n in CIFAR100}:
        return "cifar100", "the 100 class names are CIFAR-100's"
    if count == 200 and set(names) == set(TINY_IMAGENET):
        return "tiny-imagenet", "the 200 class names are Tiny-ImageNet's WordNet ids"
    if count == 1000:
        return "imagenet-1k", "1000 classes, as ImageNet-1K"
    for family, classes, px in (("cifar10", 10, 32), ("cifar100", 100, 32), ("tiny-imagenet", 200, 64)):
        if count == classes and side == px:
            return family, f"{count} classes of {px} px images, as {family}"
    if imagenet_classes:
        return "imagenet-subset", f"the {count} class names are ImageNet classes"
    return None, ""


def recognise(dataset: str, class_names: Sequence[str] | None = None, image_sizes: Sequence[tuple[int, int]] = (),
              override: str | None = None, *, imagenet_classes: bool = False,
              num_classes: int | None = None) -> Recognition:
    """Recognises the dataset family of a source from its content; the id or path only breaks ties.

    In order: `override`; the class names (CIFAR-10's or CIFAR-100's, with "_", "-" and " " alike; Tiny-ImageNet's 200
    WordNet ids); 1000 classes (ImageNet-1K); 10, 100 or 200 classes of 32, 32 or 64 px images (CIFAR-10, CIFAR-100,
    Tiny-ImageNet); names that are ImageNet classes (an ImageNet subset); the id or path ("cifar10", "tiny-imagenet",
    ...); else the ImageNet-subset settings. Images whose size the profile does not expect give a warning.

    Args:
        dataset: the source as the user gave it (Hub id, folder path, or "sample").
        class_names: every class name of the source, in label order.
        image_sizes: (width, height) of a few sampled images.
        override: a family name (`data.profile`) that wins over the recognition.
        imagenet_classes: the names were found to be ImageNet classes (WordNet ids or ImageNet names).
        num_classes: the class count when `class_names` is not known.
    """
    if override is not None and override not in PROFILES:
        raise ValueError(f"`data.profile` must be one of {sorted(PROFILES)}, got {override!r}")
    names = list(class_names or [])
    count = len(names) or num_classes
    side = int(statistics.median(min(w, h) for w, h in image_sizes)) if image_sizes else None
    by_name = family_from_name(dataset)
    family, why = _from_content(names, side, imagenet_classes) if names else (None, "")
    if override is not None:
        family, source, evidence = override, "override", ["set by data.profile"]
    elif family is not None:
        source, evidence = "content", [why]
        if by_name is not None and by_name != family:
            evidence.append(f"the name {dataset!r} reads as {by_name}, the content does not")
    elif count == 1000:
        family, source, evidence = "imagenet-1k", "content", ["1000 classes, as ImageNet-1K"]
    elif by_name is not None:
        family, source, evidence = by_name, "name", [f"the name {dataset!r} reads as {by_name}"]
    else:
        family, source, evidence = "imagenet-subset", "default", [
            "no CIFAR-10/100, Tiny-ImageNet or ImageNet-1K signature in the names, class count or image size"]
    if count and source != "content":
        evidence.append(f"{count} classes")
    if side is not None:
        evidence.append(f"images {side} px (shorter side, median of {len(image_sizes)} sampled)")
    warnings = []
    expected = EXPECTED_SIDE.get(family)
    if side is not None and dataset != "sample" and (side != expected if expected else side < IMAGENET_MIN_SIDE):
        wanted = f"{expected} px" if expected else f"at least {IMAGENET_MIN_SIDE} px"
        warnings.append(f"the {family} profile expects images of {wanted}, but {dataset!r} has {side} px images; "
                        f"set `data.profile` (one of {', '.join(PROFILES)}) if {family} is wrong")
    return Recognition(PROFILES[family], source, tuple(evidence), side, tuple(warnings))


def dataset_family(dataset: str, num_classes: int | None = None) -> str:
    """The family of `dataset` judged from its id or path and class count alone (no content: see `recognise`)."""
    return recognise(dataset, num_classes=num_classes).family


def dataset_profile(dataset: str, num_classes: int | None = None) -> DatasetProfile:
    """The paper's per-dataset settings for `dataset` from its id or path and class count (see `dataset_family`)."""
    return PROFILES[dataset_family(dataset, num_classes)]
