"""Forward passes and the logit cache: each ticket runs once per input set, ever.

Logits are cached as float32 ``.npy`` under ``<output>/cache/<dataset>/<input set>/<sha256>.npy``
(the ticket file's hash), so a later run of any mode on the same tickets does no forward pass.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..checkpoint import WriteError, _atomic_write
from ..errors import UsageError
from .tickets import Entry, build_model

__all__ = ["forward_logits", "fingerprint", "adapt_images", "Source", "LogitStore"]


def progress(total: int, desc: str, enabled: bool = True):
    """A progress bar on stderr (shown on a terminal only, and never when not enabled)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=None if enabled else True,
                file=sys.stderr, dynamic_ncols=True)


def forward_logits(model: torch.nn.Module, images: torch.Tensor, spec, batch_size: int,
                   device: torch.device, desc: str = "forward", show_progress: bool = True) -> torch.Tensor:
    """Logits (N, C) float32 on the CPU of ``model`` on uint8 ``images`` normalised with ``spec``."""
    from ..data import BatchLoader

    dummy = torch.zeros(images.shape[0], dtype=torch.int64)
    loader = BatchLoader(images, dummy, batch_size, shuffle=False, augment=False, spec=spec, device=device)
    outs = []
    model.eval()
    with torch.inference_mode(), progress(images.shape[0], desc, show_progress) as bar:
        for x, _ in loader:
            outs.append(model(x).float())  # kept on the device: one copy to the host at the end
            bar.update(x.shape[0])
    if not outs:
        raise UsageError(f"{desc}: no images to evaluate")
    return torch.cat(outs).cpu()


def imagenet_logits(model: torch.nn.Module, data_dir: str, spec, batch_size: int, device: torch.device,
                    classes, n: int, desc: str, workers: int = 4, show_progress: bool = True) -> torch.Tensor:
    """Logits on ImageNet's val split, images streamed from the ImageFolder root by `workers` processes."""
    from ..data.imagenet import imagenet_val_batches

    batches, _ = imagenet_val_batches(data_dir, spec.image_size, batch_size, device, mean=spec.mean, std=spec.std,
                                      classes=classes, workers=workers)
    outs = []
    model.eval()
    with torch.inference_mode(), progress(n, desc, show_progress) as bar:
        for x, _ in batches:
            outs.append(model(x).float())  # kept on the device (50k x 1000 floats: 200 MB): one copy at the end
            bar.update(x.shape[0])
    return torch.cat(outs).cpu()


def fingerprint(*tensors: torch.Tensor) -> str:
    """Short content hash of tensors (cache keys follow the data, not just its name)."""
    h = hashlib.sha1()
    for t in tensors:
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:12]


def adapt_images(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Convert uint8 images to the ticket's channel count and size (as the OoD loader does)."""
    from .. import data as D

    if images.shape[1] != channels:
        images = D.to_channels(images, channels)
    if images.shape[2] != size or images.shape[3] != size:
        images = D.to_size(images, size)
    return images.contiguous()


@dataclass
class Source:
    """An input set: cache key, size, labels (None for OoD) and a lazy image provider.

    ``imagenet_dir`` marks ImageNet's val split, streamed from that folder instead of ``make_images``.
    """
    key: str
    n: int
    labels: torch.Tensor | None
    make_images: Callable[[], torch.Tensor]
    desc: str
    imagenet_dir: str | None = None
    _images: torch.Tensor | None = None

    def images(self) -> torch.Tensor:
        if self._images is None:
            self._images = self.make_images()
            if self._images.shape[0] != self.n:
                raise UsageError(f"{self.desc}: expected {self.n} images, got {self._images.shape[0]}")
        return self._images

    def release(self) -> None:
        self._images = None


class LogitStore:
    """Logits of tickets on input sets: from memory, from the cache, else from one forward pass.

    ``specs`` maps a ticket's sha256 to its input spec (its own normalisation); ``models`` holds the
    members' models, built once. ``keep`` names the sources whose logits stay in memory (the test set,
    which several modes read).
    """

    def __init__(self, cache_dir: Path, num_classes: int, device: torch.device, batch_size: int, use_cache: bool,
                 out: Callable[[str], None], specs: dict, models: dict | None = None, workers: int = 4,
                 show_progress: bool = True):
        self.cache_dir = cache_dir
        self.num_classes = num_classes
        self.device = device
        self.batch_size = batch_size
        self.workers, self.show_progress = workers, show_progress
        self.use_cache = use_cache
        self.out = out
        self.specs = specs
        self.models = dict(models or {})
        self.keep: set[str] = set()
        self.stats = {"forward_passes": 0, "cache_hits": 0}
        self._mem: dict[tuple[str, str], torch.Tensor] = {}

    def _cache_path(self, e: Entry, source: Source) -> Path:
        return self.cache_dir / source.key / f"{e.sha256[:32]}.npy"

    def _read_cache(self, path: Path, source: Source) -> torch.Tensor | None:
        if not (self.use_cache and path.is_file()):
            return None
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (source.n, self.num_classes) and arr.dtype == np.float32 and np.isfinite(arr).all():
                self.stats["cache_hits"] += 1
                return torch.from_numpy(arr)
        except (ValueError, OSError, EOFError):
            pass
        self.out(f"note: cache file {path} was unreadable or stale; recomputing it")
        return None

    def _write_cache(self, path: Path, logits: torch.Tensor) -> None:
        arr = logits.numpy().astype(np.float32)
        try:
            _atomic_write(path, lambda fh: np.save(fh, arr, allow_pickle=False), "wb")
        except WriteError as err:  # a full disk costs the cache entry, not the evaluation
            self.out(f"warning: could not write the logit cache ({err}); continuing")

    def _forward(self, e: Entry, source: Source, keep_model: bool) -> torch.Tensor:
        model = self.models.get(e.sha256)
        if model is None:
            model = build_model(e, self.device)
            if keep_model:
                self.models[e.sha256] = model
        spec = self.specs[e.sha256]
        desc = f"{e.name} on {source.desc}"
        if source.imagenet_dir is not None:
            return imagenet_logits(model, source.imagenet_dir, spec, self.batch_size, self.device,
                                   e.ticket.get("class_names"), source.n, desc, self.workers, self.show_progress)
        images = adapt_images(source.images(), spec.in_channels, spec.image_size)
        return forward_logits(model, images, spec, self.batch_size, self.device, desc=desc,
                              show_progress=self.show_progress)

    def logits(self, e: Entry, source: Source, keep_model: bool = True) -> torch.Tensor:
        """(N, C) float32 logits of one ticket on one input set."""
        mem_key = (e.sha256, source.key)
        if mem_key in self._mem:
            return self._mem[mem_key]
        path = self._cache_path(e, source)
        out = self._read_cache(path, source)
        if out is None:
            out = self._forward(e, source, keep_model)
            self.stats["forward_passes"] += 1
            if out.shape != (source.n, self.num_classes):
                raise UsageError(f"{e.name} produced logits of shape {tuple(out.shape)} on {source.desc}, expected "
                                 f"{(source.n, self.num_classes)}; the ticket does not fit this dataset")
            if self.use_cache:
                self._write_cache(path, out)
        if source.key in self.keep:
            self._mem[mem_key] = out
        return out

    def stack(self, entries, source: Source) -> torch.Tensor:
        """(M, N, C) float32 logits of ``entries`` on ``source``."""
        return torch.stack([self.logits(e, source) for e in entries])
