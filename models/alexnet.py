"""AlexNet-s / AlexNet-b for 32x32 images (the sparse-learning variant).

Five stride-2 convs (96, 256, 384, 384, 256 channels; kernels 11, 5, 3, 3, 3) each with BN and
ReLU, which reduce a 32x32 (or 28x28) image to 1x1, then FC 1024f -> 1024f -> classes with BN1d
(f=1 for 's', f=2 for 'b'). Adaptive average pooling before the classifier keeps other sizes
working and is an identity on 28x28 and 32x32 inputs.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class AlexNet(nn.Module):
    """AlexNet with BN; ``config`` 's' (FC width 1024) or 'b' (FC width 2048). Returns logits."""

    def __init__(self, config: str = "s", num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if config not in ("s", "b"):
            raise ValueError(f"unknown AlexNet config {config!r}; choose 's' or 'b'")
        self.config = config
        width = 1024 * (1 if config == "s" else 2)
        spec = [(96, 11, 2), (256, 5, 2), (384, 3, 1), (384, 3, 1), (256, 3, 1)]  # (out, kernel, padding)
        layers: list[nn.Module] = []
        channels = in_channels
        for out, kernel, pad in spec:
            layers += [nn.Conv2d(channels, out, kernel_size=kernel, stride=2, padding=pad),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(channels, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
            nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
