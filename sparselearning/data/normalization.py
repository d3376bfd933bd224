"""Per-channel normalisation, written once for every input pipeline (in-memory sets and ImageNet).

The arithmetic is ``(x / 255 - mean) / std`` in float32, in this order, everywhere: the in-memory
loader's batches equal ``normalize(x.float() / 255, spec)`` bit for bit.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import UsageError

__all__ = ["channel_stats", "normalize", "normalize_uint8"]


def channel_stats(mean: Sequence[float], std: Sequence[float], device=None,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std as (C, 1, 1) tensors on ``device`` (they broadcast over (..., C, H, W))."""
    m = torch.tensor(tuple(mean), dtype=dtype, device=device).view(-1, 1, 1)
    s = torch.tensor(tuple(std), dtype=dtype, device=device).view(-1, 1, 1)
    return m, s


def normalize_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., C, H, W) -> float32 ``(x / 255 - mean) / std`` (a new tensor; ``x`` is untouched)."""
    return x.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def normalize(x_float01: torch.Tensor, spec) -> torch.Tensor:
    """(x - mean) / std per channel, for float images in [0, 1] of shape (..., C, H, W)."""
    if not torch.is_floating_point(x_float01):
        raise UsageError("normalize expects float images in [0, 1]; convert uint8 with x.float() / 255 first")
    mean, std = channel_stats(spec.mean, spec.std, x_float01.device, x_float01.dtype)
    return (x_float01 - mean) / std
