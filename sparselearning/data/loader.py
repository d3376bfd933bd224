"""The in-memory batch loader: train/validation split, shuffling, augmentation, normalisation.

Randomness: a :class:`BatchLoader` draws its shuffling permutation and its augmentation choices
from one CPU ``torch.Generator`` and nowhere else. Saving ``generator.get_state()`` between epochs
and restoring it reproduces the following epochs exactly, on CPU and CUDA alike (the random numbers
are drawn on the CPU and only then moved to the device).

Validation = the last ``valid_split`` fraction of the official training set. Unlike the original,
validation images are *not* augmented.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch

from ..errors import UsageError
from .augment import augment_batch
from .normalization import channel_stats, normalize_uint8
from .sources import load_split
from .specs import DatasetSpec, get_spec

__all__ = ["BatchLoader", "make_loaders", "train_val_split"]


def train_val_split(images: torch.Tensor, labels: torch.Tensor, valid_split: float
                    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The last ``valid_split`` fraction becomes validation (CIFAR, 0.1: indices 45000-49999).

    ``valid_split == 0`` gives empty validation tensors. The results are views (no copy).
    """
    try:
        frac = float(valid_split)
    except (TypeError, ValueError):
        raise UsageError(f"valid_split must be a number in [0, 1), got {valid_split!r}") from None
    if not (0.0 <= frac < 1.0) or math.isnan(frac):
        raise UsageError(f"valid_split must be in [0, 1), got {valid_split}; e.g. use 0.1 for a 10% validation tail")
    n = int(images.shape[0])
    if int(labels.shape[0]) != n:
        raise UsageError(f"{n} images but {int(labels.shape[0])} labels; pass matching tensors")
    n_val = int(round(frac * n))
    n_train = n - n_val
    if n_train <= 0:
        raise UsageError(f"valid_split={valid_split} leaves no training images out of {n}; use a smaller valid_split")
    return (images[:n_train], labels[:n_train]), (images[n_train:], labels[n_train:])


def _new_generator() -> torch.Generator:
    """A CPU generator seeded from torch's global RNG (so torch.manual_seed makes it reproducible)."""
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(seed)


class BatchLoader:
    """Batches ``(x, y)`` from in-memory uint8 images: x float32 normalised, y int64, both on ``device``.

    The images are moved to ``device`` once. Per batch: index with the (shuffled) permutation,
    augment the uint8 batch (crop/flip gather), convert to float, normalise. All randomness comes
    from ``generator`` (a CPU ``torch.Generator``; a fresh one seeded from torch's global RNG when
    None): at the start of each epoch the permutation (if shuffling), then per batch the
    augmentation choices (if augmenting).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool,
                 augment: bool, spec: DatasetSpec, device="cpu", generator: torch.Generator | None = None,
                 drop_last: bool = False):
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise UsageError("BatchLoader needs uint8 images of shape (N, C, H, W); use load_split's output")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise UsageError(f"BatchLoader needs labels of shape ({images.shape[0]},), got "
                             f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
        if int(images.shape[1]) != spec.in_channels:
            raise UsageError(f"images have {images.shape[1]} channels but spec {spec.name!r} expects "
                             f"{spec.in_channels}; convert the images or use the matching spec")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
        if generator is not None and generator.device.type != "cpu":
            raise UsageError("BatchLoader's generator must be a CPU torch.Generator; create it with torch.Generator()")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.spec = spec
        self.drop_last = bool(drop_last)
        needs_rng = self.shuffle or (self.augment and (spec.crop_padding > 0 or spec.hflip))
        self.generator = generator if generator is not None else (_new_generator() if needs_rng else None)
        self._mean, self._std = channel_stats(spec.mean, spec.std, self.device)

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_samples
        order = torch.randperm(n, generator=self.generator).to(self.device) if self.shuffle else None
        bs = self.batch_size
        for k in range(len(self)):
            lo, hi = k * bs, min(n, (k + 1) * bs)
            if order is None:
                xb, yb = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = self.images[idx], self.labels[idx]
            if self.augment:
                xb = augment_batch(xb, self.spec, self.generator)
            yield normalize_uint8(xb, self._mean, self._std), yb

    def __repr__(self) -> str:
        return (f"BatchLoader({self.spec.name}, n={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, augment={self.augment}, device={self.device})")


def make_loaders(name: str, data_dir: str | None, batch_size: int, test_batch_size: int, valid_split: float,
                 device, generator: torch.Generator | None, download: bool = True
                 ) -> tuple[BatchLoader, BatchLoader | None, BatchLoader, DatasetSpec]:
    """(train: shuffled + augmented, val: plain or None when empty, test: plain, spec).

    The training loader uses ``generator`` (pass one to be able to save/restore its state);
    validation and test loaders draw no random numbers.
    """
    spec = get_spec(name)
    x, y = load_split(spec.name, "train", data_dir, download)
    (xtr, ytr), (xva, yva) = train_val_split(x, y, valid_split)
    xte, yte = load_split(spec.name, "test", data_dir, download)
    train = BatchLoader(xtr, ytr, batch_size, shuffle=True, augment=True, spec=spec, device=device,
                        generator=generator)
    val = None
    if xva.shape[0] > 0:
        val = BatchLoader(xva, yva, test_batch_size, shuffle=False, augment=False, spec=spec, device=device)
    test = BatchLoader(xte, yte, test_batch_size, shuffle=False, augment=False, spec=spec, device=device)
    return train, val, test, spec
