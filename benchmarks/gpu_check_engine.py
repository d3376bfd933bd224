"""The sections of benchmarks/gpu_check.py that run the real engine or its data path on generated data.

- ddp_engine      ImageNet/main.py under torchrun on a generated ImageFolder, sparse, topology updates every
                  2 steps: 2 processes with NCCL when 2 GPUs are present, else 2 CPU processes with gloo; the
                  engine checks every rank's masks after every update (its log says so, read here)
- end_to_end      main_individual.py dense vs --sparse (one flag apart) for a few hundred steps on a generated
                  CIFAR-10 with the default update frequency: images/s over the whole run (the user's figure)
- pipeline        the ImageNet data path (image_folder -> image_loader -> DeviceBatches) with --decode pil
                  (workers decode and crop) vs --decode gpu (the device decodes and crops), images/s

Everything is generated inside the machine (random CIFAR pickles, smooth-field JPEGs) in temporary folders.
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


class CheckFailed(AssertionError):
    """A correctness section's expectation did not hold (the section reports "fail")."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd[:4])}... exited {proc.returncode}: {(proc.stderr or proc.stdout)[-600:]}")
    return proc


# ---------------------------------------------------------------------------------- generated data
def write_jpegs(root: Path, per_class: int, shape: tuple[int, int], classes: int = 2) -> int:
    """train/<class>/*.jpg and val/<class>/0.jpg: smooth colour fields plus noise (ImageNet-like decode work)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    noise = rng.normal(0, 20, (h, w, 3))
    count = 0
    for c in range(classes):
        name = f"n{c:08d}"
        (root / "train" / name).mkdir(parents=True)
        (root / "val" / name).mkdir(parents=True)
        for i in range(per_class):
            slope_y, slope_x = rng.uniform(0.2, 1, 2)
            base = np.stack([(yy * slope_y + xx * slope_x + k * 60) % 256 for k in range(3)], -1)
            img = np.clip(base + np.roll(noise, i, axis=1), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "train" / name / f"{i}.jpg", quality=90)
            count += 1
        Image.fromarray(img).save(root / "val" / name / "0.jpg", quality=90)
    return count


def write_cifar10(root: Path, train_images: int, test_images: int) -> None:
    """cifar-10-batches-py/ with random images and labels, in the python version's layout."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    per_batch = -(-train_images // 5)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test_images)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)


# ---------------------------------------------------------------------------------- sections
def ddp_engine(dry_run: bool, timeout: float) -> dict:
    gpus = torch.cuda.device_count() if not dry_run else 0  # the parent never initialises CUDA: NVML count
    on_gpus = gpus >= 2
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
        write_jpegs(Path(tmp) / "data", 16, (40, 48))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "ImageNet/main.py", str(Path(tmp) / "data"), "-a", "resnet18", "--image-size", "32",
               "--epochs", "1", "-b", "4", "--density", "0.2", "--update-frequency", "2", "--output-dir",
               str(Path(tmp) / "out"), "--no-progress", "--device", "cuda" if on_gpus else "cpu"]
        start = time.perf_counter()
        proc = _run(cmd, timeout)
        seconds = time.perf_counter() - start
        logs = list((Path(tmp) / "out").rglob("train.log"))
        log = logs[0].read_text() if logs else proc.stdout
    checks = [line for line in log.splitlines() if "masks identical on 2 rank(s)" in line]
    if len(checks) < 2:  # the initial check and at least one after a topology update
        raise CheckFailed(f"the engine logged {len(checks)} cross-rank mask checks, expected the initial one and "
                          f"one per topology update")
    return {"backend": "nccl" if on_gpus else "gloo", "processes": 2, "device": "cuda" if on_gpus else "cpu",
            "program": "torchrun ImageNet/main.py (resnet18, 32 px, sparse, update every 2 steps)",
            "mask_checks_logged": len(checks), "masks_in_sync": True, "seconds": round(seconds, 1),
            **({} if on_gpus else {"note": "fewer than 2 GPUs: 2 CPU processes over gloo (the NCCL run at world "
                                           "size 1 is section ddp)"})}


def _engine_run(tmp: Path, model: str, sparse: bool, epochs: int, batch: int, device: str, timeout: float) -> dict:
    out = tmp / ("sparse" if sparse else "dense")
    cmd = [sys.executable, "main_individual.py", "--data", "cifar10", "--data-dir", str(tmp / "data"), "--model",
           model, "--epochs", str(epochs), "-b", str(batch), "--output-dir", str(out), "--no-progress", "--device",
           device, "--density", "0.2", *(["--sparse"] if sparse else [])]
    _run(cmd, timeout)
    summary = json.loads(next(out.rglob("summary.json")).read_text())
    return summary


def end_to_end(dry_run: bool, timeout: float) -> dict:
    model, train, epochs, batch = ("cnn-small", 300, 1, 32) if dry_run else ("wrn-16-8", 14300, 2, 128)
    device = "cpu" if dry_run else "cuda"
    with tempfile.TemporaryDirectory(prefix="gpu_check_e2e_") as tmp:
        write_cifar10(Path(tmp) / "data", train, 200)
        runs = {}
        written = 5 * -(-train // 5)
        n_train = written - int(round(0.1 * written))  # the engine's default --valid-split 0.1
        for sparse in (False, True):
            summary = _engine_run(Path(tmp), model, sparse, epochs, batch, device, timeout / 2)
            seconds = summary["elapsed_seconds"]
            runs["sparse" if sparse else "dense"] = {"seconds": round(seconds, 2),
                                                     "images_per_s": round(epochs * n_train / seconds, 1),
                                                     "steps": epochs * -(-n_train // batch)}
    return {"model": model, "program": "main_individual.py, dense vs --sparse (density 0.2, update frequency "
                                       "1000, gradient growth)", **runs,
            "sparse_over_dense": round(runs["sparse"]["images_per_s"] / runs["dense"]["images_per_s"], 3),
            "note": "elapsed seconds of the run's epochs (validation included, start-up excluded)"}


def _timed_pass(batches, device: torch.device) -> tuple[float, float, int]:
    """(seconds to the first batch, images/s after it, images) of one pass over `batches`."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    start = time.perf_counter()
    first_at, after_first, seen = None, 0, 0
    for x, _ in batches:
        sync()
        seen += int(x.shape[0])
        if first_at is None:
            first_at = time.perf_counter()
        else:
            after_first += int(x.shape[0])
    end = time.perf_counter()
    rate = after_first / (end - first_at) if after_first and end > first_at else float("nan")
    return first_at - start, rate, seen


def pipeline(device: torch.device, per_class: int, shape: tuple[int, int], size: int, batch: int,
             workers: int) -> dict:
    """images/s of the ImageNet training data path, --decode pil vs --decode gpu (best of passes 2-3 each)."""
    from sparselearning.data.imagenet import DeviceBatches, image_folder, image_loader

    out = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_imagefolder_") as tmp:
        n = write_jpegs(Path(tmp), per_class, shape)
        for decode in ("pil", "gpu"):
            ds = image_folder(tmp, "train", size, decode=decode)
            loader = image_loader(ds, batch, workers, device, shuffle=True, drop_last=False)
            passes = [_timed_pass(DeviceBatches(loader, device), device) for _ in range(3)]
            out[decode] = {"images_per_s": round(max(rate for _, rate, _ in passes[1:]), 1),
                           "first_batch_s": [round(p[0], 2) for p in passes],
                           "all_images_seen": all(p[2] == n for p in passes)}
    h, w = shape
    return {"images": n, "jpeg_shape": f"{w}x{h}", "crop": size, "batch": batch, "workers": workers,
            "cpu_count": os.cpu_count(), **out, "gpu_over_pil": round(out["gpu"]["images_per_s"] /
                                                                       out["pil"]["images_per_s"], 3),
            "note": "images/s after each pass's first batch, best of passes 2-3; --decode gpu on the CPU (dry "
                    "run) decodes with the CPU's torchvision.io"}
