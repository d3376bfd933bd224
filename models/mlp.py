"""Small fully connected and LeNet models: the MLP (LeNet-300-100, MLP_CIFAR10), LeNet-5 (Caffe variant).

Unlike the original (hard-wired to 10 classes and one input size), these take ``num_classes``,
``in_channels`` and ``image_size``; the fully connected input size is computed from them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    """input -> widths[0] -> ... -> widths[-1] -> classes, ReLU between; layers fc1, fc2, ... Returns logits.

    The paper's two: LeNet-300-100 (widths 300, 100) and MLP_CIFAR10 (widths 1024, 512).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 widths: tuple[int, ...] = (300, 100)):
        super().__init__()
        self.in_features = in_channels * image_size * image_size
        sizes = (self.in_features, *widths, num_classes)
        self.num_layers = len(sizes) - 1
        for i in range(self.num_layers):
            setattr(self, f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for i in range(1, self.num_layers):
            x = F.relu(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.num_layers}")(x)


def _lenet5_grid(image_size: int) -> int:
    """Side of the feature map after conv5-pool2-conv5-pool2 (valid convs, floor pooling)."""
    return ((image_size - 4) // 2 - 4) // 2


class LeNet_5_Caffe(nn.Module):  # noqa: N801 - conventional name
    """conv5(20) - maxpool2 - conv5(50) - maxpool2 - FC 500 - FC classes (Caffe's LeNet-5). Returns logits.

    The FC input is 50*4*4 on 28x28 inputs and 50*5*5 on 32x32 inputs; adaptive average pooling to
    the grid of the built ``image_size`` (an identity at that size) keeps other sizes working.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        grid = _lenet5_grid(image_size)
        if grid < 1:
            raise ValueError(f"LeNet-5 needs images of at least 16x16, got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.fc3 = nn.Linear(50 * grid * grid, 500)
        self.fc4 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.pool(x), 1)
        x = F.relu(self.fc3(x))
        return self.fc4(x)
