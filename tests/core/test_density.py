import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from sparselearning.core.density import (allocate_densities, count_for_density, erk_densities, global_magnitude_masks,
                                    random_mask)

SHORTCUTS = [f"block{b}.layer.0.convShortcut.weight" for b in (1, 2, 3)]


def overall(densities, shapes):
    return sum(densities[n] * math.prod(s) for n, s in shapes.items()) / sum(math.prod(s) for s in shapes.values())


def test_wrn28_10_weight_count(wrn28_10_shapes):
    assert sum(math.prod(s) for s in wrn28_10_shapes.values()) == 36_461_232


def test_erk_wrn28_10_density_02(wrn28_10_shapes):
    d = erk_densities(wrn28_10_shapes, 0.2)
    dense = {n for n, v in d.items() if v == 1.0}
    assert dense == {"conv1.weight", "block1.layer.0.conv1.weight", "fc.weight", *SHORTCUTS}
    expected = {"block1.layer.1.conv1.weight": 0.574, "block2.layer.0.conv1.weight": 0.428,
                "block2.layer.1.conv1.weight": 0.285, "block3.layer.0.conv1.weight": 0.213,
                "block3.layer.1.conv2.weight": 0.142}
    for name, value in expected.items():
        assert d[name] == pytest.approx(value, abs=2e-3), name
    assert overall(d, wrn28_10_shapes) == pytest.approx(0.2, rel=1e-9)


def test_erk_wrn28_10_density_01(wrn28_10_shapes):
    d = erk_densities(wrn28_10_shapes, 0.1)
    assert d["block3.layer.0.convShortcut.weight"] < 1.0  # no longer promoted to dense at 0.1
    assert d["block1.layer.1.conv1.weight"] == pytest.approx(0.277, abs=2e-3)
    assert d["block3.layer.2.conv1.weight"] == pytest.approx(0.068, abs=2e-3)
    assert overall(d, wrn28_10_shapes) == pytest.approx(0.1, rel=1e-9)


def test_erk_power_scale_zero_is_uniform(wrn28_10_shapes):
    d = erk_densities(wrn28_10_shapes, 0.3, erk_power_scale=0.0)
    assert all(v == pytest.approx(0.3) for v in d.values())


@pytest.mark.parametrize("mode", ["ERK", "ER", "uniform"])
@settings(max_examples=25, deadline=None)
@given(density=st.floats(0.01, 1.0), widen=st.integers(1, 4))
def test_allocation_hits_target_and_stays_in_range(mode, density, widen):
    from helpers import wrn_shapes

    shapes = wrn_shapes(widen=widen, blocks=2)
    d = allocate_densities(mode, shapes, density)
    assert all(0 < v <= 1.0 + 1e-12 for v in d.values())
    assert overall(d, shapes) == pytest.approx(density, rel=1e-6)


@pytest.mark.parametrize("mode", ["ER", "uniform"])
def test_er_and_uniform_give_live_networks(mode, wrn28_10_shapes):
    """The original's ER and uniform left every mask empty; ours allocate real weights."""
    d = allocate_densities(mode, wrn28_10_shapes, 0.2)
    assert min(d.values()) > 0


def test_unknown_mode():
    with pytest.raises(ValueError, match="ERK"):
        allocate_densities("bogus", {"a": (2, 2)}, 0.5)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), density=st.floats(0.0, 1.0), seed=st.integers(0, 99))
def test_random_mask_exact_count(rows, cols, density, seed):
    n = count_for_density(rows * cols, density)
    m = random_mask((rows, cols), n, torch.Generator().manual_seed(seed))
    assert m.dtype == torch.bool and m.shape == (rows, cols)
    assert int(m.sum()) == n


def test_random_mask_reproducible():
    a = random_mask((50, 50), 300, torch.Generator().manual_seed(3))
    b = random_mask((50, 50), 300, torch.Generator().manual_seed(3))
    c = random_mask((50, 50), 300, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_global_magnitude_masks_keep_largest():
    w = {"a": torch.tensor([[0.1, -5.0], [0.3, 2.0]]), "b": torch.tensor([1.0, -0.2, 4.0, 0.05])}
    masks = global_magnitude_masks(w, keep_fraction=0.5)  # keep floor(8 * 0.5) = 4 largest
    kept = sorted(float(v) for n in w for v in w[n][masks[n]].abs().flatten())
    assert kept == [1.0, 2.0, 4.0, 5.0]
    assert sum(int(m.sum()) for m in masks.values()) == 4
