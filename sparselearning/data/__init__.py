"""Datasets as in-memory uint8 tensors, and a fast, resumable batch loader.

Everything here reads the standard on-disk formats itself (CIFAR python pickles, idx files,
SVHN .mat, CIFAR-10-C .npy), so no torchvision dataset class (and no md5 check) is involved in
reading; torchvision is only used to *download* a missing dataset.

Randomness: a :class:`BatchLoader` draws its shuffling permutation and its augmentation choices
from one CPU ``torch.Generator`` and nowhere else. Saving ``generator.get_state()`` between epochs
and restoring it reproduces the following epochs exactly, on CPU and CUDA alike (the random numbers
are drawn on the CPU and only then moved to the device).

Conventions (the original's, see the reference notes §2.1): CIFAR-10 reflect-pad-4 crop + flip,
CIFAR-100 zero-pad-4 crop + flip, Fashion-MNIST zero-pad-2 crop + flip, MNIST no augmentation;
validation = the last ``valid_split`` fraction of the official training set. Unlike the original,
validation images are *not* augmented.
"""
from __future__ import annotations

import gzip
import math
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError

__all__ = [
    "DatasetSpec", "SPECS", "get_spec", "load_split", "train_val_split", "BatchLoader",
    "augment_batch", "normalize", "make_loaders", "ood_images", "OOD_NAMES", "load_cifar_c",
    "list_cifar_c", "CIFAR_C_STANDARD", "CIFAR_C_EXTRA", "DEFAULT_DATA_DIR",
    "DEBIAN_FASHION_MNIST_DIR", "clear_cache",
]

DEFAULT_DATA_DIR = "./data"
#: Debian's ``dataset-fashion-mnist`` package installs the four idx .gz files here.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: Seconds a single network operation may block while downloading (offline machines fail fast).
DOWNLOAD_SOCKET_TIMEOUT = 20.0


# =========================================================================== specs
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

# Sets that can be loaded (in-distribution ones plus OoD-only ones).
_LOADABLE = ("cifar10", "cifar100", "fashionmnist", "mnist", "svhn")
#: Names accepted by :func:`ood_images`.
OOD_NAMES = ("gaussian", "uniform", "svhn", "cifar10", "cifar100", "mnist", "fashionmnist")


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of an in-distribution dataset."""
    key = str(name).lower()
    if key not in SPECS:
        raise UsageError(f"unknown dataset {name!r}; use one of: {', '.join(SPECS)}")
    return SPECS[key]


# =========================================================================== file readers
def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_idx(path: Path) -> np.ndarray:
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


def _find_idx(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


# --------------------------------------------------------------------------- locating files
def _locate(name: str, split: str, root: Path) -> tuple[list[Path] | None, list[str]]:
    """Files that hold (name, split), or None; plus the places looked at (for error messages)."""
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        files = [folder / n for n in names]
        return (files if all(f.is_file() for f in files) else None), [str(folder)]
    if name == "cifar100":
        folder = root / "cifar-100-python"
        f = folder / ("train" if split == "train" else "test")
        return ([f] if f.is_file() else None), [str(folder)]
    if name in ("mnist", "fashionmnist"):
        prefix = "train" if split == "train" else "t10k"
        stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
        folders = [root / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"]
        if name == "fashionmnist":
            folders.append(Path(DEBIAN_FASHION_MNIST_DIR))
        for folder in folders:
            found = [_find_idx(folder, s) for s in stems]
            if all(found):
                return found, [str(f) for f in folders]
        return None, [str(f) for f in folders]
    if name == "svhn":
        fname = f"{split}_32x32.mat"
        cands = [root / fname, root / "svhn" / fname, root / "SVHN" / fname]
        for c in cands:
            if c.is_file():
                return [c], [str(root)]
        return None, [str(c.parent) for c in cands]
    raise AssertionError(name)


def _read(name: str, split: str, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "cifar10":
        x, y = _cifar_arrays(files, b"labels")
    elif name == "cifar100":
        x, y = _cifar_arrays(files, b"fine_labels")
    elif name in ("mnist", "fashionmnist"):
        x, y = _read_idx(files[0]), _read_idx(files[1])
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
            raise UsageError(f"cannot read {files[0]} ({_one_line(err)}); delete it and re-download SVHN") from None
        if "X" not in mat or "y" not in mat or mat["X"].ndim != 4:
            raise UsageError(f"{files[0]} lacks SVHN's X (32,32,3,N) / y arrays; re-download SVHN")
        x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1))).astype(np.uint8, copy=False)
        y = mat["y"].reshape(-1).astype(np.int64)
        y[y == 10] = 0
    else:  # pragma: no cover
        raise AssertionError(name)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]


_TV_NAMES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "mnist": "MNIST",
             "fashionmnist": "FashionMNIST", "svhn": "SVHN"}
_PRETTY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "mnist": "MNIST",
           "fashionmnist": "Fashion-MNIST", "svhn": "SVHN"}
_LAYOUT_HINT = {
    "cifar10": "put cifar-10-batches-py/ (the python version) in {root}",
    "cifar100": "put cifar-100-python/ (the python version) in {root}",
    "mnist": "put the four idx files (.gz or not) in {root}/MNIST/raw",
    "fashionmnist": "install Debian's dataset-fashion-mnist or put the four idx files in {root}/FashionMNIST/raw",
    "svhn": "put {split}_32x32.mat in {root}",
}


def _download(name: str, split: str, root: Path) -> None:
    """Download with torchvision, every socket operation bounded by DOWNLOAD_SOCKET_TIMEOUT."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TV_NAMES[name])
    root.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT)
    try:
        if name == "svhn":
            cls(root=str(root), split=split, download=True)
        else:
            cls(root=str(root), train=(split == "train"), download=True)
    finally:
        socket.setdefaulttimeout(old)


_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_CACHE_MAX = 8


def clear_cache() -> None:
    """Forget every split loaded in this process."""
    _CACHE.clear()


def load_split(name: str, split: str, data_dir: str | None = None,
               download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, C, H, W) and labels int64 (N,) of one split, kept in memory.

    ``split``: 'train' (the full official training set) or 'test'. ``name``: an in-distribution
    dataset or the OoD-only 'svhn'. Looks in ``data_dir`` (default ``./data``) in torchvision's
    layouts (and, for Fashion-MNIST, also in Debian's /usr/share/datasets/fashion-mnist); downloads
    with torchvision when missing and ``download`` is true. Loaded splits are cached in-process
    (keyed by the files' paths, sizes and modification times); the returned tensors are shared
    with the cache, so do not modify them in place.
    """
    key_name = str(name).lower()
    if key_name not in _LOADABLE:
        raise UsageError(f"unknown dataset {name!r}; use one of: {', '.join(_LOADABLE)}")
    if split not in ("train", "test"):
        raise UsageError(f"unknown split {split!r}; use 'train' or 'test'")
    root = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()
    files, looked = _locate(key_name, split, root)
    if files is None:
        pretty = _PRETTY[key_name]
        hint = _LAYOUT_HINT[key_name].format(root=root, split=split)
        where = " or ".join(looked)
        if not download:
            raise UsageError(f"{pretty} {split} split not found in {where} and downloading is off; "
                             f"{hint}, or allow the download")
        try:
            _download(key_name, split, root)
        except Exception as err:
            raise UsageError(f"{pretty} not found in {where} and the download failed ({_one_line(err)}); "
                             f"{hint}") from None
        files, looked = _locate(key_name, split, root)
        if files is None:
            raise UsageError(f"{pretty} was downloaded but its {split} files are still missing from "
                             f"{' or '.join(looked)}; {hint}")
    sig = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    key = (key_name, split, sig)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    try:
        out = _read(key_name, split, files)
    except UsageError:
        raise
    except Exception as err:  # truncated gzip/pickle streams, foreign files: one line, not a traceback
        raise UsageError(f"cannot read the {_PRETTY[key_name]} {split} files in {files[0].parent} "
                         f"({_one_line(err)}); they are damaged or not the dataset - delete them and "
                         f"re-download") from None
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = out
    return out


# =========================================================================== split
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


# =========================================================================== transforms
def _stats(spec: DatasetSpec, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(spec.mean, dtype=dtype, device=device).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=dtype, device=device).view(-1, 1, 1)
    return mean, std


def normalize(x_float01: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """(x - mean) / std per channel, for float images in [0, 1] of shape (..., C, H, W)."""
    if not torch.is_floating_point(x_float01):
        raise UsageError("normalize expects float images in [0, 1]; convert uint8 with x.float() / 255 first")
    mean, std = _stats(spec, x_float01.device, x_float01.dtype)
    return (x_float01 - mean) / std


def _new_generator() -> torch.Generator:
    """A CPU generator seeded from torch's global RNG (so torch.manual_seed makes it reproducible)."""
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(seed)


def _draw_augment_params(n: int, spec: DatasetSpec, generator: torch.Generator | None
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Per-sample (dy, dx) crop offsets in [0, 2p] and flip flags, drawn on the CPU in this order."""
    p = int(spec.crop_padding)
    dy = dx = flip = None
    if p > 0:
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    if spec.hflip:
        flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return dy, dx, flip


def _reflect_index(i: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-(size-1), 2(size-1)] into [0, size) by mirror reflection without edge repeat."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def _apply_crop_flip(x: torch.Tensor, spec: DatasetSpec, dy: torch.Tensor | None, dx: torch.Tensor | None,
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
    dy, dx, flip = _draw_augment_params(int(x.shape[0]), spec, generator)
    return _apply_crop_flip(x.contiguous(), spec, dy, dx, flip)


# =========================================================================== loader
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
        self._mean, self._std = _stats(spec, self.device, torch.float32)

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
            x = xb.to(torch.float32).div_(255.0).sub_(self._mean).div_(self._std)
            yield x, yb

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


def load_cifar_c(path: str, corruption: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 3, 32, 32), labels int64 (N,), severity int64 (N,) in 1..5.

    ``<path>/<corruption>.npy`` holds 5 severities stacked (severity s = rows [(s-1)N/5, sN/5));
    ``<path>/labels.npy`` holds N labels (or N/5, then repeated for every severity).
    """
    folder = Path(path)
    present = list_cifar_c(path)
    f = folder / f"{corruption}.npy"
    if corruption == "labels" or not f.is_file():
        raise UsageError(f"no corruption {corruption!r} in {path}; available: {', '.join(present) or 'none'}")
    lf = folder / "labels.npy"
    if not lf.is_file():
        raise UsageError(f"{lf} is missing; CIFAR-C folders hold labels.npy next to the corruption files")
    try:
        arr = np.load(f, allow_pickle=False)
        lab = np.load(lf, allow_pickle=False)
    except Exception as err:
        raise UsageError(f"cannot read {f} or {lf} ({_one_line(err)}); re-download CIFAR-C") from None
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] % 5 != 0:
        raise UsageError(f"{f} has shape {arr.shape}; expected (5*K, H, W, 3) images (5 severities stacked)")
    n = arr.shape[0]
    lab = lab.reshape(-1).astype(np.int64)
    if lab.shape[0] == n // 5:
        lab = np.tile(lab, 5)
    if lab.shape[0] != n:
        raise UsageError(f"{lf} has {lab.shape[0]} labels for {n} images in {f}; use the matching labels.npy")
    images = torch.from_numpy(np.ascontiguousarray(arr.astype(np.uint8, copy=False).transpose(0, 3, 1, 2)))
    severity = torch.arange(n, dtype=torch.int64) // (n // 5) + 1
    return images, torch.from_numpy(lab), severity
