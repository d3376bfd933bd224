"""Death (pruning) rules: which active weights a topology update removes.

Each rule maps (weights, mask, count) to a new bool mask with exactly `n_remove` fewer active
entries (the threshold rule removes however many fall under its threshold). Ties are broken by
torch.topk, deterministically for a given input.

``DEATH_RULES`` names them for Masking and the --death flag: a new mode is one function and one
entry there (a layer-wise rule of the shape above through ``per_layer``).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from .selection import top_k_mask


def num_to_remove(n_active: int, rate: float) -> int:
    """ceil(rate * n_active), as the paper's code removes (never more than are active)."""
    return min(n_active, math.ceil(rate * n_active))


def _remove_lowest(score: torch.Tensor, mask: torch.Tensor, n_remove: int) -> torch.Tensor:
    """Drop the n_remove active entries with the lowest score."""
    if n_remove <= 0:
        return mask.clone()
    return mask & ~top_k_mask(score, n_remove, largest=False, among=mask)


def magnitude_death(weight: torch.Tensor, mask: torch.Tensor, n_remove: int) -> torch.Tensor:
    """Remove the n_remove active weights of smallest magnitude (layer-wise)."""
    return _remove_lowest(weight.detach().abs(), mask, n_remove)


def set_death(weight: torch.Tensor, mask: torch.Tensor, n_remove: int) -> torch.Tensor:
    """SET: remove the smallest positive and the largest negative weights.

    The removal is split between the positive (w >= 0) and negative active weights in
    proportion to their counts, so each sign loses the same fraction.
    """
    w = weight.detach()
    positive = mask & (w >= 0)
    negative = mask & (w < 0)
    n_pos, n_active = int(torch.count_nonzero(positive)), int(torch.count_nonzero(mask))
    k_pos = min(n_pos, round(n_remove * n_pos / max(n_active, 1)))
    k_neg = n_remove - k_pos
    new_mask = _remove_lowest(w, positive, k_pos) | _remove_lowest(-w, negative, k_neg)
    return new_mask


def threshold_death(weight: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Remove every active weight with |w| below threshold (the count varies)."""
    return mask & (weight.detach().abs() >= threshold)


def global_magnitude_death(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                           n_remove: int) -> dict[str, torch.Tensor]:
    """Remove the n_remove smallest-magnitude active weights across all layers together."""
    names = list(weights)
    device = weights[names[0]].device  # ranked where the weights live: no copy of the model to the host
    flat = torch.cat([weights[n].detach().abs().flatten().float().to(device) for n in names])
    active = torch.cat([masks[n].flatten().to(device) for n in names])
    removed = top_k_mask(flat, n_remove, largest=False, among=active)
    out, offset = {}, 0
    for n in names:
        m = masks[n]
        out[n] = m & ~removed[offset:offset + m.numel()].view_as(m).to(m.device)
        offset += m.numel()
    return out


# (weights, masks, active counts, death rate, |w| threshold) of the updatable layers -> their masks after death
DeathRule = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], Mapping[str, int], float, float],
                     dict[str, torch.Tensor]]


def per_layer(rule: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> DeathRule:
    """A layer-wise rule (weight, mask, n_remove) as a DeathRule: every layer loses ceil(rate x its active count)."""
    def layerwise(weights, masks, active, rate, threshold):
        return {n: rule(weights[n], masks[n], num_to_remove(active[n], rate)) for n in weights}
    return layerwise


def _threshold(weights, masks, active, rate, threshold):
    return {n: threshold_death(weights[n], masks[n], threshold) for n in weights}


def _global_magnitude(weights, masks, active, rate, threshold):
    return global_magnitude_death(weights, masks, sum(num_to_remove(active[n], rate) for n in weights))


DEATH_RULES: dict[str, DeathRule] = {
    "magnitude": per_layer(magnitude_death),
    "SET": per_layer(set_death),
    "threshold": _threshold,
    "global_magnitude": _global_magnitude,
}
