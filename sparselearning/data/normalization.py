"""Per-channel normalisation, written once for every input pipeline (in-memory sets and ImageNet).

The arithmetic is ``(x / 255 - mean) / std`` in float32, in this order, everywhere.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["channel_stats", "normalize_uint8"]


def channel_stats(mean: Sequence[float], std: Sequence[float], device=None,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std as (C, 1, 1) tensors on ``device`` (they broadcast over (..., C, H, W))."""
    m = torch.tensor(tuple(mean), dtype=dtype, device=device).view(-1, 1, 1)
    s = torch.tensor(tuple(std), dtype=dtype, device=device).view(-1, 1, 1)
    return m, s


def normalize_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., C, H, W) -> float32 ``(x / 255 - mean) / std`` (a new tensor; ``x`` is untouched)."""
    return x.to(torch.float32).div_(255.0).sub_(mean).div_(std)
