import pytest
from torch import nn

from models import get_model
from sparselearning.core.density import erk_densities
from sparselearning.core.flops import FlopsAccountant, dense_training_flops, profile_model, step_flops


def test_profile_matches_hand_count():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    prof = profile_model(model, (3, 8, 8))
    assert prof.layers == {"0.weight": 2 * 4 * 27 * 36, "3.weight": 2 * 144 * 5}
    assert prof.sparse({"0.weight": 0.5, "3.weight": 0.1}) == pytest.approx(4 * 27 * 36 + 0.2 * 144 * 5)


def test_wrn28_10_reference_flops():
    """§7.3 of the reference: 5.243 G multiply-adds dense; ERK sparse/dense 0.340 at 0.2, 0.169 at 0.1."""
    model = get_model("wrn-28-10", num_classes=10)
    prof = profile_model(model, (3, 32, 32))
    assert prof.dense / 2 == pytest.approx(5.243e9, rel=2e-3)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n in prof.layers}
    for density, ratio in ((0.2, 0.340), (0.1, 0.169)):
        assert prof.sparse(erk_densities(shapes, density)) / prof.dense == pytest.approx(ratio, abs=1.5e-3)


def test_training_step_conventions():
    model = nn.Sequential(nn.Linear(10, 10))
    prof = profile_model(model, (10,))
    d = {"0.weight": 0.25}
    f_s, f_d = prof.sparse(d), prof.dense
    assert step_flops(prof, d, 8) == 3 * f_s * 8
    assert step_flops(prof, d, 8, dense_grad=True) == (2 * f_s + f_d) * 8
    acc = FlopsAccountant(prof, d)
    for _ in range(4):
        acc.add_step(8)
    acc.add_step(8, dense_grad=True)
    assert acc.total == pytest.approx(4 * 3 * f_s * 8 + (2 * f_s + f_d) * 8)
    assert dense_training_flops(prof, 100) == 3 * f_d * 100 * 250
    acc.add_dense_gradient_batch(8)  # EDST's re-exploration gradient: f_dense per sample
    assert acc.total == pytest.approx(4 * 3 * f_s * 8 + (2 * f_s + f_d) * 8 + f_d * 8)


def test_world_size_counts_every_ranks_batch():
    model = nn.Sequential(nn.Linear(10, 10))
    prof = profile_model(model, (10,))
    d = {"0.weight": 0.25}
    world, one = FlopsAccountant(prof, d, world_size=4), FlopsAccountant(prof, d)
    for acc, batch in ((world, 8), (one, 32)):
        acc.add_step(batch)
        acc.add_step(batch, dense_grad=True)
        acc.add_dense_gradient_batch(batch)
    assert world.total == one.total == 3 * prof.sparse(d) * 32 + (2 * prof.sparse(d) + prof.dense) * 32 + prof.dense * 32


def test_edst_paper_ratio_from_accounting():
    """450 epochs at ERK density 0.2 with updates every 1000 steps -> about 0.61 of one dense 250-epoch run."""
    model = get_model("wrn-28-10", num_classes=10)
    prof = profile_model(model, (3, 32, 32))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n in prof.layers}
    d = erk_densities(shapes, 0.2)
    steps = 352 * 450
    updates = steps // 1000
    total = (steps - updates) * step_flops(prof, d, 128) + updates * step_flops(prof, d, 128, dense_grad=True)
    assert total / dense_training_flops(prof, 352 * 128) == pytest.approx(0.61, abs=0.01)
