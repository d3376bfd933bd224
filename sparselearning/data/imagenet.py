"""ImageNet data: ImageFolder roots with ``train/`` and ``val/``, the standard transforms, batches on a device.

Used by ``ImageNet/main.py`` (training, DistributedDataParallel) and meant for
``ensemble_freetickets.py --data imagenet`` (:func:`imagenet_val_batches`, :func:`imagenet_spec`).

Conventions (torchvision's reference recipe, as the paper's code):

- training: RandomResizedCrop(image_size) + random horizontal flip;
- validation: Resize(round(image_size / 0.875)) (256 for 224) + CenterCrop(image_size);
- workers return uint8 tensors; conversion to float and normalisation with the ImageNet mean and
  std happen on the device (:class:`DeviceBatches`), which keeps host-to-device copies 4x smaller;
- or (``decode="gpu"``) workers return the JPEG file bytes and the device decodes and crops them
  (:mod:`.image_files`);
- training augmentation is seeded per sample, so batches do not depend on the number of workers or
  on persistent workers, and a resumed run repeats them; an image that cannot be decoded stops the
  run with a one-line error naming it, or (``skip_unreadable=True``) is left out and counted.

ImageNet's official validation set is the held-out set the paper selects tickets on and reports;
there is no separate test split.
"""
from __future__ import annotations

import functools
import math
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

from .image_files import DECODERS, FolderBatch, ImageFolderSet, SeededSampler, UnreadableImage, collate_images
from .normalization import channel_stats, normalize_uint8
from .specs import DatasetSpec
from ..errors import UsageError

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_CLASSES", "VAL_CROP_FRACTION", "check_root", "imagenet_spec",
    "train_transform", "val_transform", "image_folder", "ShardSampler", "DeviceBatches",
    "image_loader", "exit_with_trainer",
    "imagenet_val_batches", "first_batches", "DECODERS", "UnreadableImage", "val_resize",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGENET_CLASSES = 1000
VAL_CROP_FRACTION = 0.875  # 224 / 256


def check_root(root: str | Path) -> Path:
    """The ImageFolder root, checked to hold train/ and val/ folders (UsageError otherwise)."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UsageError(f"ImageNet root {path} is not a folder; pass the folder that holds train/ and val/")
    missing = [s for s in ("train", "val") if not (path / s).is_dir()]
    if missing:
        raise UsageError(f"ImageNet root {path} has no {' or '.join(s + '/' for s in missing)} folder; it must hold "
                         f"train/<class>/<image> and val/<class>/<image> (ImageFolder layout)")
    return path


def train_transform(image_size: int):
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(image_size, antialias=True), T.RandomHorizontalFlip(), T.PILToTensor()])


def val_resize(image_size: int) -> int:
    """The shorter side validation images are resized to before the centre crop (256 for 224)."""
    return max(image_size, int(round(image_size / VAL_CROP_FRACTION)))


def val_transform(image_size: int):
    from torchvision import transforms as T

    return T.Compose([T.Resize(val_resize(image_size), antialias=True), T.CenterCrop(image_size), T.PILToTensor()])


def image_folder(root: str | Path, split: str, image_size: int, classes: Sequence[str] | None = None, *,
                 decode: str = "pil", skip_unreadable: bool = False):
    """An ImageFolder of ``root/split`` with the split's transform (uint8 CHW tensors).

    ``classes``: the training classes; the split must have exactly these (the label of a class is
    its index in the sorted training classes, the same on every split). ``decode``: "pil" (workers
    decode and transform) or "gpu" (workers read file bytes; :class:`DeviceBatches` decodes with
    torchvision.io.decode_jpeg on its device and crops there). ``skip_unreadable``: leave images
    that fail to decode out of their batch (counted in ``DeviceBatches.skipped``) instead of
    stopping with a UsageError naming the file.
    """
    if decode not in DECODERS:
        raise UsageError(f"unknown image decoder {decode!r}; use one of: {', '.join(DECODERS)}")
    folder = check_root(root) / split
    train = split == "train"
    tf = train_transform(image_size) if train else val_transform(image_size)
    try:
        ds = ImageFolderSet(str(folder), tf, image_size=image_size, train=train, resize=val_resize(image_size),
                            decode=decode, skip_unreadable=skip_unreadable)
    except (FileNotFoundError, RuntimeError) as err:
        raise UsageError(f"{folder} is not a usable ImageFolder ({str(err).splitlines()[0][:160]}); it must hold "
                         f"one sub-folder of images per class") from None
    if os.environ.get("LOCAL_RANK", "0") == "0":
        loops = (f"; {len(ds.links_skipped)} linked folder(s) left out, scanned already (a link loop): "
                 f"{ds.links_skipped[0]}{' ...' if len(ds.links_skipped) > 1 else ''}") if ds.links_skipped else ""
        print(f"{folder}: {len(ds)} images in {len(ds.classes)} classes{loops}", flush=True)
    if classes is not None and list(ds.classes) != list(classes):
        extra = sorted(set(ds.classes) - set(classes))[:3]
        lack = sorted(set(classes) - set(ds.classes))[:3]
        raise UsageError(f"{folder} has other classes than train/ ({len(ds.classes)} vs {len(classes)}; "
                         f"extra {extra}, missing {lack}); both splits need the same class folders")
    return ds


def imagenet_spec(num_classes: int = IMAGENET_CLASSES, image_size: int = 224, train_size: int = 1281167,
                  mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> DatasetSpec:
    """A :class:`DatasetSpec` for ImageNet (or an ImageFolder stand-in with ``num_classes`` classes).

    crop_padding/pad_mode/hflip describe no in-memory augmentation (ImageNet is augmented in the
    data workers), so a BatchLoader built from this spec only normalises.
    """
    return DatasetSpec("imagenet", int(num_classes), 3, int(image_size), tuple(float(m) for m in mean),
                       tuple(float(s) for s in std), int(train_size), 0, "constant", False)


def image_loader(dataset, batch_size: int, workers: int, device: torch.device | str, *,
                 persistent_workers: bool = True, prefetch_factor: int | None = 4, **kwargs) -> DataLoader:
    """A DataLoader whose worker processes start from a fork server, not by forking this process.

    By the time a loader is iterated, this process runs threads (gloo, OpenMP, tqdm); a fork taken
    while one of them holds a lock can leave a worker deadlocked for good (seen here as a one-in-six
    hang of a two-process CPU run). The fork server is a clean single-threaded process.

    ``persistent_workers``: keep the workers between epochs (no restart per epoch); ``prefetch_factor``:
    batches each worker prepares ahead. Both apply only with workers > 0. A training ImageFolder's
    sampler is wrapped in a :class:`SeededSampler` (per-sample augmentation seeds), so persistent
    workers still give every epoch the augmentation its seed (``DeviceBatches.set_epoch``) prescribes.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UsageError(f"the number of data-loading workers must be a non-negative integer, got {workers!r}")
    context, init = None, None
    if workers > 0:
        kwargs.update(persistent_workers=bool(persistent_workers), prefetch_factor=prefetch_factor)
        if "forkserver" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("forkserver")
            # imported once in the server, not again in each worker of each epoch
            context.set_forkserver_preload(["torch", "torchvision.datasets", "torchvision.transforms", "PIL.Image",
                                            "sparselearning.data.imagenet"])
            init = functools.partial(exit_with_trainer, os.getpid())
    if getattr(dataset, "draws_random", False) and "batch_sampler" not in kwargs:
        kwargs["sampler"] = SeededSampler(kwargs.pop("sampler", None), dataset, bool(kwargs.pop("shuffle", False)))
    if getattr(dataset, "needs_collate", False):
        kwargs.setdefault("collate_fn", collate_images)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, multiprocessing_context=context,
                      worker_init_fn=init, pin_memory=torch.device(device).type == "cuda", **kwargs)


def exit_with_trainer(trainer_pid: int, worker_id: int, interval: float = 2.0) -> None:
    """Worker init: end this worker once the training process is gone.

    Torch's own watchdog watches the worker's parent, which is the fork server here. A trainer
    killed while its workers are starting can leave a worker that never notices and idles forever.
    """
    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(trainer_pid, 0)  # signal 0: only asks whether the process exists
            except (ProcessLookupError, PermissionError):  # gone (or its pid reused by another user)
                os._exit(0)

    threading.Thread(target=watch, name="exit-with-trainer", daemon=True).start()


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ...: every sample exactly once over all ranks (no padding).

    For evaluation: DistributedSampler pads the last shard with repeated samples, which would
    count some validation images twice.
    """

    def __init__(self, size: int, rank: int = 0, world: int = 1):
        self.size, self.rank, self.world = int(size), int(rank), int(world)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world))

    def __len__(self) -> int:
        return max(0, math.ceil((self.size - self.rank) / self.world))


class DeviceBatches:
    """Wraps a DataLoader of uint8 (x, y): yields float (x / 255 - mean) / std and int64 y on ``device``.

    ``num_samples``: the number of training samples over all ranks (what the FLOPs reference of
    one dense epoch counts); ``len()``: batches per epoch on this rank. Batches of file bytes
    (``decode="gpu"``) are decoded and cropped here, on ``device``. ``skipped``: images left out
    so far because they could not be decoded (``skip_unreadable=True``); ``skipped_paths``: the
    first 100 of them.
    """

    def __init__(self, loader: DataLoader, device: torch.device | str, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, num_samples: int | None = None):
        self.loader = loader
        self.device = torch.device(device)
        self.mean, self.std = channel_stats(mean, std, self.device)
        self.num_samples = len(loader.dataset) if num_samples is None else int(num_samples)
        self.skipped = 0
        self.skipped_paths: list[str] = []

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Reshuffle (DistributedSampler) and reseed the augmentation for ``epoch``."""
        sampler = self.loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(sampler, "set_seed"):
            sampler.set_seed(seed)
        self.loader.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        for batch in self.loader:
            if side is not None and isinstance(batch, FolderBatch) and isinstance(batch.images, list):
                x, y = self._decode_aside(batch, side)
            else:
                x, y = self._unpack(batch) if isinstance(batch, FolderBatch) else batch
            if x is None:
                continue
            x = normalize_uint8(x.to(self.device, non_blocking=non_blocking), self.mean, self.std)
            yield x, y.to(self.device, non_blocking=non_blocking)

    def _decode_aside(self, batch: FolderBatch, side: "torch.cuda.Stream"):
        """--decode gpu on CUDA: the batched nvJPEG decode and the crops on a side stream, while the training
        step queued before keeps the GPU busy; then the host waits for that stream alone (nvJPEG output
        buffers must not be read before its own work is done), and the training stream takes the batch.

        The crops stay one call per image: each image has its own box and size before the resize, and a
        batched crop (roi_align) would interpolate differently from the PIL path's antialiased resize."""
        with torch.cuda.stream(side):
            x, y = self._unpack(batch)
        side.synchronize()
        if x is not None:
            x.record_stream(torch.cuda.current_stream(self.device))  # made on `side`, used on the training stream
        return x, y

    def _unpack(self, batch: FolderBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """uint8 images and labels of a batch that may hold file bytes or have left images out."""
        x, y = batch.images, batch.labels
        if isinstance(x, list):  # file bytes: decode on the device (may leave more images out)
            x, y = self.loader.dataset.decode_batch(batch, self.device)
        self.skipped += len(batch.skipped)
        self.skipped_paths += batch.skipped[:max(0, 100 - len(self.skipped_paths))]
        return (None, None) if x is None or x.shape[0] == 0 else (x, y)


def imagenet_val_batches(root: str | Path, image_size: int = 224, batch_size: int = 256,
                         device: torch.device | str = "cpu", *, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD, workers: int = 4,
                         classes: Sequence[str] | None = None, persistent_workers: bool = True,
                         prefetch_factor: int | None = 4, decode: str = "pil",
                         skip_unreadable: bool = False) -> tuple[DeviceBatches, DatasetSpec]:
    """The validation split of an ImageFolder root as normalised batches on ``device``, in file order.

    Returns (batches, spec): iterate ``batches`` for (x, y); ``spec.num_classes`` is the number of
    class folders in train/ (1000 for ImageNet). Pass the ticket's normalisation as mean/std;
    ``workers``, ``persistent_workers``, ``prefetch_factor`` as in :func:`image_loader`, ``decode``
    and ``skip_unreadable`` as in :func:`image_folder`.
    """
    root = check_root(root)
    if classes is None:
        from torchvision.datasets.folder import find_classes

        classes, _ = find_classes(str(root / "train"))
    ds = image_folder(root, "val", image_size, classes, decode=decode, skip_unreadable=skip_unreadable)
    loader = image_loader(ds, batch_size, workers, device, shuffle=False, persistent_workers=persistent_workers,
                          prefetch_factor=prefetch_factor)
    spec = imagenet_spec(len(classes), image_size, 0, mean, std)
    return DeviceBatches(loader, device, mean, std), spec


def first_batches(batches: Iterable, count: int) -> list:
    """The first ``count`` items of an iterable (for benchmarks on preloaded batches)."""
    out = []
    if count <= 0:
        return out
    for item in batches:
        out.append(item)
        if len(out) >= count:
            break
    return out
