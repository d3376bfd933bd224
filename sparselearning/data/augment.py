"""Random crop + horizontal flip of a whole batch in one gather, on any device.

Random numbers come from a CPU ``torch.Generator`` only, so a fixed generator state gives the same
augmentation on CPU and CUDA: per batch, first the row offsets, then the column offsets, then the
flip flags, drawn into one table that reaches the device in one (pinned, non-blocking) copy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .specs import DatasetSpec

__all__ = ["augment_batch", "draw_augment_table", "split_augment_table", "apply_crop_flip"]


def draw_augment_table(n: int, spec: DatasetSpec, generator: torch.Generator | None,
                       pin_memory: bool = False) -> torch.Tensor:
    """One (rows, n) int64 CPU tensor of a batch's choices: rows dy, dx (crop offsets in [0, 2p], when
    cropping), then flip (0/1, when flipping), drawn row by row in this order.

    One tensor, so it reaches the device in one copy; ``pin_memory`` (for a CUDA device) lets that
    copy run without blocking. The values equal three separate ``torch.randint`` draws.
    """
    p = int(spec.crop_padding)
    rows = (2 if p > 0 else 0) + (1 if spec.hflip else 0)
    table = torch.empty((rows, n), dtype=torch.int64, pin_memory=pin_memory)
    if p > 0:
        torch.randint(0, 2 * p + 1, (n,), generator=generator, out=table[0])
        torch.randint(0, 2 * p + 1, (n,), generator=generator, out=table[1])
    if spec.hflip:
        torch.randint(0, 2, (n,), generator=generator, out=table[rows - 1])
    return table


def split_augment_table(table: torch.Tensor, spec: DatasetSpec
                        ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dy, dx, flip) views of a :func:`draw_augment_table` table (None where the spec has no such choice)."""
    crop = int(spec.crop_padding) > 0
    dy, dx = (table[0], table[1]) if crop else (None, None)
    flip = table[-1].bool() if spec.hflip else None
    return dy, dx, flip


def _reflect_index(i: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-(size-1), 2(size-1)] into [0, size) by mirror reflection without edge repeat."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def apply_crop_flip(x: torch.Tensor, spec: DatasetSpec, dy: torch.Tensor | None, dx: torch.Tensor | None,
                    flip: torch.Tensor | None) -> torch.Tensor:
    """Crop (offsets into the image padded by spec.crop_padding) + flip: one gather for the batch.

    Constant padding pads the batch once; reflect padding maps the indices by mirror reflection
    (no padded copy, works for every dtype on every device).
    """
    b, c, h, w = x.shape
    p = int(spec.crop_padding) if dy is not None else 0
    dev = x.device
    src = x
    rows = torch.arange(h, device=dev).expand(b, h)
    cols = torch.arange(w, device=dev).expand(b, w)
    if p > 0:
        rows = dy.to(dev).view(b, 1) + rows  # indices into the padded image
        cols = dx.to(dev).view(b, 1) + cols
        if spec.pad_mode == "reflect":
            if p >= min(h, w):
                raise UsageError(f"reflect padding {p} needs images larger than {p} pixels; use constant padding")
            rows = _reflect_index(rows - p, h)
            cols = _reflect_index(cols - p, w)
        elif spec.pad_mode == "constant":
            src = F.pad(x, (p, p, p, p), mode="constant", value=0)
        else:
            raise UsageError(f"unknown pad_mode {spec.pad_mode!r}; use 'reflect' or 'constant'")
    if flip is not None:
        cols = torch.where(flip.to(dev).view(b, 1), cols.flip(1), cols)
    sh, sw = int(src.shape[2]), int(src.shape[3])
    # Linear index into src for every output element: ((b*C + c)*SH + row)*SW + col.
    base = (torch.arange(b, device=dev).view(b, 1, 1, 1) * c + torch.arange(c, device=dev).view(1, c, 1, 1)) * sh
    lin = (base + rows.view(b, 1, h, 1)) * sw + cols.view(b, 1, 1, w)
    return src.reshape(-1).gather(0, lin.reshape(-1)).view(b, c, h, w)


def augment_batch(x: torch.Tensor, spec: DatasetSpec, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop (``spec.crop_padding``, ``spec.pad_mode``) + random horizontal flip if ``spec.hflip``.

    Each image gets its own offset and flip; one vectorised gather for the whole batch (uint8 or
    float in, same dtype out). Random numbers come from ``generator`` on the CPU: per batch, first
    the row offsets, then the column offsets, then the flip flags.
    """
    if x.dim() != 4:
        raise UsageError(f"augment_batch expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    if spec.crop_padding <= 0 and not spec.hflip:
        return x
    cuda = x.device.type == "cuda"
    table = draw_augment_table(int(x.shape[0]), spec, generator, pin_memory=cuda)
    table = table.to(x.device, non_blocking=cuda)  # one copy per batch (pinned: asynchronous)
    return apply_crop_flip(x.contiguous(), spec, *split_augment_table(table, spec))
