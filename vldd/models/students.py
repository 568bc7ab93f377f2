"""Student and teacher networks of the evaluation protocols, and the classifier checkpoint format.

Students (docs/evaluation.md): ResNetAP-10 and ConvNet-6 with instance norm (the hard-label recipe of IDC/Minimax),
ConvNet-3 (32 px) and ConvNet-4 (64 px), the classic dataset-distillation benchmark's students (DC/DM/MTT),
torchvision's ResNet-18 with batch norm (the soft-label recipe of RDED; the 3x3-stem, no-max-pool variant for inputs
<= 64 px), and the same ResNet-18 with instance norm (Minimax's hard-label ResNet-18).

Example:
    >>> model = build_student("resnetap10", num_classes=10, image_size=224)
    >>> teacher, meta = load_classifier("teacher.pt")  # or "torchvision:resnet18", pretrained=True
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..configs.evaluate import CONVNET_DEPTHS, canonical_student

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "vldd.classifier"
CHECKPOINT_VERSION = 1


def _instance_norm(channels: int) -> nn.Module:
    # Instance norm with a learned affine, written as one group per channel (as the reference networks do).
    return nn.GroupNorm(channels, channels, affine=True)


class _APBlock(nn.Module):
    """Residual basic block that downsamples by 2x2 average pooling instead of a strided convolution."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.norm1 = _instance_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = _instance_norm(channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False),
                                          nn.AvgPool2d(stride), _instance_norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        if self.stride != 1:
            out = F.avg_pool2d(out, self.stride)
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetAP(nn.Module):
    """ResNet with average-pool downsampling and instance norm (ResNetAP-10 by default).

    The stem follows the input size: a 3x3 convolution alone for <= 64 px, then 2x2 average pooling for <= 128 px,
    and a 7x7 convolution followed by 4x4 average pooling above (224 px reaches the first stage at 56 px).

    Args:
        num_classes: outputs of the final linear layer.
        image_size: input side in pixels; selects the stem.
        depth: 10 (one block per stage) or 18 (two).
        width: channel multiplier; 1.0 gives 64-128-256-512 channels, the published network.
    """

    def __init__(self, num_classes: int, image_size: int = 224, depth: int = 10, width: float = 1.0):
        super().__init__()
        blocks = {10: 1, 18: 2}
        if depth not in blocks:
            raise ValueError(f"ResNetAP `depth` must be 10 or 18, got {depth}")
        base = max(1, int(64 * width))
        kernel, pool = (3, 1) if image_size <= 64 else (3, 2) if image_size <= 128 else (7, 4)
        stem = [nn.Conv2d(3, base, kernel, padding=kernel // 2, bias=False), _instance_norm(base), nn.ReLU()]
        self.stem = nn.Sequential(*stem, *([nn.AvgPool2d(pool)] if pool > 1 else []))
        stages, channels = [], base
        for i in range(4):
            out = base * 2**i
            stages += [_APBlock(channels if j == 0 else out, out, 2 if i > 0 and j == 0 else 1)
                       for j in range(blocks[depth])]
            channels = out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ConvNet(nn.Module):
    """ConvNet-D: D x (3x3 conv, instance norm, ReLU, 2x2 average pool), then a linear layer on the flat features.

    This is the dataset-distillation benchmark's ConvNet (DC, Zhao et al. ICLR 2021; also DM, MTT, DD-Ranking): conv
    3x3 with bias and padding 1, width 128, instance norm as GroupNorm(128, 128) with a learned affine, ReLU,
    AvgPool2d(2). ConvNet-3 at 32 px (CIFAR) ends in 128 x 4 x 4 = 2048 features; ConvNet-4 is its 64 px variant
    (Tiny-ImageNet); ConvNet-6 is the hard-label recipe's (IDC/Minimax) for 128-224 px.

    Args:
        num_classes: outputs of the final linear layer.
        image_size: input side in pixels; must survive `depth` halvings (>= 8 px for depth 3, >= 64 px for 6).
        depth: number of conv blocks (3, 4 or 6 for ConvNet-3/4/6).
        width: channels of every conv layer (128 in the published network).
    """

    def __init__(self, num_classes: int, image_size: int = 224, depth: int = 6, width: int = 128):
        super().__init__()
        if image_size >> depth < 1:
            raise ValueError(f"ConvNet-{depth} needs `image_size` >= {2**depth} pixels, got {image_size}")
        layers, channels = [], 3
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1), _instance_norm(width), nn.ReLU(), nn.AvgPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width * (image_size >> depth) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def resnet18(num_classes: int, image_size: int = 224, norm: str = "batch") -> nn.Module:
    """torchvision's ResNet-18 with the stem each harness uses for the input size.

    Args:
        num_classes: number of outputs.
        image_size: input side in pixels.
        norm: "batch" (RDED's soft-label student: torchvision's network; for <= 64 px the "modified" 3x3 stride-1
            stem without max-pool) or "instance" (Minimax's hard-label ResNet-18 with `--norm_type instance`:
            every norm layer is GroupNorm with one group per channel; for <= 64 px the 3x3 stride-1 stem without
            max-pool, for <= 128 px the 3x3 stride-1 stem with max-pool, above torchvision's 7x7 stem). The
            layers, initialisation and global average pooling otherwise equal Minimax's `ResNet(depth=18)`.
    """
    import torchvision

    if norm not in ("batch", "instance"):
        raise ValueError(f"`norm` must be 'batch' or 'instance', got {norm!r}")
    norm_layer = _instance_norm if norm == "instance" else None
    model = torchvision.models.resnet18(num_classes=num_classes, norm_layer=norm_layer)
    if image_size <= 64 or (norm == "instance" and image_size <= 128):
        model.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        if image_size <= 64:
            model.maxpool = nn.Identity()
    return model


def build_student(name: str, num_classes: int, image_size: int = 224, width: float = 1.0,
                  norm: str = "batch") -> nn.Module:
    """Builds a freshly initialised student network (uses the global torch RNG: seed it first).

    Args:
        name: a name in `STUDENTS` (spellings like "ResNetAP-10" or "ConvNet-3" work too).
        num_classes: number of outputs.
        image_size: input side in pixels (selects stems; sizes ConvNet's classifier).
        width: channel multiplier (1.0 = published networks); not available for ResNet-18.
        norm: ResNet-18's normalisation, "batch" (soft-label protocol) or "instance" (hard-label protocol; see
            `resnet18`). ResNetAP-10 and the ConvNets always use instance norm.
    """
    name = canonical_student(name)
    if width <= 0:
        raise ValueError(f"`width` must be > 0, got {width}")
    if name == "resnetap10":
        return ResNetAP(num_classes, image_size, depth=10, width=width)
    if name in CONVNET_DEPTHS:
        return ConvNet(num_classes, image_size, depth=CONVNET_DEPTHS[name], width=max(1, int(128 * width)))
    if width != 1.0:
        raise ValueError(f"ResNet-18 comes at width 1.0 only, got `width` {width}")
    return resnet18(num_classes, image_size, norm)


def num_parameters(model: nn.Module) -> int:
    """How many parameters a network has (`vldd.models.paper_shapes.component_parameters` counts a `shapes://` id's)."""
    return sum(p.numel() for p in model.parameters())


def save_classifier(model: nn.Module, path: str | Path, *, arch: str, class_names: list[str] | None,
                    image_size: int, width: float = 1.0, extra: dict[str, Any] | None = None) -> Path:
    """Saves a classifier (e.g. a teacher for the soft protocol) in vldd's checkpoint format.

    The file is `torch.save` of a plain dict, loadable with `weights_only=True`: `format` ("vldd.classifier"),
    `version` (1), `arch` (a student name, "torchvision:<name>" or "timm:<name>"), `num_classes`, `class_names`
    (label names in output order, or None), `image_size` (pixels it was trained at), `width`, `state_dict`.

    Args:
        model: the network; its state_dict is stored on CPU.
        path: file to write.
        arch: how to rebuild the network (see above).
        class_names: the label name of every output, used to align outputs with another dataset's classes.
        image_size: input side in pixels the model expects.
        width: channel multiplier for vldd students.
        extra: more plain entries to store (e.g. `vldd teacher` adds its recipe and val accuracy).
    """
    from ..core.runs import atomic_path

    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    num_classes = _output_features(model)
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for a model with {num_classes} outputs")
    with atomic_path(path, suffix=path.suffix) as tmp:  # a run killed mid-write leaves no half checkpoint
        torch.save({**(extra or {}), "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": arch,
                    "num_classes": num_classes, "class_names": list(class_names) if class_names is not None else None,
                    "image_size": image_size, "width": width, "state_dict": state}, tmp)
    return path


def _output_features(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cannot find the output layer of {type(model).__name__}: it has no nn.Linear")
    return linears[-1].out_features


def _build_arch(arch: str, num_classes: int | None, image_size: int, width: float, pretrained: bool) -> nn.Module:
    kind, _, name = arch.partition(":")
    if kind == "torchvision" and name:
        import torchvision

        if pretrained:
            return torchvision.models.get_model(name, weights="DEFAULT")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000)
    if kind == "timm" and name:
        import timm

        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    if num_classes is None:
        raise ValueError(f"architecture {arch!r} needs a number of classes")
    return build_student(arch, num_classes, image_size, width)


def _rded_state_dict(checkpoint: Any) -> dict[str, torch.Tensor] | None:
    """The ResNet-18 state dict inside an RDED teacher file (`{"model": state_dict}` or a bare state dict), else None.

    RDED's CIFAR/Tiny-ImageNet teachers ("<dataset>_resnet18_modified.pth") are torchvision's `resnet18` with `conv1`
    replaced by a 3x3 stride-1 convolution and `maxpool` by `nn.Identity()` (which has no parameters), its `fc` cut to
    the dataset's classes; the keys are torchvision's (`conv1.weight`, `bn1.*`, `layer1.0.conv1.weight`, ...,
    `fc.weight`, `fc.bias`). A "module." prefix (saved from DataParallel/DDP) is removed.
    """
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state if {"conv1.weight", "fc.weight", "layer4.1.bn2.weight"} <= set(state) else None


def load_rded_teacher(state: dict[str, torch.Tensor], class_names: list[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Builds RDED's `resnet18_modified` (3x3 stem, no max-pool) or plain `resnet18` from its state dict.

    Args:
        state: torchvision ResNet-18 keys (see `_rded_state_dict`).
        class_names: the label name of every output, in output order (RDED files store none).
    """
    num_classes = state["fc.weight"].shape[0]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for an RDED teacher with {num_classes} outputs")
    kernel = state["conv1.weight"].shape[-1]
    if kernel not in (3, 7):
        raise ValueError(f"unexpected RDED teacher stem: conv1 is {kernel}x{kernel}, expected 3x3 (resnet18_modified) "
                         "or 7x7 (resnet18)")
    model = resnet18(num_classes, 32 if kernel == 3 else 224, norm="batch")  # 3x3 stem and no max-pool below 64 px
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"the RDED teacher's state dict does not fit ResNet-18: {first}") from None
    arch = "rded:resnet18_modified" if kernel == 3 else "rded:resnet18"
    meta = {"arch": arch, "num_classes": num_classes, "class_names": list(class_names), "image_size": None,
            "width": 1.0, "pretrained": False}
    return model.eval(), meta


def load_classifier(spec: str | Path, *, pretrained: bool = False, image_size: int = 224,
                    map_location: str | torch.device = "cpu", class_names: list[str] | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Loads a classifier from a vldd checkpoint file, an RDED teacher file or a model id, in eval mode.

    Args:
        spec: a checkpoint written by `save_classifier`, an RDED teacher file (`resnet18_modified` state dict; needs
            `class_names`), "torchvision:<name>" or "timm:<name>".
        pretrained: for model ids, download the library's pretrained weights (ImageNet-1K classes). Required for
            ids: a randomly initialised teacher would teach noise.
        image_size: input side in pixels (used only to describe model ids).
        map_location: where checkpoint tensors are loaded.
        class_names: the label name of every output, in output order; required for RDED files, and replaces the
            names of a vldd checkpoint that stores none.

    Returns:
        (model, meta) where meta holds `arch`, `num_classes`, `class_names` (None when unknown) and `image_size`.
    """
    spec = str(spec)
    if spec.startswith(("torchvision:", "timm:")):
        if not pretrained:
            raise ValueError(f"teacher {spec!r} would be randomly initialised: ask for its pretrained weights "
                             "(`teacher_pretrained`, downloads them) or pass a vldd checkpoint file")
        model = _build_arch(spec, None, image_size, 1.0, pretrained=True)
        meta = {"arch": spec, "num_classes": _output_features(model), "class_names": None,
                "image_size": image_size, "pretrained": True}
        return model.eval(), meta
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"teacher {spec!r} is neither a checkpoint file nor 'torchvision:<name>' / "
                                "'timm:<name>'")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        state = _rded_state_dict(checkpoint)
        if state is None:
            raise ValueError(f"{spec!r} is not a vldd classifier checkpoint (a dict with format "
                             f"{CHECKPOINT_FORMAT!r}; write one with vldd.models.students.save_classifier or `vldd teacher`) "
                             "nor an RDED ResNet-18 teacher ({'model': state_dict})")
        if class_names is None:
            raise ValueError(f"{spec!r} is an RDED teacher, which stores no class names: give the name of every "
                             "output in order (`teacher_class_names`, a file with one name per line)")
        return load_rded_teacher(state, class_names)
    stored = checkpoint.get("class_names")
    if class_names is not None and stored is not None and list(class_names) != list(stored):
        raise ValueError(f"{spec!r} stores its class names {stored[:5]}...; the names given differ "
                         f"({list(class_names)[:5]}...): leave them out for a vldd checkpoint")
    if class_names is not None and len(class_names) != checkpoint["num_classes"]:
        raise ValueError(f"{len(class_names)} class names given for {spec!r}, which has {checkpoint['num_classes']} "
                         "outputs")
    model = _build_arch(checkpoint["arch"], checkpoint["num_classes"], checkpoint["image_size"],
                        checkpoint.get("width", 1.0), pretrained=False)
    model.load_state_dict(checkpoint["state_dict"])
    meta = {k: checkpoint.get(k) for k in ("arch", "num_classes", "class_names", "image_size", "width")}
    meta["class_names"] = stored if stored is not None else (list(class_names) if class_names else None)
    meta["pretrained"] = False
    return model.eval(), meta

