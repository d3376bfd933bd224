"""Cost of the Masking engine on WRN-28-10 at density 0.2 (CPU is fine).

Prints the plain optimizer step time, the masked step time with the mask inside the optimizer's update
(the engine's default, core/fused_step.py) and as a separate gradient pass (--no-fused-step), their ratios
to the plain step (the three interleaved, ratios of adjacent runs), one topology update (p=0.5, gradient
growth) with a cProfile of where its time goes, one re-exploration (q=0.8), and mask memory per weight.
It also times the eager path's extra work, the mask pass over the sparse layers' gradients (bool masks
read as uint8, as zero_outside does), beside one plain read-and-write pass over the same gradients.
Targets: masked step <= 1.1x the plain step; one topology update <= 0.5 s.

    python benchmarks/bench_masking.py [--model wrn-28-10] [--density 0.2] [--repeats 30]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch

from models import get_model
from sparselearning.provenance import machine_info
from sparselearning.core.masking import Masking, zero_outside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wrn-28-10")
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # one sparse model; plain and masked steps run on the same tensors, alternating, so that a
    # noisy shared machine slows both alike
    model = get_model(args.model, num_classes=10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    mask = Masking(opt, update_frequency=10**9, death_rate=0.5, growth_mode="gradient", seed=0)
    mask.add_module(model, density=args.density, sparse_init="ERK")
    grads = {n: torch.randn_like(p) * 1e-3 for n, p in model.named_parameters()}  # a dense gradient

    def restore_grads():  # what backward() does before every step
        for n, p in model.named_parameters():
            if p.grad is None:
                p.grad = grads[n].clone()
            else:
                p.grad.copy_(grads[n])
        sync()

    def one(step) -> float:
        restore_grads()
        start = time.perf_counter()
        step()
        sync()
        return time.perf_counter() - start

    restore_grads()  # from here on each .grad is the same tensor, refilled in place
    sparse_grads = [mask.params[n].grad for n in mask.updatable]
    sparse_masks = [mask.masks[n] for n in mask.updatable]
    fused_step = mask.fused_step

    def eager_step():
        mask.fused_step = None
        try:
            mask.step()
        finally:
            mask.fused_step = fused_step

    times = {k: [] for k in ("plain", "fused", "eager", "mask_pass", "floor")}
    for i in range(args.repeats + 2):
        row = {"plain": one(opt.step), "fused": one(mask.step), "eager": one(eager_step),
               "mask_pass": one(lambda: zero_outside(sparse_grads, sparse_masks)),
               "floor": one(lambda: torch._foreach_mul_(sparse_grads, 1.0))}
        if i >= 2:  # warm-up (the first steps create momentum buffers)
            for k, v in row.items():
                times[k].append(v)
    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio_of(kind):  # the ratio of each adjacent pair, so that a slow spell of the machine cancels out
        ratios = sorted(m / p for p, m in zip(times["plain"], times[kind]))
        return statistics.median(ratios), ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4], len(ratios)
    mask.apply_mask()  # the plain steps above moved inactive weights; restore the invariants

    def update(rate):
        return one(lambda: mask.truncate_weights(rate))

    update_t = statistics.median(update(0.5) for _ in range(max(3, args.repeats // 3)))
    reexplore_t = statistics.median(update(0.8) for _ in range(max(3, args.repeats // 3)))
    profile = cProfile.Profile()
    profile.runcall(mask.truncate_weights, 0.5)
    where = io.StringIO()
    pstats.Stats(profile, stream=where).sort_stats("tottime").print_stats(8)
    mask_bytes = sum(m.numel() * m.element_size() for m in mask.masks.values())
    n_weights = sum(m.numel() for m in mask.masks.values())
    print(f"machine: {machine_info()}; device {device}; torch threads {torch.get_num_threads()}")
    print(f"model {args.model}, density {args.density}, {n_weights:,} sparse-layer weights")
    print(f"plain optimizer step : {med['plain'] * 1e3:8.1f} ms")
    for kind, label in (("fused", "masked step, fused "), ("eager", "masked step, eager ")):
        r, lo, hi, n = ratio_of(kind)
        print(f"{label} : {med[kind] * 1e3:8.1f} ms   {r:.2f}x plain (median of {n} adjacent pairs, quartiles "
              f"{lo:.2f}-{hi:.2f}; target <= 1.1x)")
    print(f"  eager mask pass    : {med['mask_pass'] * 1e3:8.1f} ms   (grad *= mask as uint8)")
    print(f"  one plain pass     : {med['floor'] * 1e3:8.1f} ms   (grad *= 1.0 over the same gradients)")
    print(f"topology update p=0.5: {update_t:8.3f} s    (target <= 0.5 s)")
    print(f"re-exploration q=0.8 : {reexplore_t:8.3f} s")
    print(f"mask memory          : {mask_bytes / n_weights:.2f} bytes per weight (bool masks)")
    operands = sum(op.numel() * op.element_size() for _, _, op in fused_step._operands.values()) if fused_step else 0
    print(f"fused-step operands  : {operands / n_weights:.2f} bytes per weight (on the CPU a copy of each mask in "
          f"the weights' dtype; elsewhere none)")
    print(f"invariants hold      : {mask.check_invariants() is None}")
    print("where a topology update's time goes (cProfile, by own time):")
    print("\n".join(line for line in where.getvalue().splitlines() if line.strip())[-1800:])


if __name__ == "__main__":
    main()
