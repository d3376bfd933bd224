"""Keeping masks identical across DistributedDataParallel ranks.

Random topology decisions come from a generator seeded identically on every rank, and magnitude
and gradient decisions use weights and all-reduced gradients that are identical across ranks, so
masks agree by construction. These helpers make that checkable and repairable.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mask_checksum(masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """int64 [count, sum of active indices, sum of squared indices mod 2^31] over all masks (in name order)."""
    total = torch.zeros(3, dtype=torch.int64)
    for name in sorted(masks):
        idx = masks[name].flatten().nonzero().flatten().to(torch.int64).cpu()
        total[0] += idx.numel()
        total[1] += idx.sum()
        total[2] += (idx * idx % 2147483647).sum() % 2147483647
    return total


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def masks_in_sync(masks: Mapping[str, torch.Tensor]) -> bool:
    """True on every rank iff all ranks hold the same masks (always True when not distributed)."""
    if not is_distributed():
        return True
    local = mask_checksum(masks).to(_collective_device())
    lo, hi = local.clone(), local.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


class MaskDesyncError(RuntimeError):
    pass


def assert_masks_in_sync(masks: Mapping[str, torch.Tensor]) -> None:
    if not masks_in_sync(masks):
        raise MaskDesyncError(f"sparse masks differ between ranks (rank {dist.get_rank()} checksum "
                              f"{mask_checksum(masks).tolist()}); the ranks would train different networks")


def broadcast_masks(masks: dict[str, torch.Tensor], src: int = 0) -> None:
    """Overwrite every rank's masks (in place) with rank src's."""
    if not is_distributed():
        return
    device = _collective_device()
    for name in sorted(masks):
        buf = masks[name].to(device=device, dtype=torch.uint8)
        dist.broadcast(buf, src)
        masks[name].copy_(buf.to(masks[name].device).bool())
