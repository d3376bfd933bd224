"""Inputs only evaluation uses: out-of-distribution image sets and CIFAR-10-C / CIFAR-100-C.

OoD sets are converted to the in-distribution set's channel count and image size
(:func:`to_channels`, :func:`to_size`); CIFAR-C folders hold one ``.npy`` per corruption.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from .formats import DataFileError, check_integer_labels, check_uint8_images, one_line
from .sources import load_split
from .specs import DatasetSpec

__all__ = ["OOD_NAMES", "to_channels", "to_size", "ood_images", "CIFAR_C_STANDARD", "CIFAR_C_EXTRA",
           "list_cifar_c", "check_cifar_c", "load_cifar_c"]

#: Names accepted by :func:`ood_images`.
OOD_NAMES = ("gaussian", "uniform", "svhn", "cifar10", "cifar100", "mnist", "fashionmnist")


# =========================================================================== OoD
def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 RGB <-> gray. RGB -> gray uses ITU-R 601 luma (0.299, 0.587, 0.114), as PIL's 'L'."""
    c = int(x.shape[1])
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(1, 3, 1, 1)
        return (x.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise UsageError(f"cannot convert {c}-channel images to {channels} channels; use 1 or 3 channel data")


def to_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """Smaller images are centre-padded with zeros, larger ones resized (bilinear, antialiased)."""
    h, w = int(x.shape[2]), int(x.shape[3])
    if h == size and w == size:
        return x
    if h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(x, (left, size - w - left, top, size - h - top), mode="constant", value=0)
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def ood_images(name: str, like: DatasetSpec, n: int | None, data_dir: str | None,
               generator: torch.Generator | None, download: bool = True) -> torch.Tensor:
    """uint8 (n, like.in_channels, like.image_size, like.image_size) out-of-distribution images.

    'gaussian': N(0.5, 0.25^2) clipped to [0, 1] (the original's N(0, 0.5^2) clipped to [-1, 1],
    then *0.5 + 0.5); 'uniform': uniform over 0..255; both drawn from ``generator`` on the CPU,
    n = 10000 when None. A dataset name ('svhn', 'cifar10', 'cifar100', 'mnist', 'fashionmnist'):
    its first n test images (all when None), converted to like's channel count (RGB <-> gray) and
    centre-padded (smaller) or resized (larger) to like's image size (``download`` as in load_split).
    """
    key = str(name).lower()
    if key not in OOD_NAMES:
        raise UsageError(f"unknown OoD set {name!r}; use one of: {', '.join(OOD_NAMES)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise UsageError(f"the number of OoD images must be a non-negative integer or None, got {n!r}")
    shape_tail = (like.in_channels, like.image_size, like.image_size)
    if key in ("gaussian", "uniform"):
        count = 10000 if n is None else n
        if key == "gaussian":
            z = torch.randn((count, *shape_tail), generator=generator)
            return (z.mul_(0.25).add_(0.5).clamp_(0, 1) * 255).round_().to(torch.uint8)
        return torch.randint(0, 256, (count, *shape_tail), generator=generator, dtype=torch.uint8)
    x, _ = load_split(key, "test", data_dir, download)
    if n is not None:
        if n > x.shape[0]:
            raise UsageError(f"asked for {n} {key} OoD images but its test set has {x.shape[0]}; "
                             f"use n <= {x.shape[0]} or n=None")
        x = x[:n]
    out = to_size(to_channels(x, like.in_channels), like.image_size)
    return out.clone() if out.data_ptr() == x.data_ptr() else out.contiguous()  # never a view of the cache


# =========================================================================== CIFAR-10-C / 100-C
CIFAR_C_STANDARD: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)
CIFAR_C_EXTRA: tuple[str, ...] = ("gaussian_blur", "saturate", "spatter", "speckle_noise")


def list_cifar_c(path: str) -> list[str]:
    """Corruption names present in a CIFAR-10-C/100-C folder (sorted; labels.npy excluded)."""
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"CIFAR-C folder {path} does not exist; download CIFAR-10-C/100-C and pass its folder")
    return sorted(p.stem for p in folder.glob("*.npy") if p.stem != "labels")


def _cifar_c_arrays(path: str, corruption: str, mmap: bool) -> tuple[Path, np.ndarray, Path, np.ndarray]:
    folder = Path(path)
    present = list_cifar_c(path)
    f = folder / f"{corruption}.npy"
    if corruption == "labels" or not f.is_file():
        raise UsageError(f"no corruption {corruption!r} in {path}; available: {', '.join(present) or 'none'}")
    lf = folder / "labels.npy"
    if not lf.is_file():
        raise UsageError(f"{lf} is missing; CIFAR-C folders hold labels.npy next to the corruption files")
    try:
        arr = np.load(f, allow_pickle=False, mmap_mode="r" if mmap else None)
    except Exception as err:
        raise DataFileError(f"cannot read {f} ({one_line(err)}); re-download CIFAR-C") from None
    try:
        lab = np.load(lf, allow_pickle=False)
    except Exception as err:
        raise DataFileError(f"cannot read {lf} ({one_line(err)}); re-download CIFAR-C") from None
    return f, arr, lf, lab


def _checked_cifar_c(f: Path, arr: np.ndarray, lf: Path, lab: np.ndarray, num_classes: int | None) -> np.ndarray:
    """The labels (one per image, int64) after checking images and labels; DataFileError naming the file."""
    if arr.ndim != 4 or arr.shape[0] % 5 != 0 or arr.shape[0] == 0:
        raise DataFileError(f"{f} has shape {arr.shape}; expected (5*K, 32, 32, 3) images (5 severities stacked)")
    check_uint8_images(arr, f, (32, 32, 3), "(5*K, 32, 32, 3) images (5 severities stacked)")
    n = arr.shape[0]
    lab = check_integer_labels(lab.reshape(-1), num_classes or 100, lf)
    if lab.shape[0] == n // 5:
        lab = np.tile(lab, 5)
    if lab.shape[0] != n:
        raise DataFileError(f"{lf} has {lab.shape[0]} labels for {n} images in {f}; use the matching labels.npy")
    return lab


def check_cifar_c(path: str, corruption: str, num_classes: int | None = None) -> None:
    """What load_cifar_c checks, reading only the images' header (memory-mapped): call it for every planned
    corruption before anything is computed or written."""
    _checked_cifar_c(*_cifar_c_arrays(path, corruption, mmap=True), num_classes)


def load_cifar_c(path: str, corruption: str,
                 num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 3, 32, 32), labels int64 (N,), severity int64 (N,) in 1..5.

    ``<path>/<corruption>.npy`` holds 5 severities stacked (severity s = rows [(s-1)N/5, sN/5)) as uint8
    (N, 32, 32, 3); ``<path>/labels.npy`` holds N integer labels (or N/5, then repeated for every severity), in
    0..num_classes-1 (default: at most 100). Anything else is a one-line DataFileError naming the file.
    """
    f, arr, lf, lab = _cifar_c_arrays(path, corruption, mmap=False)
    lab = _checked_cifar_c(f, arr, lf, lab, num_classes)
    n = arr.shape[0]
    images = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
    severity = torch.arange(n, dtype=torch.int64) // (n // 5) + 1
    return images, torch.from_numpy(lab), severity
