"""Per-dataset settings derived from the source name or class count (the paper's per-dataset scripts)."""

import pytest

from vldd.profiles import dataset_family, dataset_profile


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
