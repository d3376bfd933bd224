import pytest
import torch
from hypothesis import given, settings, strategies as st

from sparselearning.core import death, growth
from sparselearning.core.redistribution import layer_scores, split_budget


def _layer(seed, n=200, density=0.4):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g)
    mask = torch.rand(n, generator=g) < density
    w = w * mask
    return w, mask


def test_num_to_remove_rounds_up():
    assert death.num_to_remove(10, 0.5) == 5
    assert death.num_to_remove(11, 0.5) == 6
    assert death.num_to_remove(3, 0.0) == 0
    assert death.num_to_remove(4, 0.99) == 4


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 1000), rate=st.floats(0.0, 0.99))
def test_magnitude_death_removes_smallest_exactly(seed, rate):
    w, mask = _layer(seed)
    k = death.num_to_remove(int(mask.sum()), rate)
    new = death.magnitude_death(w, mask, k)
    assert int(new.sum()) == int(mask.sum()) - k
    assert not (new & ~mask).any()  # death never activates anything
    removed, kept = w[mask & ~new].abs(), w[new].abs()
    if removed.numel() and kept.numel():
        assert removed.max() <= kept.min()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 1000), rate=st.floats(0.0, 0.99))
def test_set_death_removes_small_positive_and_large_negative(seed, rate):
    w, mask = _layer(seed)
    k = death.num_to_remove(int(mask.sum()), rate)
    new = death.set_death(w, mask, k)
    assert int(new.sum()) == int(mask.sum()) - k
    removed = mask & ~new
    pos_removed, pos_kept = w[removed & (w >= 0)], w[new & (w >= 0)]
    neg_removed, neg_kept = w[removed & (w < 0)], w[new & (w < 0)]
    if pos_removed.numel() and pos_kept.numel():
        assert pos_removed.max() <= pos_kept.min()
    if neg_removed.numel() and neg_kept.numel():
        assert neg_removed.min() >= neg_kept.max()


def test_threshold_death():
    w = torch.tensor([0.0, 0.5, -0.01, 2.0, -3.0])
    mask = torch.tensor([False, True, True, True, True])
    assert death.threshold_death(w, mask, 0.1).tolist() == [False, True, False, True, True]


def test_global_magnitude_death_counts_across_layers():
    w = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([0.5, 10.0, 0.1])}
    m = {"a": torch.ones(3, dtype=torch.bool), "b": torch.tensor([True, True, False])}
    new = death.global_magnitude_death(w, m, 2)  # smallest active: 0.5 (b), 1.0 (a)
    assert new["a"].tolist() == [False, True, True]
    assert new["b"].tolist() == [False, True, False]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 1000), k=st.integers(0, 150))
def test_gradient_growth_picks_largest_inactive(seed, k):
    w, mask = _layer(seed)
    grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed + 1))
    new = growth.gradient_growth(mask, grad, k)
    grown = new & ~mask
    assert int(grown.sum()) == min(k, int((~mask).sum()))
    assert (new & mask).sum() == mask.sum()  # nothing active is lost
    not_grown = ~new
    if grown.any() and not_grown.any():
        assert grad.abs()[grown].min() >= grad.abs()[not_grown].max()


def test_momentum_growth_uses_momentum():
    mask = torch.tensor([True, False, False, False])
    mom = torch.tensor([9.0, 0.1, -5.0, 1.0])
    assert growth.momentum_growth(mask, mom, 1).tolist() == [True, False, True, False]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 1000), k=st.integers(0, 150))
def test_random_growth_exact_and_reproducible(seed, k):
    _, mask = _layer(seed)
    a = growth.random_growth(mask, k, torch.Generator().manual_seed(seed))
    b = growth.random_growth(mask, k, torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)
    assert int((a & ~mask).sum()) == min(k, int((~mask).sum()))
    assert torch.equal(a & mask, mask)


def test_random_growth_is_uniform_over_inactive():
    mask = torch.zeros(10, dtype=torch.bool)
    mask[:5] = True
    counts = torch.zeros(10)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        counts += growth.random_growth(mask, 1, g).float()
    inactive = counts[5:] / 2000
    assert counts[:5].eq(2000).all()
    assert (inactive - 0.2).abs().max() < 0.05


@settings(max_examples=60, deadline=None)
@given(scores=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=8), budget=st.integers(0, 500),
       caps=st.lists(st.integers(0, 120), min_size=8, max_size=8))
def test_split_budget_exact_and_capped(scores, budget, caps):
    names = [f"l{i}" for i in range(len(scores))]
    s = dict(zip(names, scores))
    cap = {n: caps[i] for i, n in enumerate(names)}
    alloc = split_budget(s, budget, cap)
    assert sum(alloc.values()) == min(budget, sum(cap.values()))
    assert all(0 <= alloc[n] <= cap[n] for n in names)


def test_split_budget_proportional():
    alloc = split_budget({"a": 3.0, "b": 1.0}, 100, {"a": 1000, "b": 1000})
    assert alloc == {"a": 75, "b": 25}


def test_split_budget_leftover_goes_to_the_largest_remainder():
    # shares 10 x (1, 1, 1.1) / 3.1 = 3.226, 3.226, 3.548: floors 3, 3, 3; the one left goes to c (remainder .548)
    room = {"a": 100, "b": 100, "c": 100}
    assert split_budget({"a": 1.0, "b": 1.0, "c": 1.1}, 10, room) == {"a": 3, "b": 3, "c": 4}
    # shares 3.75, 1.25, 5.0 ... of 10 by (3, 1, 4): floors 3, 1, 5; one left: a (.75) before b (.25)
    assert split_budget({"a": 3.0, "b": 1.0, "c": 4.0}, 10, room) == {"a": 4, "b": 1, "c": 5}


def test_layer_scores_magnitude():
    w = {"a": torch.tensor([1.0, -3.0, 0.0]), "b": torch.tensor([2.0, 2.0])}
    m = {"a": torch.tensor([True, True, False]), "b": torch.tensor([True, False])}
    assert layer_scores("magnitude", w, m) == {"a": 2.0, "b": 2.0}
    with pytest.raises(ValueError):
        layer_scores("momentum", w, m)
