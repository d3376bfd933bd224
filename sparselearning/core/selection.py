"""Exact top-k selection as a bool mask, fast on large tensors.

A topology update picks, per layer, the k largest or smallest scores among some of the entries
(the active weights for death, the inactive ones for growth). torch.topk over millions of entries
runs on one thread and dominates the update. Instead we estimate the k-th value from a strided
sample and bracket it with two thresholds: entries beyond the outer one are surely chosen, and
only the thin band between the two (a few % of the entries) goes through topk. If the bracket
misses the k-th value (a structured tensor fools the sample), we fall back to a full topk, so the
result is always exact: k entries whose values are the k largest (smallest), ties broken by topk.
"""
from __future__ import annotations

import math

import torch

_SAMPLE = 1 << 16  # at most this many candidates are sampled
_SMALL = 1 << 15  # up to this many candidates, a plain topk is as fast


def top_k_mask(score: torch.Tensor, k: int, largest: bool = True, among: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask (score's shape) of the k largest (or smallest) scores among the True entries of
    `among` (all entries if None); k is clipped to the number of candidates."""
    flat = score.reshape(-1)
    pool = None if among is None else among.reshape(-1)
    n = flat.numel() if pool is None else int(torch.count_nonzero(pool))
    k = min(max(int(k), 0), n)
    if 2 * k > n:  # choose the complement from the other end: the band stays near the smaller side
        rest = _top_k_flat(flat, n - k, not largest, pool, n)
        chosen = ~rest if pool is None else pool & ~rest
    else:
        chosen = _top_k_flat(flat, k, largest, pool, n)
    return chosen.view(score.shape)


def _full_topk(flat: torch.Tensor, k: int, largest: bool, pool: torch.Tensor | None) -> torch.Tensor:
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if pool is None:
        chosen[torch.topk(flat, k, largest=largest, sorted=False).indices] = True
    else:
        candidates = pool.nonzero().squeeze(1)
        chosen[candidates[torch.topk(flat[candidates], k, largest=largest, sorted=False).indices]] = True
    return chosen


def _top_k_flat(flat: torch.Tensor, k: int, largest: bool, pool: torch.Tensor | None, n: int) -> torch.Tensor:
    if k == 0:
        return torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if n <= _SMALL:
        return _full_topk(flat, k, largest, pool)
    stride = max(1, n // _SAMPLE)
    sample = flat[::stride] if pool is None else flat[::stride][pool[::stride]]
    m = sample.numel()
    if m < _SMALL // 4:  # too few candidates fell in the sample to trust its quantiles
        return _full_topk(flat, k, largest, pool)
    margin = 2.5 / math.sqrt(m)  # five standard errors of a sample quantile (at most 0.5 / sqrt(m))
    q = 1.0 - k / n if largest else k / n  # the k-th value's quantile, ascending
    lo_i, hi_i = math.floor((q - margin) * m), math.ceil((q + margin) * m)  # 0-based ranks in the sample
    lo = torch.kthvalue(sample, lo_i + 1).values if lo_i >= 0 else flat.new_tensor(float("-inf"))
    hi = torch.kthvalue(sample, hi_i + 1).values if hi_i < m else flat.new_tensor(float("inf"))
    # sure: beyond the bracket on the winning side; band: inside it (sure is a subset of `reach`)
    sure, reach = (flat > hi, flat >= lo) if largest else (flat < lo, flat <= hi)
    band = reach.logical_xor_(sure)
    if pool is not None:
        sure &= pool
        band &= pool
    need = k - int(torch.count_nonzero(sure))
    band_idx = band.nonzero().squeeze(1)
    if need < 0 or need > band_idx.numel():  # the bracket missed the k-th value
        return _full_topk(flat, k, largest, pool)
    if need > 0:
        pick = torch.topk(flat[band_idx], need, largest=largest, sorted=False).indices
        sure[band_idx[pick]] = True
    return sure
