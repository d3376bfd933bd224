"""The masked optimizer step with the mask inside the optimizer's own update, where torch's math allows it.

Eager masking (``zero_outside`` on every gradient, then ``optimizer.step()``) makes one extra memory pass
over the sparse layers' gradients. ``MaskedStep`` applies the mask inside an existing pass instead:

- SGD with momentum (dampening 0, not Nesterov: the engine's optimizer): the mask enters the momentum
  update, ``buf = buf * momentum + d * mask`` (one ``addcmul``), so the step makes exactly torch's four
  passes and reads the mask once. Values equal the eager masked step's (``torch.equal``: the product
  with a 0/1 mask and the addition round exactly as torch's ``add_``).
- Every other case (Adam, AdamW, SGD with Nesterov, dampening or no momentum, the first step before
  momentum buffers exist): torch's update reads the gradient before any pass the mask could join
  (Adam's ``lerp_``, Nesterov's look-ahead), so the gradient is masked in its own pass, then
  ``optimizer.step()`` runs as always: values equal the eager masked step's.

On the CPU every mask is multiplied in as a cached copy in the parameter's dtype (4 bytes per weight of
memory): PyTorch's CPU kernels run float x uint8 products element by element, several times slower than
float x float (benchmarks/bench_masking.py times the uint8 pass against a plain one), while other devices
read the mask's bytes directly (a uint8 view).

After a fused SGD step ``p.grad`` still holds the unmasked gradient (nothing reads it before the next
backward; topology-update steps do not go through here).
"""
from __future__ import annotations

from typing import Mapping

import torch


class MaskedStep:
    """``step(masks)``: one optimizer step in which every parameter of ``masks`` (param -> bool mask)
    is updated only at its mask's True positions (weights and optimizer state stay zero elsewhere)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self._operands: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}  # id -> (mask, version, operand)

    def mask_operand(self, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The mask as the multiplier of `like`: its bytes as uint8, or on the CPU a cached copy in like's dtype
        (rebuilt when the mask is replaced or changed in place)."""
        if like.device.type != "cpu":
            return mask.view(torch.uint8)
        cached = self._operands.get(id(mask))
        if cached is not None and cached[0] is mask and cached[1] == mask._version and cached[2].dtype == like.dtype:
            return cached[2]
        operand = mask.to(like.dtype)
        self._operands[id(mask)] = (mask, mask._version, operand)
        return operand

    def forget_stale(self, masks: Mapping[torch.Tensor, torch.Tensor]) -> None:
        """Drop cached operands of masks no longer in use (after a topology update replaced them)."""
        live = {id(m) for m in masks.values()}
        for key in [k for k in self._operands if k not in live]:
            del self._operands[key]

    @torch.no_grad()
    def step(self, masks: Mapping[torch.Tensor, torch.Tensor]) -> None:
        if len(masks) != len(self._operands):
            self.forget_stale(masks)
        if self._can_fold():
            for group in self.optimizer.param_groups:
                self._sgd_group(group, masks)
            return
        masked = [(p.grad, self.mask_operand(m, p.grad)) for p, m in masks.items() if p.grad is not None]
        if masked:
            torch._foreach_mul_([g for g, _ in masked], [m for _, m in masked])
        self.optimizer.step()

    def _can_fold(self) -> bool:
        """SGD with momentum, no dampening, no Nesterov, every momentum buffer already there (torch's first
        step clones the gradient instead), dense gradients."""
        opt = self.optimizer
        if type(opt) is not torch.optim.SGD:
            return False
        for group in opt.param_groups:
            if (group["momentum"] == 0 or group["dampening"] != 0 or group["nesterov"] or group["maximize"]
                    or group.get("differentiable")):
                return False
            for p in group["params"]:
                if p.grad is not None and (p.grad.is_sparse or opt.state.get(p, {}).get("momentum_buffer") is None):
                    return False
        return True

    def _sgd_group(self, group: dict, masks: Mapping[torch.Tensor, torch.Tensor]) -> None:
        """torch.optim.SGD's multi-tensor update with the mask inside the momentum update."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        bufs = [self.optimizer.state[p]["momentum_buffer"] for p in params]
        lr, wd = float(group["lr"]), group["weight_decay"]
        steps = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else grads
        torch._foreach_mul_(bufs, group["momentum"])
        inside = [i for i, p in enumerate(params) if p in masks]
        outside = [i for i, p in enumerate(params) if p not in masks]
        if inside:  # buf += d * mask: equal to torch's buf += (d * mask) with alpha 1 - dampening = 1
            torch._foreach_addcmul_([bufs[i] for i in inside], [steps[i] for i in inside],
                                    [self.mask_operand(masks[params[i]], params[i]) for i in inside])
        if outside:
            torch._foreach_add_([bufs[i] for i in outside], [steps[i] for i in outside], alpha=1.0)
        torch._foreach_add_(params, bufs, alpha=-lr)
