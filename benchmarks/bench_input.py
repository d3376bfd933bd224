"""ImageNet input pipeline alone: images/s of the PIL path against the file-bytes + torchvision decode path.

Writes a generated ImageFolder of JPEGs (``--images`` per split, ``--size`` pixels, smooth content so
the files compress like photos) to a temporary folder, then for each decode path ("pil": workers decode
and transform with PIL; "gpu": workers read file bytes, ``torchvision.io.decode_jpeg`` decodes on the
device and crops there - on the CPU when no GPU is present) and each worker count (``--workers``,
default 0 and 2) times ``--epochs`` passes over the training split (RandomResizedCrop + flip, as in
training) through ``DeviceBatches`` on ``--device``, synchronising the device at the end. The first
pass of each setting warms up (worker start, nvjpeg init) and is not counted. Prints images/s and the
ratio gpu/pil per worker count.

    python benchmarks/bench_input.py --quick            # CPU, < 1 minute
    python benchmarks/bench_input.py --device cuda --images 2000 --size 400 --workers 0,4,8
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sparselearning.data.imagenet import DeviceBatches, image_folder, image_loader


def write_jpegs(root: Path, images: int, size: int, classes: int = 4, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:int(size * 1.25)]
    for split in ("train", "val"):
        for i in range(images):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            f = rng.uniform(0.01, 0.08, 3)
            img = np.stack([127 + 90 * np.sin(f[k] * (xx + 2 * yy) + k) for k in range(3)], -1)
            img += rng.normal(0, 8, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i}.JPEG", quality=90)
    return root


def time_setting(root: Path, decode: str, workers: int, args, device: torch.device) -> float:
    """Images/s over args.epochs passes after one warm-up pass."""
    ds = image_folder(root, "train", args.crop, decode=decode)
    batches = DeviceBatches(image_loader(ds, args.batch_size, workers, device, shuffle=True), device)
    seen, elapsed = 0, 0.0
    for epoch in range(args.epochs + 1):
        batches.set_epoch(epoch, epoch)
        start = time.perf_counter()
        n = 0
        for x, _ in batches:
            n += int(x.shape[0])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if epoch > 0:
            seen, elapsed = seen + n, elapsed + time.perf_counter() - start
    return seen / elapsed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small settings for a CPU check in under a minute")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=512, help="images per split")
    p.add_argument("--size", type=int, default=300, help="image height in pixels (width 1.25x)")
    p.add_argument("--crop", type=int, default=224, help="training crop size")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="timed passes per setting (after one warm-up)")
    p.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.size, args.crop, args.batch_size, args.epochs = 64, 160, 128, 32, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision.*")
    device = torch.device(args.device)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpegs(Path(tmp), args.images, args.size)
        print(f"device {device}, {args.images} JPEGs of {int(args.size * 1.25)}x{args.size}, crop {args.crop}, "
              f"batch {args.batch_size}, {args.epochs} timed pass(es) per setting")
        for w in workers:
            rates = {d: time_setting(root, d, w, args, device) for d in ("pil", "gpu")}
            print(f"workers {w}: pil {rates['pil']:8.1f} img/s   bytes+decode_jpeg {rates['gpu']:8.1f} img/s   "
                  f"ratio {rates['gpu'] / rates['pil']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
