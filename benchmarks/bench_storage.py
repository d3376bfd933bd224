"""Bytes on disk of a ticket against the dense float32 state dict, at several densities.

A WRN (default wrn-28-10, CIFAR-10 shapes) is masked with ERK through ``Masking`` exactly as the
training scripts do, saved as a ticket (``checkpoint.build_ticket`` + ``atomic_save``: active values
plus packed bit masks, BatchNorm and biases dense) into a temporary folder, and compared with
``torch.save(model.state_dict())`` of the same network. Target: ticket size <= density + 5% of the
dense file.

    python benchmarks/bench_storage.py [--model wrn-28-10] [--densities 0.05,0.1,0.2,0.5]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from models import get_model
from sparselearning.checkpoint import atomic_save, build_ticket, load_ticket, ticket_state_dict
from sparselearning.provenance import machine_info
from sparselearning.core.masking import Masking


def measure(model_name: str, densities: list[float], num_classes: int = 10, verify: bool = True) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_storage_") as tmp:
        torch.manual_seed(0)
        model = get_model(model_name, num_classes=num_classes)
        dense_path = Path(tmp) / "dense_state_dict.pth"
        atomic_save(model.state_dict(), dense_path)
        dense_bytes = dense_path.stat().st_size
        n_params = sum(p.numel() for p in model.parameters())
        rows.append({"density": 1.0, "bytes": dense_bytes, "ratio": 1.0, "target": None, "kind": "dense state_dict",
                     "params": n_params})
        for d in densities:
            torch.manual_seed(0)
            model = get_model(model_name, num_classes=num_classes)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            mask = Masking(opt, update_frequency=None, seed=0)
            mask.add_module(model, density=d, sparse_init="ERK")
            meta = {"model": model_name, "num_classes": num_classes, "in_channels": 3, "image_size": 32,
                    "dataset": "cifar10", "kind": "DST", "density": mask.density()}
            path = Path(tmp) / f"ticket_{d:g}.pth"
            start = time.perf_counter()
            atomic_save(build_ticket(model, mask.masks, meta), path)
            save_s = time.perf_counter() - start
            size = path.stat().st_size
            ok = None
            if verify:  # the ticket restores the masked weights exactly
                state = ticket_state_dict(load_ticket(path))
                ok = all(torch.equal(state[k], v) for k, v in model.state_dict().items())
            rows.append({"density": d, "bytes": size, "ratio": size / dense_bytes, "target": d + 0.05,
                         "kind": "ticket", "active": mask.num_active(), "save_seconds": save_s,
                         "round_trip_exact": ok})
            del model, opt, mask
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wrn-28-10")
    parser.add_argument("--densities", default="0.05,0.1,0.2,0.5")
    parser.add_argument("--no-verify", action="store_true", help="skip the exact round-trip check")
    args = parser.parse_args(argv)
    try:
        densities = [float(v) for v in args.densities.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--densities must be comma-separated numbers, got {args.densities!r}")
    if not densities or not all(0 < d <= 1 for d in densities):
        parser.error("--densities must lie in (0, 1]")
    rows = measure(args.model, densities, verify=not args.no_verify)
    print(f"machine: {machine_info()}")
    dense = rows[0]
    print(f"{args.model} (CIFAR-10 shapes), {dense['params']:,} parameters; dense float32 state_dict "
          f"{dense['bytes'] / 2**20:.2f} MiB")
    print(f"{'density':>8s} {'ticket MiB':>11s} {'of dense':>9s} {'target <=':>10s} {'verdict':>8s} {'exact':>6s}")
    for r in rows[1:]:
        verdict = "met" if r["ratio"] <= r["target"] else "MISSED"
        print(f"{r['density']:8.2f} {r['bytes'] / 2**20:11.2f} {r['ratio']:9.4f} {r['target']:10.2f} {verdict:>8s} "
              f"{str(r['round_trip_exact']):>6s}")
    return rows


if __name__ == "__main__":
    main()
