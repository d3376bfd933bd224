"""fp16 AMP with a real torch.amp.GradScaler (on the CPU): a step the scaler skips is no step for Masking."""
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from sparselearning.core import Masking
from sparselearning.core.death import global_magnitude_death
from sparselearning.core.density import global_magnitude_masks


def _setup(update_frequency=2):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mask = Masking(opt, death_rate=0.5, growth_mode="gradient", update_frequency=update_frequency, seed=1)
    mask.add_module(model, density=0.5, sparse_init="uniform")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    return model, opt, mask, scaler


def _backward(model, opt, scaler, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    opt.zero_grad(set_to_none=True)
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()


def test_skipped_step_is_not_counted_and_runs_no_update():
    model, opt, mask, scaler = _setup(update_frequency=2)
    _backward(model, opt, scaler, 0)
    assert mask.step(scaler=scaler) is False
    scaler.update()
    assert mask.steps == 1
    # step 2 would be a topology update; its gradients overflow
    _backward(model, opt, scaler, 1)
    first = model[0].weight
    first.grad[0, 0] = float("inf")
    masks_before = {n: m.clone() for n, m in mask.masks.items()}
    weights_before = {n: p.detach().clone() for n, p in mask.params.items()}
    scale_before = scaler.get_scale()
    assert mask.step(scaler=scaler) is False
    scaler.update()
    assert scaler.get_scale() == scale_before / 2  # the scaler really skipped (GradScaler's own backoff)
    assert mask.steps == 1 and mask.num_updates == 0
    for n in masks_before:
        assert torch.equal(mask.masks[n], masks_before[n])
        assert torch.equal(mask.params[n].detach(), weights_before[n])  # no optimizer step either
    # the next real step is the update, on finite gradients
    _backward(model, opt, scaler, 2)
    assert mask.step(scaler=scaler) is True
    scaler.update()
    assert mask.steps == 2 and mask.num_updates == 1
    for n, p in mask.params.items():
        assert torch.isfinite(p.detach()).all()
        assert int(mask.masks[n].sum()) == mask.budgets[n]


def test_scaled_step_matches_plain_step_when_finite():
    """With finite gradients, the scaler path gives the same weights as an unscaled step (scale is a power of 2)."""
    model_a, opt_a, mask_a, scaler = _setup(update_frequency=1000)
    model_b, opt_b, mask_b, _ = _setup(update_frequency=1000)
    for seed in range(3):
        _backward(model_a, opt_a, scaler, seed)
        mask_a.step(scaler=scaler)
        scaler.update()
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
        opt_b.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model_b(x), y).backward()
        mask_b.step()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)


class _CountHostCopies(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.cpu,):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_global_magnitude_selection_makes_no_host_copy():
    torch.manual_seed(0)
    weights = {"a": torch.randn(30, 20), "b": torch.randn(50)}
    masks = {n: torch.rand(w.shape) < 0.6 for n, w in weights.items()}
    with _CountHostCopies() as mode:
        after = global_magnitude_death(weights, masks, 40)
        kept = global_magnitude_masks(weights, 0.25)
    assert mode.count == 0
    # and they are right: the 40 smallest active |w| overall are gone; the largest 25% are kept
    flat_w = torch.cat([weights[n].abs().flatten() for n in weights])
    flat_m = torch.cat([masks[n].flatten() for n in weights])
    flat_after = torch.cat([after[n].flatten() for n in weights])
    gone = flat_m & ~flat_after
    assert int(gone.sum()) == 40
    assert flat_w[gone].max() <= flat_w[flat_after].min()
    flat_kept = torch.cat([kept[n].flatten() for n in weights])
    assert int(flat_kept.sum()) == int(0.25 * flat_w.numel())
    assert flat_w[flat_kept].min() >= flat_w[~flat_kept].max()
