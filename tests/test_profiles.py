"""Per-dataset settings (the paper's per-dataset scripts), recognised from the source's content; names break ties."""

import pytest

from vldd.configs.distill import DataConfig, DistillConfig
from vldd.configs.profiles import CIFAR10, CIFAR100, TINY_IMAGENET, dataset_family, dataset_profile, recognise


@pytest.mark.parametrize("dataset, classes, family", [
    ("uoft-cs/cifar10", 10, "cifar10"),
    ("cifar10", None, "cifar10"),
    ("uoft-cs/cifar100", 100, "cifar100"),
    ("/data/CIFAR_100", None, "cifar100"),
    ("zh-plus/tiny-imagenet", 200, "tiny-imagenet"),
    ("/data/tiny_imagenet/train", None, "tiny-imagenet"),
    ("ILSVRC/imagenet-1k", 1000, "imagenet-1k"),
    ("/data/imagenet/train", 1000, "imagenet-1k"),
    ("frgfm/imagenette", 10, "imagenet-subset"),
    ("frgfm/imagewoof", 10, "imagenet-subset"),
    ("sample", 5, "imagenet-subset"),
])
def test_family_from_name_then_class_count(dataset, classes, family):
    assert dataset_family(dataset, classes) == family


def test_profiles_hold_the_papers_values():
    cifar10, cifar100 = dataset_profile("cifar10"), dataset_profile("cifar100")
    assert (cifar10.output_size, cifar10.contamination, cifar10.common_threshold) == (32, 0.0, 0.3)
    assert (cifar100.common_threshold, cifar100.finetune_resolution, cifar100.shuffle_factor) == (0.2, 32, 1)
    tiny = dataset_profile("zh-plus/tiny-imagenet")
    assert (tiny.output_size, tiny.common_threshold, tiny.eval_image_size, tiny.small_stem) == (64, 0.2, 64, True)
    in1k = dataset_profile("ILSVRC/imagenet-1k")
    assert (in1k.output_size, in1k.contamination, in1k.common_threshold, in1k.finetune_resolution) == (224, 0.1, 0.7, 512)
    nette = dataset_profile("frgfm/imagenette")
    assert (nette.output_size, nette.eval_image_size, nette.shuffle_factor, nette.small_stem) == (256, 224, 2, False)


# ---------------------------------------------------------------------------------------------------------------
# Recognised from the content: names, class count, image size; the id or path only breaks ties


def _folder(root, names, size, per_class=1):
    """One flat-colour PNG of `size` px per class and index: a few hundred bytes each."""
    import numpy as np
    from PIL import Image

    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((size, size, 3), (c * 7 + i * 50) % 256, np.uint8)).save(root / name / f"{i}.png")
    return root


def test_cifar10_folder_at_a_neutral_path_is_cifar10_with_its_settings_in_the_manifest(tiny_cache, tmp_path, caplog):
    from vldd.configs.distill import load_config
    from vldd.data.sources import load_source
    from vldd.jobs.distill import distill

    folder = _folder(tmp_path / "c10" / "train", CIFAR10, size=32, per_class=2)
    source = load_source(DataConfig(dataset=str(folder)))
    assert source.profile.family == "cifar10" and source.profile.source == "content"
    assert source.profile.image_side == 32 and not source.profile.warnings
    # the tiny preset's explicit sizes and threshold set back to "derived", so the profile fills them
    config = load_config(overrides={"preset": "tiny", "output": str(tmp_path / "run"), "ipc": 1,
                                    "data": {"dataset": str(folder)}, "text": {"common_threshold": None},
                                    "generation": {"output_size": None}, "finetune": {"resolution": None}})
    with caplog.at_level("INFO", logger="vldd"):
        result = distill(config, stages=("caption",), cache_dir=tiny_cache)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dataset profile")]
    assert said and said[0].startswith("dataset profile cifar10 (from content: the 10 class names are CIFAR-10's")
    derived = result.manifest["derived"]
    assert derived["profile"]["family"] == "cifar10" and derived["profile"]["source"] == "content"
    assert "the 10 class names are CIFAR-10's" in derived["profile"]["evidence"]
    assert {k: derived[k] for k in ("generation.output_size", "prototypes.contamination", "text.common_threshold",
                                    "finetune.resolution", "evaluation.image_size")} == {
        "generation.output_size": 32, "prototypes.contamination": 0.0, "text.common_threshold": 0.3,
        "finetune.resolution": 32, "evaluation.image_size": 32}
    assert result.manifest["config"]["generation"]["output_size"] == 32  # the values the run used


def test_wordnet_id_folder_of_200_classes_at_64_px_is_tiny_imagenet(tmp_path):
    from vldd.data.sources import load_source

    folder = _folder(tmp_path / "data" / "train", TINY_IMAGENET, size=64)  # 200 classes x 1 tiny PNG
    source = load_source(DataConfig(dataset=str(folder)))
    assert source.profile.family == "tiny-imagenet" and source.profile.source == "content"
    assert source.profile.evidence[0] == "the 200 class names are Tiny-ImageNet's WordNet ids"
    config, derived = DistillConfig(data=DataConfig(dataset=str(folder))).resolve(source.profile)
    assert (derived["generation.output_size"], derived["text.common_threshold"], derived["evaluation.image_size"]) == (
        64, 0.2, 64)


@pytest.mark.parametrize("names, sizes, dataset, family, source", [
    (CIFAR10, [(32, 32)] * 4, "/data/c10/train", "cifar10", "content"),
    ([n.upper() for n in CIFAR10], [], "x", "cifar10", "content"),
    (["aeroplane", "car", *CIFAR10[2:]], [], "x", "cifar10", "content"),  # another copy's spellings
    ([n.replace("_", " ") for n in CIFAR100], [(32, 32)], "x", "cifar100", "content"),
    ([n.replace("_", "-") for n in CIFAR100], [], "x", "cifar100", "content"),
    ([f"{i:05d}" for i in range(10)], [(32, 32)] * 8, "/data/x", "cifar10", "content"),  # RDED numeric folders
    ([f"{i:05d}" for i in range(100)], [(32, 32)] * 8, "/data/x", "cifar100", "content"),
    ([f"c{i}" for i in range(200)], [(64, 64)] * 8, "/data/x", "tiny-imagenet", "content"),
    ([f"c{i}" for i in range(1000)], [(500, 375)] * 8, "/data/x", "imagenet-1k", "content"),
    (TINY_IMAGENET, [(64, 64)], "/data/cifar10", "tiny-imagenet", "content"),  # content beats the path
    ([f"c{i}" for i in range(10)], [(256, 256)] * 4, "/data/cifar10/train", "cifar10", "name"),  # tie-breaker
    ([f"c{i}" for i in range(10)], [(256, 256)] * 4, "/data/pets", "imagenet-subset", "default"),
    ([f"c{i}" for i in range(10)], [(64, 64)] * 4, "/data/x", "imagenet-subset", "default"),  # 10 classes, not 32 px
])
def test_family_from_content_first(names, sizes, dataset, family, source):
    recognition = recognise(dataset, names, sizes)
    assert (recognition.family, recognition.source) == (family, source)


def test_numeric_folders_named_by_a_file_are_recognised_by_those_names(tmp_path):
    from vldd.data.sources import load_source

    folder = _folder(tmp_path / "train", [f"{i:05d}" for i in range(10)], size=64)  # not 32 px: the names decide
    source = load_source(DataConfig(dataset=str(folder), class_names=CIFAR10))
    assert source.profile.family == "cifar10" and source.profile.evidence[0] == "the 10 class names are CIFAR-10's"
    assert "expects images of 32 px" in source.profile.warnings[0]
    unnamed = load_source(DataConfig(dataset=str(folder), numeric_names=True))
    assert unnamed.profile.family == "imagenet-subset"  # 10 classes of 64 px: no CIFAR signature


def test_imagenet_names_and_the_path_disagreeing_are_both_in_the_evidence():
    recognition = recognise("/data/cifar10", ["n01440764", "n03417042"], [(300, 200)], imagenet_classes=True)
    assert recognition.family == "imagenet-subset" and recognition.source == "content"
    assert recognition.evidence[:2] == ("the 2 class names are ImageNet classes",
                                        "the name '/data/cifar10' reads as cifar10, the content does not")
    assert recognition.evidence[2] == "images 200 px (shorter side, median of 1 sampled)"


def test_unexpected_image_size_is_a_warning_naming_both():
    small = recognise("/data/pets", ["cat", "dog"], [(32, 32)] * 3)
    assert small.family == "imagenet-subset" and small.warnings == (
        "the imagenet-subset profile expects images of at least 128 px, but '/data/pets' has 32 px images; set "
        "`data.profile` (one of cifar10, cifar100, tiny-imagenet, imagenet-1k, imagenet-subset) if imagenet-subset is "
        "wrong",)
    assert "expects images of 32 px, but 'x' has 224 px images" in recognise("x", CIFAR10, [(224, 224)]).warnings[0]
    assert not recognise("x", CIFAR10, [(32, 32), (32, 32), (30, 40)]).warnings  # the median decides
    assert not recognise("sample", ["a", "b"], [(64, 64)]).warnings  # the embedded toy set is small on purpose


def test_profile_override_wins_and_is_checked(tmp_path, caplog):
    from vldd.data.sources import load_source

    told = recognise("/data/c10", CIFAR10, [(32, 32)], override="imagenet-subset")
    assert (told.family, told.source, told.evidence[0]) == ("imagenet-subset", "override", "set by data.profile")
    assert told.warnings and "imagenet-subset profile expects" in told.warnings[0]  # still told about the size
    with pytest.raises(ValueError, match=r"`data.profile` must be one of \['cifar10', 'cifar100', 'imagenet-1k', "
                                         r"'imagenet-subset', 'tiny-imagenet'\] or None, got 'cifar'"):
        DataConfig(profile="cifar")
    folder = _folder(tmp_path / "pets", ["cat", "dog"], size=32)
    with caplog.at_level("WARNING", logger="vldd.data.sources"):
        source = load_source(DataConfig(dataset=str(folder), profile="cifar10"))
    assert source.profile.family == "cifar10" and not caplog.records  # 32 px: what CIFAR-10 expects
    derived = DistillConfig(data=DataConfig(dataset=str(folder))).resolve(source.profile)[1]
    assert derived["generation.output_size"] == 32
    # no source at hand: the id or path, and data.profile
    assert DistillConfig(data=DataConfig(dataset="x", profile="cifar100")).resolve()[1]["family"] == "cifar100"


def test_cli_flag_sets_the_profile():
    import argparse

    from vldd.cli import commands as cli

    parser = argparse.ArgumentParser()
    cli._run_flags(parser)
    args = parser.parse_args(["--data.profile", "tiny-imagenet", "--data.numeric_names", "true"])
    config = cli.config_from_args(args)
    assert config.data.profile == "tiny-imagenet" and config.data.numeric_names is True


def test_describe_names_the_profile_the_evidence_and_the_settings():
    line = recognise("/data/c10/train", CIFAR10, [(32, 32)] * 2).describe()
    assert line == ("dataset profile cifar10 (from content: the 10 class names are CIFAR-10's; images 32 px (shorter "
                    "side, median of 2 sampled)): output 32 px, contamination 0, class-common threshold 0.3, "
                    "fine-tuning at 32 px, evaluation at 32 px; set `data.profile` to override")


def test_evaluation_recognises_the_real_dataset_as_distillation_does(tmp_path):
    import datasets

    from vldd.data.sources import recognise_source
    from vldd.jobs.evaluate import EvalConfig
    from vldd.jobs.evaluate.recipes import resolve_recipe

    folder = _folder(tmp_path / "c10" / "val", CIFAR10, size=32)
    val = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    val = val.cast_column("image", datasets.Image(decode=False))
    recognition = recognise_source(str(folder), val, "image", val.features["label"].names)
    assert recognition.family == "cifar10"
    recipe = resolve_recipe(EvalConfig(distilled="x", protocol="soft", teacher="t.pt"), 10, 10, str(folder),
                            recognition)
    assert (recipe.image_size, recipe.shuffle_factor) == (32, 1)
    # by the name alone, the same folder is an ImageNet subset (224 px, factor 2)
    assert resolve_recipe(EvalConfig(distilled="x", protocol="soft", teacher="t.pt"), 10, 10, str(folder)
                          ).image_size == 224


def test_evaluate_uses_the_profile_the_run_was_told_and_reports_it(tmp_path):
    import json

    from test_evaluation import TINY, make_run

    from vldd.jobs.evaluate import EvalConfig, evaluate

    run = make_run(tmp_path / "run", ipc=1)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"] = {"data": {"profile": "cifar10"}}  # the run was told its source is CIFAR-10
    (run / "manifest.json").write_text(json.dumps(manifest))
    config = EvalConfig(distilled=str(run), real="sample", protocol="hard", epochs=1, batch_size=4, record=False,
                        **{**TINY, "image_size": None})
    report = evaluate(config).report
    assert report["profile"]["family"] == "cifar10" and report["profile"]["source"] == "override"
    assert report["recipe"]["image_size"] == 32  # CIFAR-10's evaluation size, not the ImageNet-subset 224
