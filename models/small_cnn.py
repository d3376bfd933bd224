"""``cnn-small``: a tiny CNN for CPU demos on Fashion-MNIST.

Three blocks conv3x3 (no bias) + BN + ReLU with 16, 32 and 64 channels; 2x2 max-pooling after the
first two; global average pooling and a linear classifier. About 24k parameters and about 1.9 M
multiply-adds per 1x28x28 image (2.8 M per 3x32x32). Returns logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .init import init_weights


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, out in enumerate(widths):
            layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.fc(torch.flatten(x, 1))
