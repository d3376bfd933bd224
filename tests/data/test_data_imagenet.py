"""ImageFolder input: unreadable images named (or skipped), the file-bytes decode path, persistent workers and
per-sample augmentation seeds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sparselearning.data.imagenet import (IMAGENET_MEAN, IMAGENET_STD, DeviceBatches, image_folder, image_loader,
                                          imagenet_val_batches)
from sparselearning.errors import UsageError


CLASSES = ("a", "b")


def _write(root: Path, per_class=5, size=(40, 52), seed=0) -> Path:
    """train/ and val/ of smooth images (JPEG, one PNG per class), so decoders and resizers agree closely."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    for split in ("train", "val"):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                f = rng.uniform(0.02, 0.15, 3)
                img = np.stack([127 + 100 * np.sin(f[k] * (xx + 2 * yy) + k) for k in range(3)], -1)
                ext = "png" if i == 0 else "JPEG"
                Image.fromarray(img.astype(np.uint8)).save(root / split / c / f"{i}.{ext}", quality=95)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("folder"))


def _corrupt(root: Path) -> Path:
    bad = root / "val" / "b" / "3.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # a download cut short: the header survives, the data do not
    return bad


@pytest.fixture
def damaged(tmp_path):
    root = _write(tmp_path / "img")
    return root, _corrupt(root)


def _all(batches):
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def _reference_val(root: Path, size: int) -> torch.Tensor:
    """Validation images by PIL itself: resize the shorter side to round(size / 0.875), centre crop, normalise."""
    from PIL import Image

    out = []
    for c in CLASSES:
        for f in sorted((root / "val" / c).iterdir()):
            img = Image.open(f).convert("RGB")
            w, h = img.size
            short = max(size, round(size / 0.875))
            nw, nh = (short, round(h * short / w)) if w <= h else (round(w * short / h), short)
            img = img.resize((nw, nh), Image.BILINEAR)
            left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
            a = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32)
            out.append((torch.from_numpy(a).permute(2, 0, 1) / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1))
                       / torch.tensor(IMAGENET_STD).view(3, 1, 1))
    return torch.stack(out)


@pytest.mark.slow
def test_default_val_path_equals_pil_reference(root):
    batches, _ = imagenet_val_batches(root, image_size=24, batch_size=4, device="cpu", workers=0)
    x, y = _all(batches)
    assert y.tolist() == [0] * 5 + [1] * 5
    assert torch.allclose(x, _reference_val(root, 24), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_jpeg_is_named(damaged, workers):
    root, bad = damaged
    for decode in ("pil", "gpu"):
        batches, _ = imagenet_val_batches(root, image_size=24, batch_size=4, device="cpu", workers=workers,
                                          decode=decode)
        with pytest.raises(UsageError) as err:
            _all(batches)
        msg = str(err.value)
        assert "\n" not in msg and f"image {bad} could not be decoded" in msg and "skip" in msg, msg


@pytest.mark.slow
def test_garbage_file_is_named_in_training(tmp_path):
    root = _write(tmp_path / "img")
    bad = root / "train" / "a" / "2.JPEG"
    bad.write_bytes(b"<html>not found</html>")
    for decode in ("pil", "gpu"):
        loader = DeviceBatches(image_loader(image_folder(root, "train", 16, decode=decode), 4, 0, "cpu"), "cpu")
        with pytest.raises(UsageError, match=f"image {bad} could not be decoded"):
            _all(loader)


@pytest.mark.slow
@pytest.mark.parametrize("decode", ["pil", "gpu"])
def test_skip_unreadable_leaves_the_image_out_and_counts_it(damaged, decode, root):
    damaged_root, bad = damaged
    batches, _ = imagenet_val_batches(damaged_root, image_size=24, batch_size=4, device="cpu", workers=0,
                                      decode=decode, skip_unreadable=True)
    x, y = _all(batches)
    assert x.shape == (9, 3, 24, 24) and y.tolist() == [0] * 5 + [1] * 4
    assert batches.skipped == 1 and batches.skipped_paths == [str(bad)]
    if decode == "pil":  # the survivors are the other nine, in order (root: the same images, undamaged)
        ref = _reference_val(root, 24)
        assert torch.allclose(x, torch.cat([ref[:8], ref[9:]]), atol=1e-5)


@pytest.mark.slow
def test_bytes_path_decodes_close_to_pil(root):
    """decode='gpu' on a CPU device: torchvision.io decodes the file bytes; val images match PIL's closely."""
    pil, _ = imagenet_val_batches(root, image_size=24, batch_size=4, device="cpu", workers=0)
    raw, _ = imagenet_val_batches(root, image_size=24, batch_size=4, device="cpu", workers=0, decode="gpu")
    (xp, yp), (xr, yr) = _all(pil), _all(raw)
    assert torch.equal(yp, yr) and xr.dtype == torch.float32 and xr.shape == xp.shape
    assert (xp - xr).abs().mean().item() < 0.03  # ~1.5/255 after normalisation: decoder/resizer rounding


def _train_epoch(root, workers, decode="pil", persistent=True, epochs=(0, 1), seed=5):
    loader = DeviceBatches(image_loader(image_folder(root, "train", 16, decode=decode), 3, workers, "cpu",
                                        shuffle=True, persistent_workers=persistent), "cpu")
    out = []
    for e in epochs:
        loader.set_epoch(e, seed + e)
        out.append(_all(loader))
    return out


@pytest.mark.slow
def test_training_augmentation_is_per_sample_seeded(root):
    """Same epochs with 0 or 2 workers, persistent or not; another seed, other crops; PIL and bytes paths draw
    the same crops."""
    ref = _train_epoch(root, 0)
    for got in (_train_epoch(root, 2), _train_epoch(root, 2, persistent=False)):
        for (xa, ya), (xb, yb) in zip(ref, got):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(ref[0][0], ref[1][0])
    resumed = _train_epoch(root, 0, epochs=(1,))  # a resumed run starts at epoch 1
    assert torch.equal(resumed[0][0], ref[1][0])
    raw = _train_epoch(root, 0, decode="gpu")
    for (xa, ya), (xb, yb) in zip(ref, raw):
        assert torch.equal(ya, yb) and (xa - xb).abs().mean().item() < 0.05


@pytest.mark.slow
def test_loader_options_reach_the_dataloader(root):
    batches, _ = imagenet_val_batches(root, image_size=16, batch_size=4, device="cpu", workers=2,
                                      prefetch_factor=3)
    assert batches.loader.num_workers == 2 and batches.loader.persistent_workers
    assert batches.loader.prefetch_factor == 3
    serial, _ = imagenet_val_batches(root, image_size=16, batch_size=4, device="cpu", workers=0)
    assert serial.loader.num_workers == 0 and not serial.loader.persistent_workers
    with pytest.raises(UsageError):
        image_folder(root, "val", 16, decode="nvjpeg")
    with pytest.raises(UsageError):
        image_loader(image_folder(root, "val", 16), 4, -1, "cpu")
