"""Image files of an ImageFolder as DataLoader items: decoded by PIL in the workers, or as file bytes.

- ``decode="pil"`` (default): workers decode with PIL and apply the split's transform; batches are
  uint8 tensors, as torchvision's ImageFolder gives them.
- ``decode="gpu"``: workers only read the file bytes and draw the random crop (from the image
  header); :meth:`ImageFolderSet.decode_batch` decodes with ``torchvision.io.decode_jpeg`` on the
  batches' device (batched nvjpeg on CUDA; on a CPU device the same code decodes on the CPU), then
  crops and resizes there. Non-JPEG files (ImageNet holds a few PNGs) are decoded on the CPU.

An image that cannot be decoded raises :class:`UnreadableImage` naming the file, or with
``skip_unreadable=True`` is left out of its batch and counted (:class:`FolderBatch.skipped`).

Training augmentation is seeded per sample (:class:`SeededSampler`): sample i of an epoch gets its
crop and flip from a seed derived from (epoch seed, i), so the batches do not depend on the number
of workers or on whether they persist across epochs, and a resumed run repeats them exactly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch.utils.data import RandomSampler, Sampler, SequentialSampler
from torch.utils.data._utils.collate import default_collate
from torchvision.datasets import ImageFolder

from ..errors import UsageError
from .formats import one_line

__all__ = ["DECODERS", "UnreadableImage", "open_rgb", "ImageFolderSet", "SeededSampler", "FolderBatch",
           "EncodedImage", "collate_images"]

DECODERS = ("pil", "gpu")
RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's defaults
_SKIP_HINT = "delete or replace it, or skip unreadable images"


class UnreadableImage(UsageError):
    """An image file that cannot be decoded; the message names it."""

    def __init__(self, message: str):
        # Raised in a DataLoader worker, torch rebuilds it in the trainer as
        # type(err)("Caught ... in DataLoader worker ...\nOriginal Traceback ...\n<type>: <message>"):
        # keep the one-line message, so the run reports it as any other bad input.
        if message.startswith("Caught ") and "Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def _unreadable(path: str, err: BaseException) -> UnreadableImage:
    return UnreadableImage(f"image {path} could not be decoded ({one_line(err)}); {_SKIP_HINT}")


def open_rgb(path: str):
    """The image as an RGB PIL image (decoded now), or UnreadableImage."""
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            return Image.open(fh).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None


def item_seed(epoch_seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of an epoch (golden-ratio multiplicative mixing)."""
    return (int(epoch_seed) * 0x9E3779B97F4A7C15 + int(index) * 0xBF58476D1CE4E5B9 + 1) % (2**63 - 1)


class SeededSampler(Sampler):
    """Yields (index, seed) for the wrapped sampler's indices; :class:`ImageFolderSet` seeds that sample's
    augmentation with it. ``set_seed`` (by DeviceBatches.set_epoch) also reseeds the default shuffling."""

    def __init__(self, sampler: Sampler | None, dataset, shuffle: bool = False, seed: int = 0):
        self.generator = torch.Generator().manual_seed(int(seed))
        if sampler is None:
            sampler = RandomSampler(dataset, generator=self.generator) if shuffle else SequentialSampler(dataset)
        self.sampler, self.seed = sampler, int(seed)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def set_seed(self, seed: int) -> None:
        self.seed = int(seed)
        self.generator.manual_seed(self.seed)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = self.seed
        for i in self.sampler:
            yield int(i), item_seed(seed, i)

    def __len__(self) -> int:
        return len(self.sampler)


@dataclass
class EncodedImage:
    """A file's bytes and, for training, the crop box (top, left, h, w) and flip.

    Plain bytes, not a tensor: many small tensors sent from a worker each need a shared-memory file
    descriptor (and can run out of them); bytes travel through the worker's pipe.
    """
    path: str
    data: bytes
    box: tuple[int, int, int, int] | None = None
    flip: bool = False


@dataclass
class Skipped:
    path: str


@dataclass
class FolderBatch:
    """What a loader of an :class:`ImageFolderSet` yields when it skips or decodes on the device."""
    images: torch.Tensor | list[EncodedImage] | None  # None when every image of the batch was skipped
    labels: torch.Tensor
    skipped: list[str] = field(default_factory=list)

    def pin_memory(self):
        if isinstance(self.images, torch.Tensor):
            self.images = self.images.pin_memory()
        self.labels = self.labels.pin_memory()
        return self


def collate_images(items: list) -> FolderBatch:
    skipped = [it.path for it in items if isinstance(it, Skipped)]
    kept = [it for it in items if not isinstance(it, Skipped)]
    labels = torch.tensor([t for _, t in kept], dtype=torch.int64)
    if not kept:
        images = None
    elif isinstance(kept[0][0], EncodedImage):
        images = [e for e, _ in kept]
    else:
        images = default_collate([x for x, _ in kept])
    return FolderBatch(images, labels, skipped)


class ImageFolderSet(ImageFolder):
    """torchvision's ImageFolder with named decode errors, optional skipping and the bytes path."""

    def __init__(self, root: str, transform, *, image_size: int, train: bool, resize: int,
                 decode: str = "pil", skip_unreadable: bool = False):
        self.links_skipped: list[str] = []  # linked folders not entered (scanned already: a loop)
        super().__init__(root, transform=transform)
        self.image_size, self.train, self.resize = int(image_size), bool(train), int(resize)
        self.decode, self.skip_unreadable = decode, bool(skip_unreadable)

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        """torchvision's scan (same files, same order), entering every real folder once: a symbolic link to a
        folder already scanned (``train/n01/loop -> train``) is skipped and recorded in ``links_skipped``."""
        if is_valid_file is None:
            def is_valid_file(path: str) -> bool:
                return path.lower().endswith(extensions if isinstance(extensions, str) else tuple(extensions))
        visited = {os.path.realpath(directory)}
        visited |= {os.path.realpath(os.path.join(directory, c)) for c in class_to_idx}
        instances, found = [], set()
        for target_class in sorted(class_to_idx):
            target_dir = os.path.join(directory, target_class)
            if not os.path.isdir(target_dir):
                continue
            walk = []
            for root, dirs, files in os.walk(target_dir, followlinks=True):
                for d in list(dirs):
                    real = os.path.realpath(os.path.join(root, d))
                    if real in visited:
                        dirs.remove(d)
                        self.links_skipped.append(os.path.join(root, d))
                    visited.add(real)
                walk.append((root, files))
            for root, files in sorted(walk):
                for name in sorted(files):
                    path = os.path.join(root, name)
                    if is_valid_file(path):
                        instances.append((path, class_to_idx[target_class]))
                        found.add(target_class)
        empty = sorted(set(class_to_idx) - found)
        if empty and not allow_empty:
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}")
        return instances

    @property
    def draws_random(self) -> bool:
        return self.train

    @property
    def needs_collate(self) -> bool:
        return self.decode != "pil" or self.skip_unreadable

    def __getitem__(self, key):
        if isinstance(key, tuple):  # (index, seed) from SeededSampler
            index, seed = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._item(index)
        return self._item(key)

    def _item(self, index: int):
        path, target = self.samples[index]
        try:
            if self.decode == "pil":
                return self.transform(open_rgb(path)), target
            return self._encoded(path), target
        except UnreadableImage:
            if self.skip_unreadable:
                return Skipped(path)
            raise

    def _encoded(self, path: str) -> EncodedImage:
        """File bytes plus the crop box and flip drawn as the PIL path draws them (header only, no decode)."""
        from PIL import Image
        from torchvision.transforms import RandomResizedCrop

        try:
            with open(path, "rb") as fh:
                data = fh.read()
            if not self.train:
                return EncodedImage(path, data)
            with Image.open(path) as img:  # lazy: reads the size from the header
                box = RandomResizedCrop.get_params(img, RRC_SCALE, RRC_RATIO)
        except (OSError, ValueError, SyntaxError, RuntimeError) as err:
            raise _unreadable(path, err) from None
        return EncodedImage(path, data, tuple(int(v) for v in box), bool(torch.rand(1) < 0.5))

    def decode_batch(self, batch: FolderBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, 3, S, S) images and labels on ``device`` from a batch of file bytes."""
        images = _decode_all(batch.images, device, self.skip_unreadable, batch.skipped)
        keep = [i for i, img in enumerate(images) if img is not None]
        out = [self._transform_tensor(images[i], batch.images[i]) for i in keep]
        labels = batch.labels if len(keep) == len(images) else batch.labels[keep]
        size = self.image_size
        x = torch.stack(out) if out else torch.empty((0, 3, size, size), dtype=torch.uint8, device=device)
        return x, labels

    def _transform_tensor(self, img: torch.Tensor, enc: EncodedImage) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        size = [self.image_size, self.image_size]
        if enc.box is None:
            return TF.center_crop(TF.resize(img, self.resize, antialias=True), size)
        img = TF.resized_crop(img, *enc.box, size, antialias=True)
        return img.flip(-1) if enc.flip else img


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _decode_one(enc: EncodedImage, device: torch.device) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    try:
        if _is_jpeg(enc.data):
            return decode_jpeg(_as_tensor(enc.data), mode=ImageReadMode.RGB, device=device)
        return decode_image(_as_tensor(enc.data), mode=ImageReadMode.RGB).to(device)
    except RuntimeError as err:
        raise _unreadable(enc.path, err) from None


def _decode_all(encoded: Sequence[EncodedImage], device: torch.device, skip: bool,
                skipped: list[str]) -> list[torch.Tensor | None]:
    """Decode every image; JPEGs in one batched call (nvjpeg on CUDA), the rest one by one on the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, e in enumerate(encoded) if _is_jpeg(e.data)]
    try:
        for i, img in zip(jpegs, decode_jpeg([_as_tensor(encoded[i].data) for i in jpegs], mode=ImageReadMode.RGB,
                                             device=device) if jpegs else []):
            out[i] = img
        done = set(jpegs)
        todo = [i for i in range(len(encoded)) if i not in done]
    except RuntimeError:  # a damaged JPEG: find it (and decode the others) one by one
        todo = list(range(len(encoded)))
    for i in todo:
        try:
            out[i] = _decode_one(encoded[i], device)
        except UnreadableImage:
            if not skip:
                raise
            skipped.append(encoded[i].path)
    return out
