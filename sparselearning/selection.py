"""Exact top-k index selection, fast on large 1-D score vectors.

torch.topk over millions of entries with k in the hundreds of thousands dominates a topology
update. We estimate the k-th value from a strided sample, keep the candidates at or above it
(a superset of the true top-k whenever it holds at least k entries), and run topk on those
alone. If the estimate is too high we fall back to a full topk, so the result is always exact.
"""
from __future__ import annotations

import torch

_SAMPLE = 1 << 16


def top_k_indices(score: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Indices of the k largest (or smallest) entries of a 1-D tensor, in no particular order."""
    n = score.numel()
    k = min(max(k, 0), n)
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=score.device)
    if n <= 4 * _SAMPLE or 4 * k > n:  # plain topk is fast when k is a large fraction of n
        return torch.topk(score, k, largest=largest, sorted=False).indices
    s = score if largest else -score
    sample = s[:: n // _SAMPLE]
    # a threshold a little below the estimated k-th largest value, so the candidates cover the top-k
    rank = min(sample.numel(), int(sample.numel() * k / n * 1.05) + 64)
    threshold = torch.topk(sample, rank, sorted=True).values[-1]
    candidates = (s >= threshold).nonzero().squeeze(1)
    surplus = candidates.numel() - k
    if surplus < 0:
        return torch.topk(s, k, sorted=False).indices
    if surplus == 0:
        return candidates
    drop = torch.topk(s[candidates], surplus, largest=False, sorted=False).indices
    keep = torch.ones(candidates.numel(), dtype=torch.bool, device=score.device)
    keep[drop] = False
    return candidates[keep]
