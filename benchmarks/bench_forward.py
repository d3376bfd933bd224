"""CPU time of the evaluation's forward passes: seconds per 10,000 images, per model.

``ensemble_freetickets.py`` runs each ticket forward once per input set (the test split, each OoD
set, each corruption at each severity) and caches the logits; every metric is computed from the
cache. The cost of an evaluation is therefore (forward passes) x (time per pass over its images),
and this script measures the second factor: process CPU seconds (``time.process_time``, which a
busy machine inflates far less than wall time) and wall seconds of eval-mode, no-grad forward
passes at the evaluation's batch size, scaled to 10,000 images. A masked ticket costs the same as
a dense model on the CPU: its zeros are multiplied like any other weight.

    python benchmarks/bench_forward.py [--threads 1] [--models cnn-small,MLPCIFAR10,wrn-28-10]
"""
from __future__ import annotations

import argparse
import time

import torch

from sparselearning.machine import cpu_name, load_average

# model -> (classes, channels, image size, images to time)
SETTINGS = {"cnn-small": (10, 1, 28, 2048), "MLPCIFAR10": (10, 1, 28, 2048), "wrn-28-10": (10, 3, 32, 256),
            "imagenet-resnet50": (1000, 3, 224, 128)}


def time_forward(name: str, batch_size: int) -> dict:
    from models import get_model

    classes, channels, size, n = SETTINGS[name]
    model = get_model(name, num_classes=classes, in_channels=channels, image_size=size).eval()
    x = torch.randn(batch_size, channels, size, size)
    with torch.no_grad():
        model(x[:2])  # warm-up (allocations, kernel selection)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        done = 0
        while done < n:
            model(x)
            done += batch_size
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"model": name, "images": done, "cpu_s_per_10k": cpu / done * 1e4, "wall_s_per_10k": wall / done * 1e4}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--batch-size", type=int, default=128, help="the evaluation's --test-batch-size default")
    p.add_argument("--models", default="cnn-small,MLPCIFAR10,wrn-28-10", help=f"comma-separated: {', '.join(SETTINGS)}")
    args = p.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in SETTINGS]
    if unknown:
        p.error(f"unknown model {unknown[0]}; choose from {', '.join(SETTINGS)}")
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_name()}, load average {load_average()} (1/5/15 min), torch {torch.__version__} with "
          f"{args.threads} thread(s); batch {args.batch_size}, eval mode, no grad")
    print(f"{'model':20s} {'images timed':>12s} {'CPU s / 10k images':>19s} {'wall s / 10k images':>20s}")
    for name in names:
        r = time_forward(name, args.batch_size)
        print(f"{r['model']:20s} {r['images']:12d} {r['cpu_s_per_10k']:19.1f} {r['wall_s_per_10k']:20.1f}")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
