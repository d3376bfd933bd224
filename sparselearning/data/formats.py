"""Readers of the standard on-disk formats: CIFAR python pickles, idx files, SVHN .mat.

No torchvision dataset class (and no md5 check) is involved in reading.
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError

__all__ = ["read_idx", "read_dataset", "one_line"]


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (``.gz`` or plain): magic 0,0,dtype,ndim then ndim big-endian int32 dims."""
    with _open_maybe_gz(path) as fh:
        raw = bytearray(fh.read())  # writable, so the tensors made from it are too
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UsageError(f"{path} is not an idx file (bad magic number); re-download the dataset")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = raw[2], raw[3]
    if code not in dtypes:
        raise UsageError(f"{path} has unknown idx data type 0x{code:02x}; re-download the dataset")
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(dtypes[code])
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if ndim else 0
    if len(raw) - offset < count * dtype.itemsize:
        raise UsageError(f"{path} is truncated ({len(raw)} bytes for shape {tuple(dims)}); re-download it")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(tuple(dims))


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="bytes")


def _cifar_arrays(files: list[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in files:
        d = _unpickle(f)
        if b"data" not in d or label_key not in d:
            raise UsageError(f"{f} lacks the {label_key.decode()!r}/'data' entries of a CIFAR batch; re-download it")
        xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def read_dataset(name: str, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, C, H, W) images and int64 (N,) labels from the files :func:`locate` found."""
    if name == "cifar10":
        x, y = _cifar_arrays(files, b"labels")
    elif name == "cifar100":
        x, y = _cifar_arrays(files, b"fine_labels")
    elif name in ("mnist", "fashionmnist"):
        x, y = read_idx(files[0]), read_idx(files[1])
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UsageError(f"{files[0]} / {files[1]} have shapes {x.shape} / {y.shape}, "
                             "expected (N,H,W) images and (N,) labels; re-download the dataset")
        x = x.astype(np.uint8, copy=False)[:, None]
        y = y.astype(np.int64)
    elif name == "svhn":
        import scipy.io

        try:
            mat = scipy.io.loadmat(str(files[0]))
        except Exception as err:  # corrupt / truncated file
            raise UsageError(f"cannot read {files[0]} ({one_line(err)}); delete it and re-download SVHN") from None
        if "X" not in mat or "y" not in mat or mat["X"].ndim != 4:
            raise UsageError(f"{files[0]} lacks SVHN's X (32,32,3,N) / y arrays; re-download SVHN")
        x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1))).astype(np.uint8, copy=False)
        y = mat["y"].reshape(-1).astype(np.int64)
        y[y == 10] = 0
    else:  # pragma: no cover
        raise AssertionError(name)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
