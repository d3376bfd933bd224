"""VGG16 variants used by the sparse-learning literature: configs ``like``, ``D`` and ``C``.

Every conv has padding 1 (so the 1x1 convs of config C grow the feature map by 2 pixels) and is
followed by BatchNorm and ReLU. On 32x32 inputs D/like flatten to 512 features and C to 2048.
To also accept 28x28 inputs, D/like use ceil-mode max-pooling (identical to floor mode on the
even sizes a 32x32 input produces) and every config ends with adaptive average pooling to the
grid the classifier expects (an identity on 32x32 and 28x28 inputs).
"""
from __future__ import annotations

import torch
import torch.nn as nn

# An int is a 3x3 conv with that many output channels, a tuple is (kernel size, channels),
# 'M' is a 2x2 max-pool.
CONFIGS: dict[str, list] = {
    "like": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (1, 256), "M", 512, 512, (1, 512), "M",
          512, 512, (1, 512), "M"],
}


class VGG16(nn.Module):
    """VGG16 with BN. ``config`` in {'like', 'D', 'C'}. Returns logits."""

    def __init__(self, config: str = "D", num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if config not in CONFIGS:
            raise ValueError(f"unknown VGG16 config {config!r}; choose one of {sorted(CONFIGS)}")
        self.config = config
        ceil = config != "C"
        layers: list[nn.Module] = []
        channels = in_channels
        for item in CONFIGS[config]:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil))
                continue
            kernel, out = item if isinstance(item, tuple) else (3, item)
            layers += [nn.Conv2d(channels, out, kernel_size=kernel, padding=1),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        grid = 2 if config == "C" else 1
        self.pool = nn.AdaptiveAvgPool2d(grid)
        flat = channels * grid * grid
        if config == "like":
            self.classifier = nn.Sequential(
                nn.Linear(flat, 512), nn.ReLU(inplace=True), nn.BatchNorm1d(512),
                nn.Linear(512, num_classes),
            )
        else:
            self.classifier = nn.Sequential(
                nn.Linear(flat, 512), nn.ReLU(inplace=True), nn.BatchNorm1d(512),
                nn.Linear(512, 512), nn.ReLU(inplace=True), nn.BatchNorm1d(512),
                nn.Linear(512, num_classes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
