"""Growth (regrowth) rules: which inactive positions a topology update switches on.

Each rule maps (mask, score source, count) to a new bool mask with exactly `n_grow` more active
entries, chosen among the currently inactive positions. Grown weights start at zero; the caller
zeroes them and their optimizer state.

``GROWTH_RULES`` names them for Masking and the --growth flag: a new mode is one function and one
entry there (plus its name in USES_MOMENTUM / USES_DENSE_GRADIENT if it reads those).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .selection import top_k_mask


def _grow_highest(score: torch.Tensor, mask: torch.Tensor, n_grow: int) -> torch.Tensor:
    """Switch on the n_grow inactive entries with the highest score."""
    if n_grow <= 0:
        return mask.clone()
    return mask | top_k_mask(score, n_grow, largest=True, among=~mask)


def gradient_growth(mask: torch.Tensor, grad: torch.Tensor, n_grow: int) -> torch.Tensor:
    """RigL: grow where the current mini-batch gradient is largest in magnitude."""
    return _grow_highest(grad.detach().abs(), mask, n_grow)


def momentum_growth(mask: torch.Tensor, momentum: torch.Tensor, n_grow: int) -> torch.Tensor:
    """Sparse momentum: grow where the (dense) gradient momentum is largest in magnitude."""
    return _grow_highest(momentum.detach().abs(), mask, n_grow)


def random_growth(mask: torch.Tensor, n_grow: int, generator: torch.Generator) -> torch.Tensor:
    """SET: grow exactly n_grow uniformly random inactive positions.

    The scores are drawn on the mask's device. `generator` is a CPU generator, the same on every rank;
    for a mask elsewhere it seeds a generator there (one CPU draw), so every rank still makes the same
    choice for the same generator state and no weight-sized tensor crosses to the device.
    """
    if mask.device != generator.device:
        seed = int(torch.randint(2 ** 62, (), generator=generator, device=generator.device))
        generator = torch.Generator(mask.device).manual_seed(seed)
    score = torch.rand(mask.shape, generator=generator, device=mask.device)
    return _grow_highest(score, mask, n_grow)


@dataclass
class GrowthSignals:
    """What a growth rule may rank one layer's inactive positions by."""

    name: str  # the layer's weight name (for messages)
    grad: torch.Tensor | None  # its dense gradient of a recent batch
    momentum: torch.Tensor | None  # its dense gradient momentum (rules in USES_MOMENTUM)
    generator: torch.Generator  # the masks' CPU generator (random rules)


# (mask, n_grow, signals) -> the mask after growth
GrowthRule = Callable[[torch.Tensor, int, GrowthSignals], torch.Tensor]


def _gradient(mask: torch.Tensor, n_grow: int, s: GrowthSignals) -> torch.Tensor:
    if s.grad is None:
        raise RuntimeError(f"gradient growth needs a gradient for {s.name}; run backward() first")
    return gradient_growth(mask, s.grad, n_grow)


GROWTH_RULES: dict[str, GrowthRule] = {
    "gradient": _gradient,
    "random": lambda mask, n_grow, s: random_growth(mask, n_grow, s.generator),
    "momentum": lambda mask, n_grow, s: momentum_growth(mask, s.momentum, n_grow),
}
USES_MOMENTUM = {"momentum"}  # Masking keeps a dense gradient momentum for these
USES_DENSE_GRADIENT = {"gradient"}  # a topology update needs the dense gradient (FLOPs: charged)
