"""Model zoo: get_model(name, num_classes, in_channels, image_size).

A top-level package, as in the paper's repository (``from models import ...`` keeps working for its
readers), and a standalone one: it imports nothing of ``sparselearning``, so it can be lifted into
another project as it is. Tickets store a model's registry name, never this package's path.

Every model returns logits (apply ``log_softmax``/``cross_entropy`` outside) and accepts any
number of classes and 1- or 3-channel 28x28 or 32x32 images. Only ``nn.Conv2d`` and
``nn.Linear`` modules hold weight matrices, so a sparse engine that masks every Conv/Linear
weight covers all of them.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .alexnet import AlexNet
from .imagenet_resnet import imagenet_resnet
from .mlp import MLP_CIFAR10, LeNet_5_Caffe, LeNet_300_100
from .resnet import ResNet, resnet18, resnet34, resnet50
from .small_cnn import SmallCNN
from .vgg import VGG16
from .wide_resnet import WideResNet


class ModelArgumentError(ValueError):
    """Bad arguments to get_model (an unknown name, an image too small for the architecture, ...)."""


# name -> builder(num_classes, in_channels, image_size, drop_rate)
_Builder = Callable[[int, int, int, float], nn.Module]


def _wrn(depth: int, widen: int) -> _Builder:
    return lambda c, ch, s, p: WideResNet(depth, widen, num_classes=c, dropRate=p, in_channels=ch)


_REGISTRY: dict[str, _Builder] = {
    "MLPCIFAR10": lambda c, ch, s, p: MLP_CIFAR10(c, ch, s),
    "lenet5": lambda c, ch, s, p: LeNet_5_Caffe(c, ch, s),
    "lenet300-100": lambda c, ch, s, p: LeNet_300_100(c, ch, s),
    "alexnet-s": lambda c, ch, s, p: AlexNet("s", c, ch),
    "alexnet-b": lambda c, ch, s, p: AlexNet("b", c, ch),
    "vgg-c": lambda c, ch, s, p: VGG16("C", c, ch),
    "vgg-d": lambda c, ch, s, p: VGG16("D", c, ch),
    "vgg-like": lambda c, ch, s, p: VGG16("like", c, ch),
    "wrn-28-2": _wrn(28, 2),
    "wrn-28-10": _wrn(28, 10),
    "wrn-22-8": _wrn(22, 8),
    "wrn-16-8": _wrn(16, 8),
    "wrn-16-10": _wrn(16, 10),
    "resnet18": lambda c, ch, s, p: resnet18(c, ch),
    "resnet34": lambda c, ch, s, p: resnet34(c, ch),
    "resnet50": lambda c, ch, s, p: resnet50(c, ch),
    "cnn-small": lambda c, ch, s, p: SmallCNN(c, ch),
    # torchvision ImageNet ResNets (ImageNet/main.py); prefixed so they do not clash with the CIFAR ones
    "imagenet-resnet18": lambda c, ch, s, p: imagenet_resnet("resnet18", c, ch),
    "imagenet-resnet34": lambda c, ch, s, p: imagenet_resnet("resnet34", c, ch),
    "imagenet-resnet50": lambda c, ch, s, p: imagenet_resnet("resnet50", c, ch),
    "imagenet-resnet101": lambda c, ch, s, p: imagenet_resnet("resnet101", c, ch),
    "imagenet-resnet152": lambda c, ch, s, p: imagenet_resnet("resnet152", c, ch),
}

MODEL_NAMES: tuple[str, ...] = tuple(sorted(_REGISTRY))

# Smallest image side each family handles (feature maps must not shrink below 1x1).
_MIN_IMAGE_SIZE = {"lenet5": 16, "alexnet-s": 16, "alexnet-b": 16, "vgg-c": 16, "vgg-d": 16, "vgg-like": 16}


def get_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32, *,
              drop_rate: float = 0.0) -> nn.Module:
    """Build registry model ``name`` for ``num_classes`` classes and ``in_channels`` x
    ``image_size`` x ``image_size`` inputs. The model returns logits.

    ``drop_rate`` is the WideResNet dropout probability (0.0 in the paper's DST/EDST/PF runs);
    other models have no dropout and reject a non-zero value. Bad arguments raise ModelArgumentError.
    """
    if name not in _REGISTRY:
        raise ModelArgumentError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelArgumentError(f"{arg} must be a positive integer, got {value!r}")
    min_size = _MIN_IMAGE_SIZE.get(name, 1)
    if image_size < min_size:
        raise ModelArgumentError(f"model {name!r} needs images of at least {min_size}x{min_size}, got {image_size}")
    if not 0.0 <= float(drop_rate) < 1.0:
        raise ModelArgumentError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
    if drop_rate and not name.startswith("wrn-"):
        raise ModelArgumentError(f"drop_rate applies only to WideResNets (wrn-*), not {name!r}")
    return _REGISTRY[name](num_classes, in_channels, image_size, float(drop_rate))


__all__ = [
    "MODEL_NAMES", "ModelArgumentError", "get_model", "AlexNet", "LeNet_300_100", "LeNet_5_Caffe", "MLP_CIFAR10",
    "ResNet", "SmallCNN", "VGG16", "WideResNet", "imagenet_resnet", "resnet18", "resnet34", "resnet50",
]
