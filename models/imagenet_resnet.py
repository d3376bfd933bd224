"""ImageNet ResNet-18/34/50/101/152: torchvision's architectures, with the paper's two conv inits.

The networks are ``torchvision.models.resnet*`` built without weights: 7x7 stride-2 stem, BN,
ReLU, 3x3 stride-2 max-pool, four stages (BasicBlock for 18/34, Bottleneck for 50/101/152),
global average pool, one Linear classifier. They return logits and accept any input size (the
pool is adaptive); ``in_channels`` other than 3 replaces the stem conv.

Initialisation (``-c/--model-config`` of ImageNet/main.py):

- ``classic``: every conv weight Kaiming-normal with ``mode='fan_out'`` (ReLU gain);
- ``fanin``: every conv weight Kaiming-normal with ``mode='fan_in'`` (ReLU gain), the paper's
  launch line.

In both, BatchNorm weights are 1 and biases 0 (no zero-init of the last BN of a block) and the
classifier keeps PyTorch's default Linear init. Registered in ``models`` as ``imagenet-resnet18``
... ``imagenet-resnet152`` (distinct from the CIFAR-style ``resnet18/34/50``), so a ticket built
from one of these is rebuilt by ``models.get_model``; the init does not matter there because the
weights are loaded.
"""
from __future__ import annotations

import torch.nn as nn

from .init import init_weights

ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def imagenet_resnet(arch: str = "resnet50", num_classes: int = 1000, in_channels: int = 3,
                    init: str = "classic") -> nn.Module:
    """torchvision ResNet ``arch`` for ``num_classes`` classes and ``in_channels``-channel images."""
    if arch not in ARCHS:
        raise ValueError(f"unknown ImageNet ResNet {arch!r}; choose one of {', '.join(ARCHS)}")
    import torchvision  # here, not at module level: it costs every script's start-up several seconds

    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    init_weights(model, init)
    return model
