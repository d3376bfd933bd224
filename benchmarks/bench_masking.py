"""Cost of the Masking engine on WRN-28-10 at density 0.2 (CPU is fine).

Prints the plain optimizer step time, the masked step time and their ratio, one topology update
(p=0.5, gradient growth), one re-exploration (q=0.8), and mask memory per weight.
Targets: masked step <= 1.3x the plain step; one topology update < 0.5 s.

    python benchmarks/bench_masking.py [--model wrn-28-10] [--density 0.2] [--repeats 10]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from models import get_model
from sparselearning.masking import Masking


def timed(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wrn-28-10")
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    def setup(sparse: bool):
        model = get_model(args.model, num_classes=10).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        for p in model.parameters():  # a dense gradient, as backward() leaves it
            p.grad = torch.randn_like(p) * 1e-3
        mask = None
        if sparse:
            mask = Masking(opt, update_frequency=10**9, death_rate=0.5, growth_mode="gradient", seed=0)
            mask.add_module(model, density=args.density, sparse_init="ERK")
        return model, opt, mask

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model, opt, _ = setup(False)
    plain = timed(lambda: (opt.step(), sync()), args.repeats)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    del model, opt

    model, opt, mask = setup(True)

    def masked_step():
        for n, p in model.named_parameters():  # backward() writes a fresh dense gradient every step
            p.grad.copy_(grads[n])
        mask.step()
        sync()

    def restore_grads():
        for n, p in model.named_parameters():
            p.grad.copy_(grads[n])

    def copy_only():
        restore_grads()
        sync()

    masked = timed(masked_step, args.repeats) - timed(copy_only, args.repeats)
    restore_grads()
    update = timed(lambda: (restore_grads(), mask.truncate_weights(0.5), sync()), max(3, args.repeats // 3), 1)
    reexplore = timed(lambda: (restore_grads(), mask.truncate_weights(0.8), sync()), max(3, args.repeats // 3), 1)
    mask_bytes = sum(m.numel() * m.element_size() for m in mask.masks.values())
    n_weights = sum(m.numel() for m in mask.masks.values())
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {device}, torch {torch.__version__}")
    print(f"model {args.model}, density {args.density}, {n_weights:,} sparse-layer weights")
    print(f"plain optimizer step : {plain * 1e3:8.1f} ms")
    print(f"masked step          : {masked * 1e3:8.1f} ms   ratio {masked / plain:.2f}x (target <= 1.3x)")
    print(f"topology update p=0.5: {update:8.3f} s    (target < 0.5 s)")
    print(f"re-exploration q=0.8 : {reexplore:8.3f} s")
    print(f"mask memory          : {mask_bytes / n_weights:.2f} bytes per weight (bool masks)")
    print(f"invariants hold      : {mask.check_invariants() is None}")


if __name__ == "__main__":
    main()
