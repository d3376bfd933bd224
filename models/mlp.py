"""Small fully connected and LeNet models: LeNet-300-100, LeNet-5 (Caffe variant), MLP_CIFAR10.

Unlike the original (hard-wired to 10 classes and one input size), these take ``num_classes``,
``in_channels`` and ``image_size``; the fully connected input size is computed from them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LeNet_300_100(nn.Module):  # noqa: N801 - conventional name
    """input -> 300 -> 100 -> classes, ReLU. Returns logits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.in_features = in_channels * image_size * image_size
        self.fc1 = nn.Linear(self.in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class MLP_CIFAR10(nn.Module):  # noqa: N801 - conventional name
    """input -> 1024 -> 512 -> classes, ReLU. Returns logits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        self.in_features = in_channels * image_size * image_size
        self.fc1 = nn.Linear(self.in_features, 1024)
        self.fc2 = nn.Linear(1024, 512)
        self.fc3 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


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
