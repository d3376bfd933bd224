"""Density allocation: how many weights each sparse layer keeps, and the initial masks.

Every function here is pure: shapes/tensors in, densities/masks out. Counts are exact
(top-k or a random permutation), never Bernoulli draws, so a layer's realised density equals
its target up to rounding every time.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from .selection import top_k_mask

Shape = Sequence[int]


def _scaled_densities(raw_scores: Mapping[str, float], numels: Mapping[str, int],
                      density: float) -> dict[str, float]:
    """Densities proportional to raw_scores, promoting layers whose density would exceed 1.

    Solves eps so that sum_i d_i * N_i = density * sum_i N_i with d_i = eps * r_i for the
    layers not yet dense and d_i = 1 for the dense set D. While the largest eps * r_i
    exceeds 1, every layer with that largest score joins D and eps is solved again.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    dense: set[str] = set()
    while True:
        free = [n for n in raw_scores if n not in dense]
        if not free:  # every layer dense: only possible at density 1
            return {n: 1.0 for n in raw_scores}
        budget = sum(density * numels[n] for n in free) - sum((1 - density) * numels[n] for n in dense)
        eps = budget / sum(raw_scores[n] * numels[n] for n in free)
        max_score = max(raw_scores[n] for n in free)
        if eps * max_score > 1.0:
            dense.update(n for n in free if raw_scores[n] == max_score)
            continue
        return {n: (1.0 if n in dense else eps * raw_scores[n]) for n in raw_scores}


def erk_densities(shapes: Mapping[str, Shape], density: float,
                  erk_power_scale: float = 1.0) -> dict[str, float]:
    """Erdos-Renyi-Kernel: density of layer i proportional to (sum of dims / numel) ** power."""
    numels = {n: math.prod(s) for n, s in shapes.items()}
    scores = {n: (sum(s) / numels[n]) ** erk_power_scale for n, s in shapes.items()}
    return _scaled_densities(scores, numels, density)


def er_densities(shapes: Mapping[str, Shape], density: float) -> dict[str, float]:
    """Erdos-Renyi (SET): density proportional to (fan_out + fan_in) / (fan_out * fan_in)."""
    numels = {n: math.prod(s) for n, s in shapes.items()}
    scores = {}
    for n, s in shapes.items():
        fan_out = s[0]
        fan_in = s[1] if len(s) > 1 else 1
        scores[n] = (fan_out + fan_in) / (fan_out * fan_in)
    return _scaled_densities(scores, numels, density)


def uniform_densities(shapes: Mapping[str, Shape], density: float) -> dict[str, float]:
    """The same density for every layer."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return {n: density for n in shapes}


def allocate_densities(mode: str, shapes: Mapping[str, Shape], density: float,
                       erk_power_scale: float = 1.0) -> dict[str, float]:
    """Per-layer densities for the named allocation mode (ERK, ER or uniform)."""
    if mode == "ERK":
        return erk_densities(shapes, density, erk_power_scale)
    if mode == "ER":
        return er_densities(shapes, density)
    if mode == "uniform":
        return uniform_densities(shapes, density)
    raise ValueError(f"unknown density allocation {mode!r}; choose ERK, ER or uniform")


def count_for_density(numel: int, density: float) -> int:
    """Active weights of a layer with this density: rounded, at least 1, at most numel."""
    return min(numel, max(1, round(density * numel)))


def random_mask(shape: Shape, n_active: int, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """A bool mask with exactly n_active True entries at uniformly random positions."""
    numel = math.prod(shape)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=generator)[:n_active]] = True
    return mask.view(*shape).to(device) if device is not None else mask.view(*shape)


def global_magnitude_masks(weights: Mapping[str, torch.Tensor], keep_fraction: float) -> dict[str, torch.Tensor]:
    """Global magnitude pruning (PF): keep the floor(N * keep_fraction) largest |w| over all layers."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep fraction must be in (0, 1], got {keep_fraction}")
    device = next(iter(weights.values())).device  # ranked where the weights live, not on the host
    flat = torch.cat([w.detach().abs().flatten().float().to(device) for w in weights.values()])
    keep = max(1, math.floor(flat.numel() * keep_fraction))
    chosen = top_k_mask(flat, keep)
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = chosen[offset:offset + w.numel()].view_as(w).to(w.device)
        offset += w.numel()
    return masks
