"""Redistribution: how the regrowth budget is shared between layers.

`none` gives each layer back exactly what it lost. The other rules split the total removed
count in proportion to a per-layer score, in whole weights (largest remainder), never giving a
layer more than it has room for; the total is preserved exactly.

``REDISTRIBUTION_RULES`` names the layer scores for Masking and the --redistribution flag (None:
no redistribution): a new mode is one score function and one entry there.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch


def mean_active_magnitude(values: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per layer, the mean |value| over its active positions."""
    return {name: float(values[name].detach().abs()[mask].sum()) / max(int(torch.count_nonzero(mask)), 1)
            for name, mask in masks.items()}


def magnitude_scores(weights, masks, momenta):
    return mean_active_magnitude(weights, masks)


def momentum_scores(weights, masks, momenta):
    if momenta is None:
        raise ValueError("momentum redistribution needs gradient momenta")
    return mean_active_magnitude(momenta, masks)


# (weights, masks after death, gradient momenta or None) -> per-layer score; None: each layer regrows what it lost
ScoreRule = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], Mapping[str, torch.Tensor] | None],
                     dict[str, float]]
REDISTRIBUTION_RULES: dict[str, ScoreRule | None] = {
    "none": None,
    "magnitude": magnitude_scores,
    "momentum": momentum_scores,
}
USES_MOMENTUM = {"momentum"}  # Masking keeps a dense gradient momentum for these


def layer_scores(mode: str, weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                 momenta: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Per-layer redistribution score of `mode`: mean |w| ('magnitude') or mean |momentum| ('momentum') of
    the active weights."""
    if REDISTRIBUTION_RULES.get(mode) is None:
        raise ValueError(f"unknown redistribution {mode!r}")
    return REDISTRIBUTION_RULES[mode](weights, masks, momenta)


def split_budget(scores: Mapping[str, float], budget: int, capacity: Mapping[str, int]) -> dict[str, int]:
    """Integer allocation of `budget` proportional to scores, each at most its capacity.

    Layers that hit their capacity are filled and the rest is shared again among the others;
    fractional parts go to the largest remainders. Sum of the result == min(budget, sum(capacity)).
    """
    alloc = {n: 0 for n in scores}
    remaining = min(budget, sum(capacity.values()))
    open_layers = [n for n in scores if capacity[n] > 0]
    while remaining > 0 and open_layers:
        total = sum(max(scores[n], 0.0) for n in open_layers)
        share = {n: (max(scores[n], 0.0) / total if total > 0 else 1.0 / len(open_layers)) * remaining
                 for n in open_layers}
        full = [n for n in open_layers if alloc[n] + share[n] >= capacity[n]]
        if full:  # fill the saturated layers, then redistribute what is left
            for n in full:
                remaining -= capacity[n] - alloc[n]
                alloc[n] = capacity[n]
            open_layers = [n for n in open_layers if n not in full]
            continue
        floors = {n: int(share[n]) for n in open_layers}
        for n in open_layers:
            alloc[n] += floors[n]
        left = remaining - sum(floors.values())
        by_remainder = sorted(open_layers, key=lambda n: share[n] - floors[n], reverse=True)
        for n in by_remainder[:left]:
            alloc[n] += 1
        remaining = 0
    return alloc
