import torch
from hypothesis import given, settings, strategies as st

from sparselearning.core import selection
from sparselearning.core.selection import top_k_mask


def reference_values(score, k, largest, among):
    """The k largest (smallest) scores among the candidates, by a full sort."""
    pool = score.flatten() if among is None else score.flatten()[among.flatten()]
    return pool.sort(descending=largest).values[:k]


@settings(max_examples=40, deadline=None)
@given(n=st.sampled_from([10, 1000, 300_000, 1_000_003]), frac=st.floats(0.0, 1.0), largest=st.booleans(),
       seed=st.integers(0, 50), dup=st.booleans(), restricted=st.booleans())
def test_exactly_k_of_the_candidates_with_the_topk_values(n, frac, largest, seed, dup, restricted):
    g = torch.Generator().manual_seed(seed)
    score = torch.randn(n, generator=g)
    if dup:  # many ties and infinities, as masked scores have
        score = score.round(decimals=1)
        score[torch.rand(n, generator=g) < 0.5] = float("-inf") if largest else float("inf")
    among = torch.rand(n, generator=g) < 0.3 if restricted else None
    candidates = n if among is None else int(among.sum())
    k = int(frac * n)
    chosen = top_k_mask(score, k, largest, among)
    assert chosen.dtype == torch.bool and chosen.shape == score.shape
    assert int(chosen.sum()) == min(k, candidates)
    if among is not None:
        assert not (chosen & ~among).any()  # only candidates are chosen
    got = score[chosen].sort(descending=largest).values
    assert torch.equal(got, reference_values(score, k, largest, among))


def test_keeps_the_shape_of_a_weight():
    score = torch.randn(64, 32, 3, 3, generator=torch.Generator().manual_seed(1))
    chosen = top_k_mask(score, 100)
    assert chosen.shape == score.shape and int(chosen.sum()) == 100
    assert score[chosen].min() >= score[~chosen].max()


def test_structured_input_falls_back_exactly(monkeypatch):
    calls = []
    full = selection._full_topk
    monkeypatch.setattr(selection, "_full_topk", lambda *a: calls.append(1) or full(*a))
    n = 1_000_000
    score = torch.rand(n, generator=torch.Generator().manual_seed(3))
    score[:: n // selection._SAMPLE] = 0.0  # exactly the entries the sample reads: it sees only zeros
    chosen = top_k_mask(score, n // 4)
    assert int(chosen.sum()) == n // 4 and score[chosen].min() >= score[~chosen].max()
    assert calls  # the bracket missed, and the full topk answered


def test_large_random_input_takes_the_band_path(monkeypatch):
    calls = []
    full = selection._full_topk
    monkeypatch.setattr(selection, "_full_topk", lambda *a: calls.append(1) or full(*a))
    score = torch.rand(2_000_000, generator=torch.Generator().manual_seed(2))
    for k in (1, 200_000, 999_999, 1_600_000):
        chosen = top_k_mask(score, k, largest=False)
        assert int(chosen.sum()) == k and score[chosen].max() <= score[~chosen].min()
    assert not calls
