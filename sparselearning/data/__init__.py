"""Datasets as in-memory uint8 tensors, a fast resumable batch loader, and evaluation-only inputs.

Modules, by concern:

- :mod:`.specs` - what a dataset is (:class:`DatasetSpec`, :data:`SPECS`, :func:`get_spec`);
- :mod:`.formats` - readers of the on-disk formats (CIFAR pickles, idx, SVHN .mat), with checks;
- :mod:`.sources` - locating files, downloading, the in-process cache (:func:`load_split`);
- :mod:`.normalization` - the one per-channel normalisation every pipeline uses;
- :mod:`.augment` - crop + flip of a batch; :mod:`.loader` - :class:`BatchLoader`, :func:`make_loaders`;
- :mod:`.eval_inputs` - OoD image sets and CIFAR-10-C/100-C (used by evaluation only);
- :mod:`.imagenet` - ImageFolder roots streamed by DataLoader workers; :mod:`.corruptions`.

This package only re-exports the public names.
"""
from __future__ import annotations

from .augment import augment_batch
from .eval_inputs import (CIFAR_C_EXTRA, CIFAR_C_STANDARD, OOD_NAMES, check_cifar_c, list_cifar_c, load_cifar_c,
                          ood_images, to_channels, to_size)
from .formats import DataFileError
from .loader import BatchLoader, make_loaders, train_val_split
from .normalization import normalize
from .sources import DEBIAN_FASHION_MNIST_DIR, DEFAULT_DATA_DIR, clear_cache, load_split
from .specs import SPECS, DatasetSpec, get_spec

__all__ = [
    "DatasetSpec", "SPECS", "get_spec", "load_split", "train_val_split", "BatchLoader",
    "augment_batch", "normalize", "make_loaders", "ood_images", "OOD_NAMES", "load_cifar_c", "check_cifar_c",
    "DataFileError",
    "list_cifar_c", "CIFAR_C_STANDARD", "CIFAR_C_EXTRA", "DEFAULT_DATA_DIR",
    "DEBIAN_FASHION_MNIST_DIR", "clear_cache", "to_channels", "to_size",
]
