"""Keeping masks identical across DistributedDataParallel ranks.

Random topology decisions come from a generator seeded identically on every rank, and magnitude
and gradient decisions use weights and all-reduced gradients that are identical across ranks, so
masks agree by construction. These helpers make that checkable and repairable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.distributed as dist

from .errors import MaskDesyncError


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
    return World(dist.get_rank(), dist.get_world_size()).agree(mask_checksum(masks).tolist())


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


def mask_sync_hook(report: Callable[[str, list[int]], None] | None = None) -> Callable:
    """A Masking update hook (``masking.add_update_hook``): after every topology update, the all-reduced
    checksum check; MaskDesyncError on every rank if any rank's masks differ, else ``report(event, checksum)``."""

    def check(masking, event: str) -> None:
        try:
            assert_masks_in_sync(masking.masks)
        except MaskDesyncError as err:
            raise MaskDesyncError(f"{err}; detected at {event}") from None
        if report is not None:
            report(event, mask_checksum(masking.masks).tolist())

    return check


@dataclass(frozen=True)
class World:
    """This process's place among data-parallel processes (one process: rank 0 of 1).

    Rank 0 alone writes files; sums and agreement checks go over the started process group.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, local_rank: int = 0) -> "World":
        """Rank, world size and local rank from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        return cls(rank, size, int(os.environ.get("LOCAL_RANK", str(local_rank if size == 1 else rank))))

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks (float64); the values themselves in one process."""
        if self.size == 1 or not is_distributed():
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def agree(self, values: Sequence[int]) -> bool:
        """True on every rank iff every rank passed the same integers."""
        if self.size == 1 or not is_distributed():
            return True
        local = torch.tensor(list(values), dtype=torch.int64, device=_collective_device())
        lo, hi = local.clone(), local.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        return bool(torch.equal(lo, hi))

    def broadcast_buffers(self, model: torch.nn.Module, src: int = 0) -> None:
        """Rank src's buffers (BatchNorm statistics) on every rank."""
        if self.size > 1 and is_distributed():
            for b in model.buffers():
                dist.broadcast(b, src)
