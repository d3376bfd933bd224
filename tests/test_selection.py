import pytest
import torch
from hypothesis import given, settings, strategies as st

from sparselearning.selection import top_k_indices


@settings(max_examples=30, deadline=None)
@given(n=st.sampled_from([10, 1000, 300_000, 1_000_003]), frac=st.floats(0.0, 1.0), largest=st.booleans(),
       seed=st.integers(0, 50), dup=st.booleans())
def test_matches_full_topk_values(n, frac, largest, seed, dup):
    g = torch.Generator().manual_seed(seed)
    score = torch.randn(n, generator=g)
    if dup:  # many ties and infinities, as masked scores have
        score = score.round(decimals=1)
        score[torch.rand(n, generator=g) < 0.5] = float("-inf") if largest else float("inf")
    k = int(frac * n)
    idx = top_k_indices(score, k, largest)
    assert idx.numel() == k and idx.unique().numel() == k
    expected = torch.topk(score, k, largest=largest).values
    got = score[idx].sort(descending=largest).values
    assert torch.equal(got, expected)


def test_structured_input_falls_back_exactly():
    score = torch.zeros(1_000_000)
    score[-1000:] = 1.0  # the sample misses this block entirely
    idx = top_k_indices(score, 1000)
    assert sorted(idx.tolist()) == list(range(999_000, 1_000_000))
