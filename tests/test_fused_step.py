"""The fused masked optimizer step (core/fused_step.py) against torch.optim with explicit masking.

Reference: the gradient multiplied by the mask by hand, then torch.optim's own step. The fused step gets the
unmasked gradient and must give the same weights and optimizer state: equal values (torch.equal), step
after step, for every optimizer configuration the engine can be given.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparselearning.core.fused_step import MaskedStep
from sparselearning.core.masking import Masking

OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4),  # the engine's: folded
    "sgd_no_decay": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
    "sgd_dampening": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=5e-4),
    "sgd_no_momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, weight_decay=5e-4),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-4),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
}


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def random_masks(model, gen):
    return {p: torch.rand(p.shape, generator=gen) < 0.3 for p in model.parameters() if p.dim() > 1}


def state_tensors(opt, model):
    return [v for p in model.parameters() for v in opt.state.get(p, {}).values() if torch.is_tensor(v)]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_step_equals_torch_optim_on_the_masked_gradient(name):
    gen = torch.Generator().manual_seed(1)
    model = net()
    masks = random_masks(model, gen)
    with torch.no_grad():
        for p, m in masks.items():
            p.mul_(m)  # a sparse model: zero outside its mask
    ref = copy.deepcopy(model)
    ref_masks = dict(zip([p for p in ref.parameters() if p.dim() > 1], masks.values()))
    opt, ref_opt = OPTIMIZERS[name](model.parameters()), OPTIMIZERS[name](ref.parameters())
    fused = MaskedStep(opt)
    for step in range(6):
        if step == 3:  # a topology update replaces masks: the cached CPU operands must follow
            for p, rp in zip(masks, ref_masks):
                new = torch.rand(p.shape, generator=gen) < 0.3
                masks[p] = ref_masks[rp] = new
                with torch.no_grad():
                    for t in [p, rp, *state_tensors(opt, model), *state_tensors(ref_opt, ref)]:
                        if t.shape == p.shape:
                            t.mul_(new)
        grads = [torch.randn(p.shape, generator=gen) for p in model.parameters()]
        for p, rp, g in zip(model.parameters(), ref.parameters(), grads):
            p.grad = g.clone()
            rp.grad = g * ref_masks[rp] if rp in ref_masks else g.clone()
        fused.step(masks)
        ref_opt.step()
        for p, rp in zip(model.parameters(), ref.parameters()):
            assert torch.equal(p, rp), (name, step)
        for a, b in zip(state_tensors(opt, model), state_tensors(ref_opt, ref)):
            assert torch.equal(a, b), (name, step)
        for p, m in masks.items():  # weights and state zero outside the mask
            assert not p[~m].any()


def test_folded_sgd_step_keeps_the_gradient_and_reads_the_mask_once():
    """The engine's SGD: after the first step (buffers exist) the mask enters the momentum update; the
    gradient is not rewritten (the eager path zeroes it in place)."""
    model = net()
    opt = OPTIMIZERS["sgd"](model.parameters())
    fused = MaskedStep(opt)
    masks = random_masks(model, torch.Generator().manual_seed(2))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    fused.step(masks)  # first step: no buffers yet, masked gradient pass + torch's step
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    assert fused._can_fold()
    fused.step(masks)
    assert all(bool((p.grad == 1).all()) for p in masks)


def test_cpu_operand_follows_an_in_place_change_of_the_mask():
    fused = MaskedStep(torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1))
    mask, like = torch.tensor([True, False, True]), torch.zeros(3)
    assert fused.mask_operand(mask, like).tolist() == [1.0, 0.0, 1.0]
    mask[1] = True
    assert fused.mask_operand(mask, like).tolist() == [1.0, 1.0, 1.0]


def _train(fused: bool, opt: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5))
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) if opt == "sgd"
                 else torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4))
    masking = Masking(optimizer, update_frequency=3, seed=0, fused_step=fused)
    masking.add_module(model, density=0.3)
    gen = torch.Generator().manual_seed(3)
    for _ in range(10):
        x, y = torch.randn(8, 3, 6, 6, generator=gen), torch.randint(0, 5, (8,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        masking.step()
    return model, masking


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_masking_with_and_without_the_fused_step_trains_identically(opt):
    fused_model, fused_masking = _train(True, opt)
    eager_model, eager_masking = _train(False, opt)
    assert fused_masking.fused_step is not None and eager_masking.fused_step is None
    assert fused_masking.num_updates == eager_masking.num_updates == 3
    for a, b in zip(fused_model.parameters(), eager_model.parameters()):
        assert torch.equal(a, b)
    assert all(torch.equal(fused_masking.masks[n], eager_masking.masks[n]) for n in fused_masking.masks)
    fused_masking.check_invariants()


def test_no_fused_step_flag_parses():
    from sparselearning.cli import build_parser

    assert build_parser("DST").parse_args(["--no-fused-step"]).no_fused_step is True
    assert build_parser("DST").parse_args([]).no_fused_step is False
