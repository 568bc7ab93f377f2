"""Class names for prompts and the text filter: WordNet ids and ImageNet short names -> the official full names."""

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from vldd.configs.distill import DataConfig
from vldd.data.classnames import resolve_class_names
from vldd.data.sources import load_source

# The official code's class lists (03_distiilation/label-prompt/*.txt), as WordNet ids.
IMAGENETTE = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042", "n03425413",
              "n03445777", "n03888257"]
IMAGEWOOF = ["n02086240", "n02087394", "n02088364", "n02089973", "n02093754", "n02096294", "n02099601", "n02105641",
             "n02111889", "n02115641"]
IMAGEIDC = ["n01749939", "n01773797", "n02091831", "n02107142", "n02488291", "n02869837", "n03062245", "n04517823",
            "n04589890", "n13037406"]
IMAGENET_100 = """
n01558993 n01692333 n01729322 n01735189 n01749939 n01773797 n01820546 n01855672 n01978455 n01980166 n01983481 n02009229
n02018207 n02085620 n02086240 n02086910 n02087046 n02089867 n02089973 n02090622 n02091831 n02093428 n02099849 n02100583
n02104029 n02105505 n02106550 n02107142 n02108089 n02109047 n02113799 n02113978 n02114855 n02116738 n02119022 n02123045
n02138441 n02172182 n02231487 n02259212 n02326432 n02396427 n02483362 n02488291 n02701002 n02788148 n02804414 n02859443
n02869837 n02877765 n02974003 n03017168 n03032252 n03062245 n03085013 n03259280 n03379051 n03424325 n03492542 n03494278
n03530642 n03584829 n03594734 n03637318 n03642806 n03764736 n03775546 n03777754 n03785016 n03787032 n03794056 n03837869
n03891251 n03903868 n03930630 n03947888 n04026417 n04067472 n04099969 n04111531 n04127249 n04136333 n04229816 n04238763
n04336792 n04418357 n04429376 n04435653 n04485082 n04493381 n04517823 n04589890 n04592741 n07714571 n07715103 n07753275
n07831146 n07836838 n13037406 n13040303""".split()

# frgfm/imagenette's label names, and what the official code prompts with (IMAGENET2012_CLASSES)
IMAGENETTE_HUB = ["tench", "English springer", "cassette player", "chain saw", "church", "French horn",
                  "garbage truck", "gas pump", "golf ball", "parachute"]
IMAGENETTE_OFFICIAL = ["tench, Tinca tinca", "English springer, English springer spaniel", "cassette player",
                       "chain saw, chainsaw", "church, church building", "French horn, horn", "garbage truck, dustcart",
                       "gas pump, gasoline pump, petrol pump, island dispenser", "golf ball", "parachute, chute"]


def _short(wnids):
    return [name.split(", ")[0] for name in resolve_class_names(wnids).names]


def test_wordnet_ids_become_full_imagenet_names():
    resolved = resolve_class_names(IMAGENETTE)
    assert resolved.names == IMAGENETTE_OFFICIAL and resolved.rule == "imagenet" and resolved.wnids == IMAGENETTE
    # outside ImageNet-1K: the ImageNet-22K table
    assert resolve_class_names(["n00004475", "n01440764"]).names == ["organism, being", "tench, Tinca tinca"]


def test_short_hub_names_resolve_to_the_same_strings():
    resolved = resolve_class_names(IMAGENETTE_HUB)
    assert resolved.names == IMAGENETTE_OFFICIAL and resolved.wnids == IMAGENETTE
    woof = ["Shih-Tzu", "Rhodesian ridgeback", "Beagle", "English foxhound", "Border terrier", "Australian terrier",
            "Golden retriever", "Old English sheepdog", "Samoyed", "Dingo"]  # as ImageWoof mirrors label them
    assert resolve_class_names(woof).wnids == IMAGEWOOF
    assert resolve_class_names(woof).names[9] == "dingo, warrigal, warragal, Canis dingo"
    for wnids in (IMAGEIDC, IMAGENET_100):
        assert resolve_class_names(_short(wnids)).names == resolve_class_names(wnids).names
    assert resolve_class_names(IMAGEIDC).names[-1] == "gyromitra"
    keras_style = [name.replace(" ", "_") for name in IMAGENETTE_HUB]  # underscores become spaces first
    assert resolve_class_names(keras_style).names == IMAGENETTE_OFFICIAL


def test_full_names_are_kept_and_imagenet_1k_maps_by_position():
    assert resolve_class_names(IMAGENETTE_OFFICIAL).names == IMAGENETTE_OFFICIAL
    import timm.data

    info = timm.data.ImageNetInfo()
    full = [info.label_name_to_description(w) for w in info.label_names()]
    short = [name.split(", ")[0] for name in full]  # two "crane"s, two "maillot"s
    resolved = resolve_class_names(short)
    assert resolved.names == full and resolved.wnids == info.label_names()
    assert resolved.names[639] == "maillot, tank suit" and resolved.names[638] == "maillot"


def test_ambiguous_names_are_errors_never_guesses():
    assert resolve_class_names(["Cardigan"]).names == ["Cardigan, Cardigan Welsh corgi"]  # the corgi
    assert resolve_class_names(["cardigan"]).names == ["cardigan"]  # the sweater
    crane = resolve_class_names(["crane", "tench"])  # bird and machine share the name: the name is sure, not the id
    assert crane.names == ["crane", "tench, Tinca tinca"] and crane.wnids == [None, "n01440764"]
    for name in ("CARDIGAN", "Maillot", "grass snake"):
        with pytest.raises(ValueError, match=f"class '{name}' names several ImageNet classes.*data.class_names"):
            resolve_class_names([name, "tench"])


def test_other_sources_keep_their_labels_with_spaces():
    cifar10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert resolve_class_names(cifar10).names == cifar10 and resolve_class_names(cifar10).rule == "labels"
    cifar100 = ["apple", "aquarium_fish", "baby", "bear", "tiger", "maple_tree"]  # "tiger" alone is ImageNet's too
    assert resolve_class_names(cifar100).names == ["apple", "aquarium fish", "baby", "bear", "tiger", "maple tree"]
    mixed = resolve_class_names(["n01440764", "my_own_class", "n99999999"])
    assert mixed.names == ["tench, Tinca tinca", "my own class", "n99999999"] and mixed.rule == "labels"


def test_override_wins_and_is_checked(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("a tench\n\nthe church\n")
    assert resolve_class_names(["n01440764", "n03028079"], path).names == ["a tench", "the church"]
    assert resolve_class_names(["x", "y"], ["first", "second"]).rule == "override"
    with pytest.raises(ValueError, match="has 3 names but the source has 2 classes"):
        resolve_class_names(["x", "y"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="is not a file"):
        resolve_class_names(["x", "y"], str(tmp_path / "missing.txt"))


def _folder(root, classes, per_class=3):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_sources_carry_their_resolved_names(tmp_path):
    folder = _folder(tmp_path / "wnids", ["n01440764", "n03417042"])
    source = load_source(DataConfig(dataset=str(folder)))
    assert source.class_names == ["n01440764", "n03417042"]  # the ClassLabel stays the source's
    assert source.prompt_names == ["tench, Tinca tinca", "garbage truck, dustcart"]
    streamed = load_source(DataConfig(dataset=str(folder), streaming=True))
    assert streamed.prompt_names == source.prompt_names and streamed.resolved_names.rule == "imagenet"

    short = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (8, 8))] * 2, "label": [0, 1]},
        features=datasets.Features({"image": datasets.Image(),
                                    "label": datasets.ClassLabel(names=["tench", "garbage truck"])}))
    short.save_to_disk(str(tmp_path / "short"))
    assert load_source(DataConfig(dataset=str(tmp_path / "short"))).prompt_names == source.prompt_names
    override = load_source(DataConfig(dataset=str(folder), class_names=["fish", "truck"]))
    assert override.prompt_names == ["fish", "truck"] and override.resolved_names.rule == "override"
    with pytest.raises(ValueError, match="has 1 names but the source has 2 classes"):
        load_source(DataConfig(dataset=str(folder), class_names=["fish"]))


def test_distill_prompts_and_filters_with_the_full_imagenet_names(tiny_cache, tmp_path):
    """WordNet-id folders: the captioning prompt and the class-name filter use "tench, Tinca tinca", not "n01440764".

    Half of the tench captions mention "tinca" (below the class-common threshold), so only the class-name filter can
    keep it out of the cluster's top words; the dataset and the manifest carry the names used.
    """
    from vldd.configs.distill import load_config
    from vldd.jobs.distill import distill
    from vldd.stages.caption import captions_dataset

    wnids = ["n01440764", "n03417042"]
    folder = _folder(tmp_path / "train", wnids, per_class=8)
    rows = list(range(16))
    captions = [("A slim tinca fish with green scales." if i % 2 else "A green fish with small fins.") if i < 8 else
                ("A dustcart truck, painted green." if i % 2 else "A green truck on a road.") for i in rows]
    published = captions_dataset(rows, [i // 8 for i in rows], captions, ["p"] * 16, "hand-written", wnids)
    published.save_to_disk(str(tmp_path / "captions"))
    config = load_config(overrides={
        "preset": "tiny", "output": str(tmp_path / "run"), "ipc": 1,
        "data": {"dataset": str(folder)}, "caption": {"from_hub": str(tmp_path / "captions")},
        "text": {"top_k": 5}, "generation": {"num_inference_steps": 2}})
    result = distill(config, cache_dir=tiny_cache)

    work = tmp_path / "run" / "work"
    caption_record = json.loads((work / "caption" / "000000.json").read_text())
    assert "the tench, Tinca tinca in the image." in caption_record["prompt"]
    for path in (work / "text" / "000000.json", work / "text" / "000001.json"):
        words = {w for proto in json.loads(path.read_text()) for w, _ in proto["top_words"]}
        assert words and not words & {"tench", "tinca", "garbage", "truck", "dustcart"}
    assert result.dataset.features["label"].names == wnids  # labels line up with the source
    assert result.dataset["prompt_class_name"] == ["tench, Tinca tinca", "garbage truck, dustcart"]
    assert result.manifest["source"]["prompt_class_names"] == ["tench, Tinca tinca", "garbage truck, dustcart"]
    assert result.manifest["source"]["class_name_rule"] == "imagenet"


def test_card_lists_the_names_the_prompts_used():
    from vldd.hub.cards import PublishedRun, render_dataset_card

    manifest = {"config": {"ipc": 1, "seed": 0}, "versions": {},
                "source": {"dataset": "some/folder", "split": "train", "license": "mit", "classes": [0, 1],
                           "class_names": ["n01440764", "n03417042"],
                           "prompt_class_names": ["tench, Tinca tinca", "garbage truck, dustcart"]}}
    card = render_dataset_card([PublishedRun("ipc1", manifest, 2)], "alice/x", default_config="ipc1")
    assert "n01440764 (0): tench, Tinca tinca; n03417042 (1): garbage truck, dustcart" in card
    manifest["source"]["prompt_class_names"] = manifest["source"]["class_names"]
    card = render_dataset_card([PublishedRun("ipc1", manifest, 2)], "alice/x", default_config="ipc1")
    assert "n01440764 (0), n03417042 (1)" in card


def test_cli_flag_takes_a_file_of_names(tmp_path):
    import argparse

    from vldd.cli import commands as cli

    parser = argparse.ArgumentParser()
    cli._run_flags(parser)
    config = cli.config_from_args(parser.parse_args(["--data.class_names", str(tmp_path / "names.txt")]))
    assert config.data.class_names == str(tmp_path / "names.txt")  # a path, never split at its commas


# ---------------------------------------------------------------------------------------------------------------
# Names that cannot go wrong: numeric folders refused, a names file in another order refused


def test_numeric_folders_are_refused_unless_meant(tmp_path):
    folder = _folder(tmp_path / "train", ["00000", "00001", "00002"], per_class=1)
    with pytest.raises(ValueError) as err:
        load_source(DataConfig(dataset=str(folder)))
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        "the source's class names are only digits (00000, 00001, 00002), so the prompts would name 'the 00000'")
    assert "--data.class_names FILE" in message and "`data.numeric_names` true" in message
    meant = load_source(DataConfig(dataset=str(folder), numeric_names=True))
    assert meant.prompt_names == ["00000", "00001", "00002"]
    named = load_source(DataConfig(dataset=str(folder), class_names=["cat", "dog", "frog"]))
    assert named.prompt_names == ["cat", "dog", "frog"]
    assert named.resolved_names.origin == "the list in data.class_names"
    assert resolve_class_names(["n01440764", "7"]).rule == "labels"  # a digit among names is a name


def test_numeric_folders_take_file_lines_in_numeric_order(tmp_path):
    labels = sorted(str(i) for i in range(12))  # how folders 0..11 sort as text: 0, 1, 10, 11, 2, ...
    path = tmp_path / "names.txt"
    path.write_text("".join(f"name{i}\n" for i in range(12)))
    resolved = resolve_class_names(labels, path)
    assert dict(zip(labels, resolved.names)) == {str(i): f"name{i}" for i in range(12)}
    assert resolved.origin == "the file names.txt (data.class_names)"


CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_a_names_file_in_another_order_is_refused(tmp_path):
    path = tmp_path / "cifar10.txt"
    path.write_text("\n".join(["automobile", "airplane", *CIFAR10[2:]]))
    with pytest.raises(ValueError) as err:
        resolve_class_names(CIFAR10, path)
    assert str(err.value) == (
        "`data.class_names` lists the source's classes in another order (2 of 10 lines misplaced: line 1 'automobile' "
        "is class 'automobile' (1) but would name class 'airplane' (0); line 2 'airplane' is class 'airplane' (0) but "
        "would name class 'automobile' (1)); give one name per line in label order (airplane, automobile, bird, cat, "
        "deer, ...)")
    # the official CIFAR-100 list: superclass order, plural names; underscores, case and plurals are seen through
    labels = ["apple", "aquarium_fish", "poppy", "sweet_pepper", "whale"]
    with pytest.raises(ValueError, match=r"line 1 'Poppies' is class 'poppy' \(2\) but would name class 'apple' \(0\)"):
        resolve_class_names(labels, ["Poppies", "aquarium fish", "sweet peppers", "apples", "whale"])
    # WordNet-id folders: their ImageNet names in another order are caught too
    with pytest.raises(ValueError, match="line 1 'garbage truck' is class 'n03417042'"):
        resolve_class_names(["n01440764", "n03417042"], ["garbage truck", "tench"])
    # the same names in label order, or other words, are what a names file is for
    assert resolve_class_names(labels, ["apples", "aquarium fish", "poppies", "peppers", "whale"]).rule == "override"
    assert resolve_class_names(CIFAR10, [f"a photo of a {n}" for n in CIFAR10]).names[0] == "a photo of a airplane"


def test_a_names_file_of_another_length_shows_the_first_lines(tmp_path):
    with pytest.raises(ValueError) as err:
        resolve_class_names(CIFAR10, CIFAR10[1:])
    assert str(err.value) == (
        "`data.class_names` has 9 names but the source has 10 classes (first lines: line 1 'automobile' -> class "
        "'airplane' (0), line 2 'bird' -> class 'automobile' (1), line 3 'cat' -> class 'bird' (2)); give one name per "
        "class, in label order")


def test_manifest_and_card_say_where_the_names_came_from(tiny_cache, tmp_path):
    from vldd.configs.distill import load_config
    from vldd.hub.cards import PublishedRun, render_dataset_card
    from vldd.jobs.distill import distill

    folder = _folder(tmp_path / "train", ["00000", "00001"], per_class=2)
    (tmp_path / "names.txt").write_text("fish\ntruck\n")
    config = load_config(overrides={"preset": "tiny", "output": str(tmp_path / "run"), "ipc": 1,
                                    "data": {"dataset": str(folder), "class_names": str(tmp_path / "names.txt")}})
    manifest = distill(config, stages=("caption",), cache_dir=tiny_cache).manifest
    assert manifest["source"]["class_names_from"] == "the file names.txt (data.class_names)"
    assert manifest["source"]["prompt_class_names"] == ["fish", "truck"]
    manifest.setdefault("source", {})["license"] = "mit"
    card = render_dataset_card([PublishedRun("ipc1", manifest, 2)], "alice/x", default_config="ipc1")
    assert "00000 (0): fish; 00001 (1): truck" in card
    assert "The names the captioning prompts used come from the file names.txt (data.class_names)." in card
