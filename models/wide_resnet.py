"""Pre-activation Wide ResNet (Zagoruyko & Komodakis, 2016) as used by FreeTickets.

Parameter names follow the reference layout (``conv1``, ``block1.layer.0.conv1``,
``block1.layer.0.convShortcut``, ``bn1``, ``fc``) so that per-layer statistics such as the
ERK densities in the reference can be matched by name.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-(dropout)-conv3x3, plus a shortcut.

    If the width changes, the pre-activated input feeds both the conv path and a 1x1 strided
    conv shortcut (no bias); otherwise the shortcut is the identity on the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None  # noqa: N815 - name kept for parameter-name compatibility
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride,
                                          padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv1(pre)
        out = self.relu2(self.bn2(out))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.equal_in_out else self.convShortcut(pre)
        return out + shortcut


class NetworkBlock(nn.Module):
    """One stage: ``nb_layers`` BasicBlocks; only the first changes width/stride."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int,
                 drop_rate: float = 0.0):
        super().__init__()
        blocks = []
        for i in range(nb_layers):
            blocks.append(BasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                     stride if i == 0 else 1, drop_rate))
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: n=(depth-4)/6 blocks per stage, widths [16, 16k, 32k, 64k]. Returns logits."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 10, dropRate: float = 0.0,  # noqa: N803
                 in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 with n>=1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor = depth, widen_factor
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropRate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropRate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropRate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)  # = avg-pool 8 on 32x32 inputs
        self.fc = nn.Linear(widths[3], num_classes)
        self.n_channels = widths[3]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                m.weight.data.normal_(0.0, math.sqrt(2.0 / (kh * kw * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1.0)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        out = torch.flatten(self.pool(out), 1)
        return self.fc(out)
