"""Evaluation cost: an M-ticket ensemble against M single-model test passes, and repeats from the logit cache.

1. Baseline: M single-model test passes, each loading one ticket (``load_ticket`` + ``ticket_model``)
   and running it over the test set with its normalisation (no metrics, nothing written).
2. The evaluator (``sparselearning.evaluation.evaluate``, what ``ensemble_freetickets.py`` runs) on the
   M tickets with ``--mode predict`` and ``--no-cache``: member and ensemble accuracy and NLL, the
   first-k curve, results JSON/CSV. Target: at most 1.1x the baseline.
3. ``--mode ood,corruption`` (``--ood-data gaussian,uniform``, a few generated corruptions), filling
   the logit cache for those inputs (timed, for information).
4. A repeat with every mode (predict, disagreement, calibration, KD, ood, corruption) on the same
   output folder. Target: no forward pass (``forward_passes`` 0 in the results JSON; every logit is
   a cache hit).

Step 2 alternates with the baseline over ``--repeats`` rounds (medians), to be fair under a shared
machine's changing load. Tickets: by default M random sparse tickets (ERK, ``--density``) of
``--model`` on Fashion-MNIST written to a temporary folder (the timing does not depend on the weights);
``--resume DIR`` times existing tickets instead (DIR is not written to: outputs go to a temp folder).

    python benchmarks/bench_eval.py [--model cnn-small] [-M 3] [--density 0.2] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from models import get_model
from sparselearning.checkpoint import atomic_save, build_ticket, load_ticket, ticket_model
from sparselearning.data import BatchLoader, get_spec, load_split
from sparselearning.evaluation import EvalConfig, discover_tickets, evaluate
from sparselearning.provenance import machine_info
from sparselearning.core.masking import Masking

FEW_CORRUPTIONS = "gaussian_noise,contrast,motion_blur"


def write_random_tickets(folder: Path, model_name: str, data: str, M: int, density: float) -> list[Path]:
    spec = get_spec(data)
    paths = []
    for i in range(M):
        torch.manual_seed(i)
        model = get_model(model_name, num_classes=spec.num_classes, in_channels=spec.in_channels,
                          image_size=spec.image_size)
        masks = None
        if density < 1:
            mask = Masking(torch.optim.SGD(model.parameters(), lr=0.1), update_frequency=None, seed=i)
            mask.add_module(model, density=density, sparse_init="ERK")
            masks = mask.masks
        meta = {"model": model_name, "num_classes": spec.num_classes, "in_channels": spec.in_channels,
                "image_size": spec.image_size, "dataset": spec.name,
                "normalization": {"mean": list(spec.mean), "std": list(spec.std)},
                "kind": "DST" if masks else "dense", "seed": i, "epoch": 0, "ticket_index": 0, "role": "ticket",
                "density": density}
        path = folder / f"seed={i}" / "model.pth"
        atomic_save(build_ticket(model, masks, meta), path)
        paths.append(path)
    return paths


def single_pass(path: Path, batch_size: int, device: torch.device) -> float:
    """Seconds to load one ticket and run it over its dataset's test split (logits only)."""
    start = time.perf_counter()
    ticket = load_ticket(path)
    model = ticket_model(ticket, device)
    spec = get_spec(ticket["dataset"])
    norm = ticket.get("normalization") or {}
    if norm:
        from dataclasses import replace

        spec = replace(spec, mean=tuple(norm["mean"]), std=tuple(norm["std"]))
    images, labels = load_split(spec.name, "test")
    outs = []
    with torch.inference_mode():
        for x, _ in BatchLoader(images, labels, batch_size, shuffle=False, augment=False, spec=spec, device=device):
            outs.append(model(x).float().cpu())
    torch.cat(outs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn-small")
    parser.add_argument("--data", default="fashionmnist")
    parser.add_argument("-M", "--members", type=int, default=3)
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--resume", default=None, help="time these tickets instead of random ones")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--test-batch-size", type=int, default=128)
    parser.add_argument("--corruptions", default=FEW_CORRUPTIONS, help="generated corruptions for step 3/4")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.members < 1 or args.repeats < 1 or not 0 < args.density <= 1:
        parser.error("-M and --repeats must be positive and --density in (0, 1]")
    device = torch.device(args.device)
    silent = lambda line: None  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        tmp = Path(tmp)
        if args.resume:
            root = Path(args.resume)
            paths = discover_tickets(root, exclude=[root / "eval"])
            if not paths:
                parser.error(f"--resume {root}: no tickets found")
        else:
            root = tmp / "tickets"
            paths = write_random_tickets(root, args.model, args.data, args.members, args.density)
        M = len(paths)
        dataset = load_ticket(paths[0])["dataset"]
        load_split(dataset, "test")  # read once: neither side pays the disk read
        single_pass(paths[0], args.test_batch_size, device)  # warm-up
        base, ens = [], []
        for r in range(args.repeats):
            def run_baseline():
                base.append(sum(single_pass(p, args.test_batch_size, device) for p in paths))

            def run_ensemble():
                cfg = EvalConfig(resume=str(root), modes=["predict"], test_batch_size=args.test_batch_size,
                                 device=args.device, output_dir=str(tmp / f"eval_nocache_{r}"), no_cache=True)
                start = time.perf_counter()
                evaluate(cfg, out=silent)
                ens.append(time.perf_counter() - start)

            for step in ((run_baseline, run_ensemble) if r % 2 == 0 else (run_ensemble, run_baseline)):
                step()
        ratio = statistics.median(e / b for e, b in zip(ens, base))

        out_dir = tmp / "eval_cached"
        common = dict(resume=str(root), test_batch_size=args.test_batch_size, device=args.device,
                      output_dir=str(out_dir), ood_data=["gaussian", "uniform"], corruptions=args.corruptions)
        start = time.perf_counter()
        first = evaluate(EvalConfig(modes=["predict", "ood", "corruption"], **common), out=silent)
        t_first = time.perf_counter() - start
        start = time.perf_counter()
        again = evaluate(EvalConfig(modes=["predict", "disagreement", "calibration", "KD", "ood", "corruption"],
                                    **common), out=silent)
        t_again = time.perf_counter() - start

    n_corr = len([c for c in args.corruptions.split(",") if c.strip()])
    print(f"machine: {machine_info()}; device {device}")
    print(f"{M} ticket(s) of {load_ticket(paths[0])['model'] if args.resume else args.model} on {dataset} "
          f"({'from ' + args.resume if args.resume else f'random, density {args.density}'}); "
          f"{args.repeats} alternating rounds, medians")
    print(f"M single-model test passes (load + forward): {statistics.median(base):7.2f} s")
    print(f"ensemble evaluation, --mode predict       : {statistics.median(ens):7.2f} s   ratio {ratio:.3f}x "
          f"(target <= 1.1x: {'met' if ratio <= 1.1 else 'MISSED'})")
    print(f"first run --mode predict,ood,corruption ({2} OoD sets, {n_corr} corruptions x 5 severities): "
          f"{t_first:6.2f} s, forward passes {first['forward_passes']}, cache hits {first['cache_hits']}")
    print(f"repeat, all six modes from the cache       : {t_again:6.2f} s, forward passes {again['forward_passes']}, "
          f"cache hits {again['cache_hits']} (target 0 forward passes: "
          f"{'met' if again['forward_passes'] == 0 else 'MISSED'})")
    return {"baseline_s": base, "ensemble_s": ens, "ratio": ratio, "first": {"seconds": t_first,
            "forward_passes": first["forward_passes"], "cache_hits": first["cache_hits"]},
            "repeat": {"seconds": t_again, "forward_passes": again["forward_passes"],
                       "cache_hits": again["cache_hits"]}}


if __name__ == "__main__":
    main()
