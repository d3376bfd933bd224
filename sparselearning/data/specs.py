"""What a dataset is: its :class:`DatasetSpec` (classes, image shape, normalisation, augmentation).

Conventions (the original's, see the reference notes §2.1): CIFAR-10 reflect-pad-4 crop + flip,
CIFAR-100 zero-pad-4 crop + flip, Fashion-MNIST zero-pad-2 crop + flip, MNIST no augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["DatasetSpec", "SPECS", "get_spec", "LOADABLE", "PRETTY_NAMES", "IMAGE_SHAPES", "NUM_LABELS"]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int  # full official training set size
    crop_padding: int  # 0 = no random crop
    pad_mode: str  # 'reflect' | 'constant'
    hflip: bool


SPECS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                           50000, 4, "reflect", True),
    "cifar100": DatasetSpec("cifar100", 100, 3, 32, (0.50708, 0.48655, 0.44092),
                            (0.26733, 0.25644, 0.27615), 50000, 4, "constant", True),
    "fashionmnist": DatasetSpec("fashionmnist", 10, 1, 28, (0.2860,), (0.3530,), 60000, 2, "constant", True),
    "mnist": DatasetSpec("mnist", 10, 1, 28, (0.1307,), (0.3081,), 60000, 0, "constant", False),
}

#: Sets that can be loaded from disk (the in-distribution ones plus the OoD-only SVHN).
LOADABLE = ("cifar10", "cifar100", "fashionmnist", "mnist", "svhn")
PRETTY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "mnist": "MNIST",
                "fashionmnist": "Fashion-MNIST", "svhn": "SVHN"}
#: (C, H, W) of every image of a loadable set, and its number of labels (labels lie in [0, n)).
IMAGE_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "mnist": (1, 28, 28),
                "fashionmnist": (1, 28, 28), "svhn": (3, 32, 32)}
NUM_LABELS = {"cifar10": 10, "cifar100": 100, "mnist": 10, "fashionmnist": 10, "svhn": 10}


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of an in-distribution dataset."""
    key = str(name).lower()
    if key not in SPECS:
        raise UsageError(f"unknown dataset {name!r}; use one of: {', '.join(SPECS)}")
    return SPECS[key]
