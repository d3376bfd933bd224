"""Readers of the standard on-disk formats: CIFAR python pickles, idx files, SVHN .mat.

No torchvision dataset class (and no md5 check) is involved in reading. Every reader checks what
it read - image shape and label range - and names the file in a one-line UsageError otherwise,
so bad data stop a run before anything is written.

CIFAR batches are pickles by format. They are read with :class:`CifarUnpickler`, which builds only
what the format holds (dicts, lists, bytes/str, numbers and plain numpy arrays) and refuses every
other global, so a poisoned batch cannot run code.
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from .specs import IMAGE_SHAPES, NUM_LABELS

__all__ = ["CifarUnpickler", "read_cifar_batch", "read_idx", "read_dataset", "one_line", "DataFileError",
           "check_uint8_images", "check_integer_labels"]


class DataFileError(UsageError):
    """A data file is there but holds something other than its format promises (wrong dtype, layout, labels):
    unlike a missing file, never a reason to skip a set quietly."""


class RefusedPickle(pickle.UnpicklingError):
    """The pickle asks for something a CIFAR batch never holds (it may run code)."""


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]


def _values_of(arr: np.ndarray) -> str:
    """What an array that is not uint8 holds, from its first rows: e.g. "float32 values in [0, 1]", "NaN"."""
    head = np.asarray(arr[:256])
    if head.dtype.kind == "f" and np.isnan(head).any():
        return f"{head.dtype} values with NaN"
    if head.size and head.dtype.kind in "fiub":
        return f"{head.dtype} values in [{head.min():g}, {head.max():g}]"
    return f"{head.dtype} values"


def check_uint8_images(arr: np.ndarray, path: Path, shape_tail: tuple[int, ...], layout: str) -> None:
    """Images must be uint8 (0..255) arrays (N, *shape_tail): float in [0, 1] would read as near-black
    pixels, int16 would wrap around. DataFileError naming the file otherwise."""
    if arr.ndim != 1 + len(shape_tail) or tuple(arr.shape[1:]) != tuple(shape_tail):
        raise DataFileError(f"{path} holds an array of shape {tuple(arr.shape)}, expected {layout}; pass the "
                            f"released files unchanged")
    if arr.dtype != np.uint8:
        raise DataFileError(f"{path} holds {_values_of(arr)}, expected uint8 images (0..255); store the images "
                            f"as uint8 (e.g. (x * 255).round().astype(np.uint8) for values in [0, 1])")


def check_integer_labels(labels: np.ndarray, num_labels: int, path: Path) -> np.ndarray:
    """Labels as int64, checked: an integer dtype (a float label would be truncated) within [0, num_labels)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise DataFileError(f"{path} holds {_values_of(labels.reshape(-1))} as labels, expected integer class "
                            f"indices 0..{num_labels - 1}; pass the released labels file unchanged")
    labels = labels.astype(np.int64)
    check_labels(labels, num_labels, path)
    return labels


# =========================================================================== CIFAR pickles
def _plain_dtype(*args) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise RefusedPickle("an object array (numpy dtype 'O') is not CIFAR data")
    return dtype


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Python 3 writes bytes at pickle protocol 2 as _codecs.encode(text, 'latin1')."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise RefusedPickle(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# What CIFAR pickles reference: numpy's array reconstruction (numpy 1 and 2 module names; pickle
# protocol 5 uses _frombuffer), ndarray, dtype; and _codecs.encode for bytes written by Python 3
# at protocol 2. The callables are taken from numpy itself, whatever its version calls them.
_RECONSTRUCT = np.array(0).__reduce__()[0]
_FROMBUFFER = np.array(0).__reduce_ex__(5)[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR python batch; any global outside :data:`_ALLOWED_GLOBALS` is refused."""

    def find_class(self, module: str, name: str):
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise RefusedPickle(f"it references {module}.{name}")
        return found

    def persistent_load(self, pid):
        raise RefusedPickle("it holds a persistent reference")


def _unpickle_cifar(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = CifarUnpickler(fh, encoding="bytes").load()
    except RefusedPickle as err:
        raise DataFileError(f"{path} was refused: {one_line(err)}, which a CIFAR batch never does - it may run "
                            f"code; delete it and re-download the dataset") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as err:  # e.g. truncated: damaged, not dangerous
        raise DataFileError(f"cannot read the CIFAR batch {path}: it is damaged or truncated ({one_line(err)}); "
                            f"re-download the dataset") from None
    if not isinstance(obj, dict):
        raise DataFileError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch dict; re-download the dataset")
    # keys as torchvision reads them: the release's bytes keys (Python 2) or str keys (written by Python 3)
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar_batch(path: Path, label_key: bytes | str, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,) of one CIFAR batch file, checked. Keys may be bytes
    (the release) or str, as torchvision accepts."""
    d = _unpickle_cifar(path)
    label_key = label_key.decode() if isinstance(label_key, bytes) else label_key
    if "data" not in d or label_key not in d:
        keys = ", ".join(repr(k) for k in list(d)[:6]) or "none"
        raise DataFileError(f"{path} is not a CIFAR batch of this dataset: it has the keys {keys}, a "
                            f"{'CIFAR-10' if label_key == 'labels' else 'CIFAR-100'} batch has 'data' and "
                            f"{label_key!r}; pass the python version's folder of this dataset "
                            f"({'cifar-10-batches-py' if label_key == 'labels' else 'cifar-100-python'})")
    data = np.asarray(d["data"])
    labels = np.asarray(d[label_key])
    check_uint8_images(data, path, (3 * 32 * 32,), "(N, 3072) rows of 32x32 RGB images")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataFileError(f"{path} holds {labels.shape} labels for {data.shape[0]} images, expected one label "
                            f"per image; re-download the dataset")
    labels = check_integer_labels(labels, num_labels, path)
    return data.reshape(-1, 3, 32, 32), labels


def check_labels(labels: np.ndarray, num_labels: int, path: Path) -> None:
    """Labels must lie in [0, num_labels): a label outside would fail deep inside the loss, mid-run."""
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise DataFileError(f"{path} holds label {bad}, outside 0..{num_labels - 1}; the file is damaged or "
                            f"not this dataset - re-download it")


# =========================================================================== idx files
def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (``.gz`` or plain): magic 0,0,dtype,ndim then ndim big-endian int32 dims."""
    with _open_maybe_gz(path) as fh:
        raw = bytearray(fh.read())  # writable, so the tensors made from it are too
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataFileError(f"{path} is not an idx file (bad magic number); re-download the dataset")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = raw[2], raw[3]
    if code not in dtypes:
        raise DataFileError(f"{path} has unknown idx data type 0x{code:02x}; re-download the dataset")
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(dtypes[code])
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if ndim else 0
    if len(raw) - offset < count * dtype.itemsize:
        raise DataFileError(f"{path} is truncated ({len(raw)} bytes for shape {tuple(dims)}); re-download it")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(tuple(dims))


def _read_idx_pair(name: str, images_file: Path, labels_file: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images_file), read_idx(labels_file)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataFileError(f"{images_file} / {labels_file} have shapes {x.shape} / {y.shape}, "
                            "expected (N,H,W) images and (N,) labels; re-download the dataset")
    if x.dtype != np.uint8 or x.shape[1:] != IMAGE_SHAPES[name][1:]:
        raise DataFileError(f"{images_file} holds {x.dtype} images of {x.shape[1]}x{x.shape[2]} pixels, expected "
                            f"uint8 {IMAGE_SHAPES[name][1]}x{IMAGE_SHAPES[name][2]}; re-download the dataset")
    y = y.astype(np.int64)
    check_labels(y, NUM_LABELS[name], labels_file)
    return x[:, None], y


# =========================================================================== SVHN
def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as err:  # corrupt / truncated file
        raise DataFileError(f"cannot read {path} ({one_line(err)}); delete it and re-download SVHN") from None
    if "X" not in mat or "y" not in mat or mat["X"].ndim != 4 or mat["X"].shape[:3] != (32, 32, 3):
        raise DataFileError(f"{path} lacks SVHN's X (32,32,3,N) / y arrays; re-download SVHN")
    x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)))
    check_uint8_images(x, path, (3, 32, 32), "SVHN's X of shape (32, 32, 3, N)")
    y = mat["y"].reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise DataFileError(f"{path} holds {y.shape[0]} labels for {x.shape[0]} images; re-download SVHN")
    y = check_integer_labels(y, NUM_LABELS["svhn"] + 1, path)  # SVHN's digit 0 is label 10 (1..10)
    y[y == 10] = 0
    return x, y


# =========================================================================== dispatch
def read_dataset(name: str, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, C, H, W) images and int64 (N,) labels from the files :func:`locate` found."""
    if name in ("cifar10", "cifar100"):
        key = b"labels" if name == "cifar10" else b"fine_labels"
        parts = [read_cifar_batch(f, key, NUM_LABELS[name]) for f in files]
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    elif name in ("mnist", "fashionmnist"):
        x, y = _read_idx_pair(name, files[0], files[1])
    elif name == "svhn":
        x, y = _read_svhn(files[0])
    else:  # pragma: no cover
        raise AssertionError(name)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
