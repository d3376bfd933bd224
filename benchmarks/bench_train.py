"""Training throughput: the same model dense and sparse in one run, and the data pipeline alone.

Measures, on Fashion-MNIST (the project's BatchLoader: shuffle, crop/flip augmentation, normalise):

- pipeline      batches from the training loader alone, no model (images/s);
- step only     the engine's ``train_one_epoch`` on pre-built batches (forward, backward,
                optimizer step; for the sparse model ``Masking.step`` with topology updates every
                ``--update-frequency`` steps, gradient growth), dense vs sparse (images/s);
- end to end    ``train_one_epoch`` on batches drawn from the loader as training does (images/s).

Dense and sparse interleave at a fine grain: every repeat runs ``--chunk`` batches dense, then
``--chunk`` sparse (the order flips each chunk), until each has run ``--batches``; a repeat's ratio
is total sparse over total dense throughput and the reported ratio is the median over repeats, so a
shared machine's changing load hits both alike. ``--threads`` sets torch's intra-op threads (on a
loaded machine 1 thread per process is several times faster than oversubscribed OpenMP). The sparse model
uses the engine's default masked step (the mask inside SGD's update); ``--no-fused-step`` times the separate
gradient pass instead. Targets: sparse >= 0.97x dense end to end (masking must cost nothing noticeable);
pipeline >= 5x the dense model step (the data never bounds training).

    python benchmarks/bench_train.py [--model cnn-small] [--density 0.2] [--batches 40] [--repeats 5] [--threads 1]
    python benchmarks/bench_train.py --device cuda --amp --channels-last   # on a GPU
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from models import get_model
from sparselearning.data import make_loaders
from sparselearning.provenance import machine_info
from sparselearning.core.masking import Masking
from sparselearning.loop import autocast_context, train_one_epoch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn-small")
    parser.add_argument("--data", default="fashionmnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="batches per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="repeats (median taken)")
    parser.add_argument("--chunk", type=int, default=4, help="batches per dense/sparse turn within a repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--update-frequency", type=int, default=100,
                        help="sparse topology update every N steps (gradient growth), so updates are timed too")
    parser.add_argument("--no-fused-step", action="store_true", help="sparse: mask gradients in a pass of their own")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only: bf16, or fp16 + GradScaler)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last model and batches (CUDA)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if min(args.batches, args.repeats, args.chunk, args.batch_size) < 1:
        parser.error("--batches, --repeats, --chunk and --batch-size must be positive")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if (args.amp or args.channels_last) and device.type != "cuda":
        print("note: --amp/--channels-last are meant for CUDA; on the CPU --amp is a no-op")
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    gen = torch.Generator().manual_seed(0)
    train_loader, _, _, spec = make_loaders(args.data, args.data_dir, args.batch_size, 1000, 0.1, device, gen)
    n_img = args.batches * args.batch_size

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def batches_from_loader():
        it = itertools.islice(iter(train_loader), args.batches)
        if args.channels_last:
            return ((x.contiguous(memory_format=fmt), y) for x, y in it)
        return it

    fixed = list(batches_from_loader())

    def setup(sparse: bool):
        torch.manual_seed(0)
        model = get_model(args.model, num_classes=spec.num_classes, in_channels=spec.in_channels,
                          image_size=spec.image_size).to(device, memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        mask = None
        if sparse:
            mask = Masking(opt, death_rate=0.5, growth_mode="gradient", update_frequency=args.update_frequency, seed=0,
                           fused_step=not args.no_fused_step)
            mask.add_module(model, density=args.density, sparse_init="ERK")
        autocast, scaler = autocast_context(device, args.amp)
        return model, opt, mask, autocast, scaler

    runs = {"dense": setup(False), "sparse": setup(True)}

    def train(kind: str, batches) -> tuple[float, int]:
        """Seconds and images of one turn of `kind` on `batches`."""
        model, opt, mask, autocast, scaler = runs[kind]
        batches = list(batches)
        sync()
        start = time.perf_counter()
        train_one_epoch(model, batches, opt, mask, None, autocast=autocast, scaler=scaler, progress=False)
        sync()
        return time.perf_counter() - start, sum(int(x.shape[0]) for x, _ in batches)

    def pipeline() -> float:
        sync()
        start = time.perf_counter()
        for x, y in batches_from_loader():
            pass
        sync()
        return n_img / (time.perf_counter() - start)

    def interleaved(source) -> dict[str, float]:
        """images/s of dense and sparse, turns of --chunk batches alternating in order."""
        spent = {"dense": 0.0, "sparse": 0.0}
        seen = {"dense": 0, "sparse": 0}
        for turn, lo in enumerate(range(0, args.batches, args.chunk)):
            hi = min(args.batches, lo + args.chunk)
            for kind in (("dense", "sparse") if turn % 2 == 0 else ("sparse", "dense")):
                if source == "fixed":
                    dt, n = train(kind, fixed[lo:hi])
                else:  # drawn from the loader as training does (drawing is part of the timed turn)
                    sync()
                    start = time.perf_counter()
                    _, n = train(kind, itertools.islice(it[kind], hi - lo))
                    dt = time.perf_counter() - start
                spent[kind] += dt
                seen[kind] += n
        return {k: seen[k] / spent[k] for k in spent}

    def fresh_iter():
        def gen():
            while True:
                yield from batches_from_loader()
        return gen()

    # warm-up (allocator, kernels), untimed
    pipeline()
    for kind in runs:
        train(kind, fixed[: args.chunk])
    it = {"dense": fresh_iter(), "sparse": fresh_iter()}
    res: dict[str, list[float]] = {k: [] for k in ("pipeline", "step_dense", "step_sparse", "e2e_dense", "e2e_sparse")}
    for r in range(args.repeats):
        res["pipeline"].append(pipeline())
        for source, tag in (("fixed", "step"), ("loader", "e2e")):
            out = interleaved(source)
            res[f"{tag}_dense"].append(out["dense"])
            res[f"{tag}_sparse"].append(out["sparse"])
    med = {k: statistics.median(v) for k, v in res.items()}
    step_ratio = statistics.median(s / d for s, d in zip(res["step_sparse"], res["step_dense"]))
    e2e_ratio = statistics.median(s / d for s, d in zip(res["e2e_sparse"], res["e2e_dense"]))
    pipe_ratio = med["pipeline"] / med["step_dense"]
    mask = runs["sparse"][2]
    print(f"machine: {machine_info()}; device {device}{', amp' if args.amp else ''}"
          f"{', channels-last' if args.channels_last else ''}")
    print(f"{args.model} on {args.data}, batch {args.batch_size}, {args.batches} batches x {args.repeats} repeats "
          f"(medians); sparse: ERK density {mask.density():.3f}, gradient growth every {args.update_frequency} steps "
          f"({mask.num_updates} updates timed), {'separate mask pass' if args.no_fused_step else 'fused masked step'}")
    print(f"data pipeline alone        : {med['pipeline']:10.0f} images/s")
    print(f"model step only, dense     : {med['step_dense']:10.0f} images/s")
    print(f"model step only, sparse    : {med['step_sparse']:10.0f} images/s   ratio {step_ratio:.3f}x")
    print(f"end to end, dense          : {med['e2e_dense']:10.0f} images/s")
    print(f"end to end, sparse         : {med['e2e_sparse']:10.0f} images/s   ratio {e2e_ratio:.3f}x "
          f"(target >= 0.97x: {'met' if e2e_ratio >= 0.97 else 'MISSED'})")
    print(f"pipeline / dense model step: {pipe_ratio:10.1f}x   (target >= 5x: {'met' if pipe_ratio >= 5 else 'MISSED'})")
    spread = {k: (min(v), max(v)) for k, v in res.items()}
    print("ranges (min-max images/s): " + ", ".join(f"{k} {a:.0f}-{b:.0f}" for k, (a, b) in spread.items()))
    return {"medians": med, "step_ratio": step_ratio, "e2e_ratio": e2e_ratio, "pipeline_ratio": pipe_ratio, "raw": res}


if __name__ == "__main__":
    main()
