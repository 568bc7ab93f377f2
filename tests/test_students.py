"""Student networks: output shapes, parameter counts against hand-derived formulas, and the checkpoint format."""

import pytest
import torch
import torchvision

from vldd.models.students import (
    ConvNet,
    ResNetAP,
    build_student,
    load_classifier,
    num_parameters,
    resnet18,
    save_classifier,
)


def _norm(channels):  # instance norm with affine: one scale and one shift per channel
    return 2 * channels


def resnetap10_parameters(num_classes, stem_kernel, width=64):
    total = 3 * width * stem_kernel**2 + _norm(width)
    channels = width
    for stage in range(4):
        out = width * 2**stage
        total += channels * out * 9 + out * out * 9 + 2 * _norm(out)
        if stage > 0:  # 1x1 conv + norm on the shortcut where the block downsamples
            total += channels * out + _norm(out)
        channels = out
    return total + channels * num_classes + num_classes


def convnet6_parameters(num_classes, image_size, width=128):
    convs = (3 * width * 9 + width) + 5 * (width * width * 9 + width) + 6 * _norm(width)
    side = image_size // 64
    return convs + width * side * side * num_classes + num_classes


@pytest.mark.parametrize(("image_size", "stem_kernel"), [(32, 3), (112, 3), (224, 7)])
def test_resnetap10_parameter_count(image_size, stem_kernel):
    model = ResNetAP(num_classes=10, image_size=image_size)
    assert num_parameters(model) == resnetap10_parameters(10, stem_kernel)
    assert num_parameters(model) == (4_903_242 if stem_kernel == 3 else 4_910_922)


@pytest.mark.parametrize(("image_size", "width", "spatial"), [(32, 1.0, 32), (112, 0.125, 56), (224, 0.125, 56)])
def test_resnetap10_output_shape_and_stem(image_size, width, spatial):
    model = build_student("ResNetAP-10", num_classes=7, image_size=image_size, width=width)
    x = torch.randn(2, 3, image_size, image_size)
    assert model(x).shape == (2, 7)
    assert model.stem(x).shape[-1] == spatial  # stem keeps <= 64 px, halves <= 128 px, quarters larger inputs
    assert all(isinstance(m, torch.nn.GroupNorm) and m.num_groups == m.num_channels
               for m in model.modules() if isinstance(m, torch.nn.GroupNorm | torch.nn.BatchNorm2d))


@pytest.mark.parametrize("image_size", [64, 128, 224])
def test_convnet6_parameter_count_and_shape(image_size):
    model = build_student("convnet6", num_classes=10, image_size=image_size)
    assert num_parameters(model) == convnet6_parameters(10, image_size)
    small = ConvNet(num_classes=10, image_size=image_size, width=16)
    assert small(torch.randn(2, 3, image_size, image_size)).shape == (2, 10)


def test_convnet6_rejects_inputs_too_small():
    with pytest.raises(ValueError, match="needs `image_size` >= 64"):
        ConvNet(num_classes=10, image_size=32)


def test_resnet18_variants():
    small, large = resnet18(10, image_size=32), resnet18(10, image_size=224)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and isinstance(large.maxpool, torch.nn.MaxPool2d)
    stock = num_parameters(torchvision.models.resnet18(num_classes=10))
    assert num_parameters(large) == stock == 11_181_642
    assert num_parameters(small) == stock - 64 * 3 * (49 - 9)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(resnet18(10, image_size=112).maxpool, torch.nn.MaxPool2d)  # RDED: 7x7 stem above 64 px
    assert resnet18(10, image_size=112).conv1.kernel_size == (7, 7)


@pytest.mark.parametrize(("image_size", "kernel", "stride", "maxpool", "spatial"),
                         [(224, 7, 2, True, 56), (112, 3, 1, True, 56), (64, 3, 1, False, 64)])
def test_instance_norm_resnet18_is_minimax_resnet18(image_size, kernel, stride, maxpool, spatial):
    """Minimax's ResNet-18 with `--norm_type instance`: GroupNorm(C, C) everywhere, no batch norm; its stem is 7x7/2 +
    max-pool above 128 px, 3x3/1 + max-pool up to 128 px ("mid"), 3x3/1 alone up to 64 px ("small")."""
    model = build_student("ResNet-18", num_classes=10, image_size=image_size, norm="instance")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 20 and all(m.num_groups == m.num_channels for m in norms)  # 1 stem + 16 blocks + 3 shortcuts
    assert model.conv1.kernel_size == (kernel, kernel) and model.conv1.stride == (stride, stride)
    assert isinstance(model.maxpool, torch.nn.MaxPool2d) == maxpool
    stem = model.maxpool(model.relu(model.bn1(model.conv1(torch.randn(2, 3, image_size, image_size)))))
    assert stem.shape[-1] == spatial
    stock = 11_181_642 - (64 * 3 * (49 - 9) if kernel == 3 else 0)  # a norm has 2C parameters, batch or instance
    assert num_parameters(model) == stock
    assert model(torch.randn(2, 3, image_size, image_size)).shape == (2, 10)
    with pytest.raises(ValueError, match="`norm` must be 'batch' or 'instance', got 'layer'"):
        resnet18(10, norm="layer")


def test_build_student_rejects_unknown_names_and_widths():
    with pytest.raises(ValueError, match="`student` must be one of"):
        build_student("vit", 10)
    with pytest.raises(ValueError, match="width 1.0 only"):
        build_student("resnet18", 10, width=0.5)


def test_classifier_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_student("resnetap10", num_classes=3, image_size=32, width=0.125).eval()
    path = save_classifier(model, tmp_path / "teacher.pt", arch="resnetap10", class_names=["a", "b", "c"],
                           image_size=32, width=0.125)
    loaded, meta = load_classifier(path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    assert meta == {"arch": "resnetap10", "num_classes": 3, "class_names": ["a", "b", "c"], "image_size": 32,
                    "width": 0.125, "pretrained": False}


def test_load_classifier_errors(tmp_path):
    with pytest.raises(ValueError, match="randomly initialised"):
        load_classifier("torchvision:resnet18")  # weights are fetched only when asked for
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        load_classifier(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a vldd classifier checkpoint"):
        load_classifier(tmp_path / "plain.pt")


# ---------------------------------------------------------------------------------------------------------------
# ConvNet-3/4: the dataset-distillation benchmark's students (DC, Zhao et al. ICLR 2021)


@pytest.mark.parametrize(("name", "image_size", "side"),
                         [("convnet3", 32, 4), ("ConvNet-4", 64, 4), ("convnet3", 64, 8)])
def test_convnet3_and_4_follow_the_dc_benchmark(name, image_size, side):
    model = build_student(name, num_classes=10, image_size=image_size)
    depth = 3 if "3" in name else 4
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    pools = [m for m in model.modules() if isinstance(m, torch.nn.AvgPool2d)]
    assert len(convs) == len(norms) == len(pools) == depth
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.out_channels == 128 and c.bias is not None
               for c in convs)
    assert all(n.num_groups == n.num_channels == 128 and n.affine for n in norms)  # instance norm, affine
    x = torch.randn(2, 3, image_size, image_size)
    assert model.features(x).shape == (2, 128, side, side)
    assert model.fc.in_features == 128 * side * side and model(x).shape == (2, 10)


def test_convnet3_and_4_parameter_counts_by_hand():
    # ConvNet-3, 32 px, 10 classes: conv 3->128 (3*128*9 + 128 = 3,584), two convs 128->128 (147,584 each), three
    # instance norms (256 each), linear 2048->10 (20,490): 3,584 + 2 * 147,584 + 768 + 20,490 = 320,010.
    assert num_parameters(build_student("convnet3", 10, 32)) == 320_010
    # ConvNet-4, 64 px (-> 4x4), 200 classes (Tiny-ImageNet): 3,584 + 3 * 147,584 + 4 * 256 + (2048 * 200 + 200)
    assert num_parameters(build_student("convnet4", 200, 64)) == 3_584 + 3 * 147_584 + 1_024 + 409_800 == 857_160
    # CIFAR-100 on ConvNet-3: only the linear layer grows, 2048 * 100 + 100
    assert num_parameters(build_student("convnet3", 100, 32)) == 320_010 - 20_490 + 204_900


def test_convnet4_rejects_inputs_too_small():
    with pytest.raises(ValueError, match="ConvNet-4 needs `image_size` >= 16 pixels, got 8"):
        build_student("convnet4", 10, 8)


# ---------------------------------------------------------------------------------------------------------------
# RDED teacher files


def rded_resnet18_modified(classes):
    """RDED's `load_model("resnet18_modified")` (04_evaluation/RDED/synthesize/utils.py), written out here:
    torchvision resnet18 (1000 outputs), conv1 -> 3x3 stride 1, maxpool -> Identity, fc rows cut to `classes`."""
    model = torchvision.models.resnet18()
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    model.maxpool = torch.nn.Identity()
    model.fc.weight.data = model.fc.weight[classes]
    model.fc.bias.data = model.fc.bias[classes]
    return model.eval()


@pytest.mark.parametrize("prefix", ["", "module."])
def test_rded_teacher_state_dict_loads_with_names(tmp_path, prefix):
    torch.manual_seed(0)
    rded = rded_resnet18_modified(list(range(10)))
    path = tmp_path / "cifar10_resnet18_modified.pth"
    torch.save({"model": {prefix + k: v for k, v in rded.state_dict().items()}}, path)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    loaded, meta = load_classifier(path, class_names=names)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), rded(x))
    assert meta["arch"] == "rded:resnet18_modified" and meta["class_names"] == names and meta["num_classes"] == 10
    with pytest.raises(ValueError, match="RDED teacher, which stores no class names"):
        load_classifier(path)
    with pytest.raises(ValueError, match="9 class names given for an RDED teacher with 10 outputs"):
        load_classifier(path, class_names=names[:9])
