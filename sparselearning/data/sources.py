"""Where the data live: locating a split's files, downloading a missing set, the in-process cache.

:func:`load_split` looks in ``data_dir`` (default ``./data``) in torchvision's layouts (and, for
Fashion-MNIST, also in Debian's /usr/share/datasets/fashion-mnist), downloads with torchvision
when missing, reads with :mod:`.formats` and keeps the result in memory. Data is never taken
from elsewhere silently: when Debian's copy stands in for a ``data_dir`` without Fashion-MNIST,
one note line names the files read, and :func:`data_files` gives the files a run read (its
summary.json records them).
"""
from __future__ import annotations

import socket
from pathlib import Path

import torch

from ..errors import UsageError
from .formats import one_line, read_dataset
from .specs import LOADABLE, PRETTY_NAMES

__all__ = ["DEFAULT_DATA_DIR", "DEBIAN_FASHION_MNIST_DIR", "DOWNLOAD_SOCKET_TIMEOUT", "load_split", "clear_cache",
           "data_files"]

DEFAULT_DATA_DIR = "./data"
#: Debian's ``dataset-fashion-mnist`` package installs the four idx .gz files here.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: Seconds a single network operation may block while downloading (offline machines fail fast).
DOWNLOAD_SOCKET_TIMEOUT = 20.0

_TV_NAMES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "mnist": "MNIST",
             "fashionmnist": "FashionMNIST", "svhn": "SVHN"}
_LAYOUT_HINT = {
    "cifar10": "put cifar-10-batches-py/ (the python version) in {root}",
    "cifar100": "put cifar-100-python/ (the python version) in {root}",
    "mnist": "put the four idx files (.gz or not) in {root}/MNIST/raw",
    "fashionmnist": "install Debian's dataset-fashion-mnist or put the four idx files in {root}/FashionMNIST/raw",
    "svhn": "put {split}_32x32.mat in {root}",
}


def _find_idx(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


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


_NOTED: set[str] = set()  # data folders whose stand-in was already named in this process


def _note_stand_in(name: str, root: Path, files: list[Path]) -> None:
    """One line, once per folder, when the files come from outside `root` (Debian's Fashion-MNIST)."""
    if all(root in f.parents for f in files) or str(root) in _NOTED:
        return
    _NOTED.add(str(root))
    found = [f for split in ("train", "test") for f in (_locate(name, split, root)[0] or [])]
    missing = "does not exist" if not root.exists() else f"holds no {PRETTY_NAMES[name]}"
    print(f"note: the data folder {root} {missing}; reading {PRETTY_NAMES[name]} from "
          f"{files[0].parent}/{{{','.join(f.name for f in found)}}} instead", flush=True)


def data_files(name: str, data_dir: str | None = None) -> list[str]:
    """The files a run on `name` reads (train and test splits) from `data_dir`, as found now."""
    root = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()
    return [str(f.resolve()) for split in ("train", "test") for f in (_locate(str(name).lower(), split, root)[0] or [])]


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


def _find_or_download(name: str, split: str, root: Path, download: bool) -> list[Path]:
    files, looked = _locate(name, split, root)
    if files is not None:
        return files
    pretty = PRETTY_NAMES[name]
    hint = _LAYOUT_HINT[name].format(root=root, split=split)
    where = " or ".join(looked)
    if not download:
        raise UsageError(f"{pretty} {split} split not found in {where} and downloading is off; "
                         f"{hint}, or allow the download")
    try:
        _download(name, split, root)
    except Exception as err:
        raise UsageError(f"{pretty} not found in {where} and the download failed ({one_line(err)}); "
                         f"{hint}") from None
    files, looked = _locate(name, split, root)
    if files is None:
        raise UsageError(f"{pretty} was downloaded but its {split} files are still missing from "
                         f"{' or '.join(looked)}; {hint}")
    return files


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
    if key_name not in LOADABLE:
        raise UsageError(f"unknown dataset {name!r}; use one of: {', '.join(LOADABLE)}")
    if split not in ("train", "test"):
        raise UsageError(f"unknown split {split!r}; use 'train' or 'test'")
    root = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()
    if root.exists() and not root.is_dir():  # else Fashion-MNIST would quietly come from Debian's copy
        raise UsageError(f"the data folder {root} is a file, not a folder; point --data-dir at the folder "
                         f"that holds the datasets")
    files = _find_or_download(key_name, split, root, download)
    _note_stand_in(key_name, root, files)
    sig = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    key = (key_name, split, sig)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    try:
        out = read_dataset(key_name, files)
    except UsageError:
        raise
    except Exception as err:  # truncated gzip/pickle streams, foreign files: one line, not a traceback
        raise UsageError(f"cannot read the {PRETTY_NAMES[key_name]} {split} files in {files[0].parent} "
                         f"({one_line(err)}); they are damaged or not the dataset - delete them and "
                         f"re-download") from None
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = out
    return out
