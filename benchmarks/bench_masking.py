"""Cost of the Masking engine on WRN-28-10 at density 0.2 (CPU is fine).

Prints the plain optimizer step time, the masked step time and their ratio, one topology update
(p=0.5, gradient growth), one re-exploration (q=0.8), and mask memory per weight. It also times the
masked step's only extra work, the mask pass over the sparse layers' gradients, beside one plain
read-and-write pass over the same gradients: no separate pass can beat the latter, so
1 + (that pass / plain step) is the floor of the ratio for masking done outside the optimizer.
Targets: masked step <= 1.3x the plain step; one topology update < 0.5 s.

    python benchmarks/bench_masking.py [--model wrn-28-10] [--density 0.2] [--repeats 30]
"""
from __future__ import annotations

import argparse
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
    plain_t, masked_t, mask_pass_t, floor_t = [], [], [], []
    for i in range(args.repeats + 2):
        p_t, m_t = one(opt.step), one(mask.step)
        mp_t = one(lambda: zero_outside(sparse_grads, sparse_masks))
        f_t = one(lambda: torch._foreach_mul_(sparse_grads, 1.0))
        if i >= 2:  # warm-up
            plain_t.append(p_t)
            masked_t.append(m_t)
            mask_pass_t.append(mp_t)
            floor_t.append(f_t)
    plain, masked = statistics.median(plain_t), statistics.median(masked_t)
    # the ratio of each adjacent pair, so that a slow spell of the machine cancels out
    ratios = sorted(m / p for p, m in zip(plain_t, masked_t))
    ratio, ratio_lo, ratio_hi = statistics.median(ratios), ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    mask.apply_mask()  # the plain steps above moved inactive weights; restore the invariants

    def update(rate):
        return one(lambda: mask.truncate_weights(rate))

    update_t = statistics.median(update(0.5) for _ in range(max(3, args.repeats // 3)))
    reexplore_t = statistics.median(update(0.8) for _ in range(max(3, args.repeats // 3)))
    mask_bytes = sum(m.numel() * m.element_size() for m in mask.masks.values())
    n_weights = sum(m.numel() for m in mask.masks.values())
    print(f"machine: {machine_info()}; device {device}")
    print(f"model {args.model}, density {args.density}, {n_weights:,} sparse-layer weights")
    print(f"plain optimizer step : {plain * 1e3:8.1f} ms")
    print(f"masked step          : {masked * 1e3:8.1f} ms")
    print(f"masked / plain       : {ratio:8.2f}x   (median of {len(ratios)} adjacent pairs, quartiles "
          f"{ratio_lo:.2f}-{ratio_hi:.2f}; target <= 1.3x)")
    print(f"  of which mask pass : {statistics.median(mask_pass_t) * 1e3:8.1f} ms   (grad *= mask, 9 bytes per weight)")
    print(f"  floor of any pass  : {statistics.median(floor_t) * 1e3:8.1f} ms   (grad *= 1.0, 8 bytes per weight: "
          f"ratio >= {1 + statistics.median(floor_t) / plain:.2f}x for masking outside the optimizer)")
    print(f"topology update p=0.5: {update_t:8.3f} s    (target < 0.5 s)")
    print(f"re-exploration q=0.8 : {reexplore_t:8.3f} s")
    print(f"mask memory          : {mask_bytes / n_weights:.2f} bytes per weight (bool masks)")
    print(f"invariants hold      : {mask.check_invariants() is None}")


if __name__ == "__main__":
    main()
