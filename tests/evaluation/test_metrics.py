"""Metrics against hand-computed references and scikit-learn; properties of ensembles."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparselearning.evaluation import metrics as M


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def lab(x):
    return torch.tensor(x, dtype=torch.long)


# --------------------------------------------------------------------------- accuracy / NLL / Brier
def test_accuracy_nll_brier_hand_computed():
    probs = t([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    labels = lab([0, 2])
    assert M.accuracy(probs, labels) == 0.5
    assert M.nll(probs.log(), labels) == pytest.approx(-(math.log(0.7) + math.log(0.1)) / 2, abs=1e-12)
    # row 1: 0.3^2 + 0.2^2 + 0.1^2 = 0.14 ; row 2: 0.1^2 + 0.8^2 + 0.9^2 = 1.46
    assert M.brier(probs, labels) == pytest.approx((0.14 + 1.46) / 2, abs=1e-12)


def test_ensemble_log_probs_is_log_of_mean_probability():
    p1, p2 = t([[0.5, 0.5]]), t([[0.9, 0.1]])
    lp = M.ensemble_log_probs(torch.stack([p1.log(), p2.log()]))
    assert torch.allclose(lp.exp(), t([[0.7, 0.3]]), atol=1e-12)
    assert torch.allclose(M.ensemble_probs(torch.stack([p1, p2])), t([[0.7, 0.3]]))


def test_ensemble_log_probs_is_stable_for_extreme_logits():
    logits = torch.tensor([[[0.0, -2000.0]], [[0.0, -1000.0]]], dtype=torch.float32)
    lp = M.ensemble_log_probs(M.log_probs_from_logits(logits))
    assert torch.isfinite(lp).all()
    # log((e^-2000 + e^-1000) / 2) = -1000 - log 2 (e^-2000 negligible)
    assert lp[0, 1].item() == pytest.approx(-1000 - math.log(2), abs=1e-9)
    assert M.nll(lp, lab([1])) == pytest.approx(1000 + math.log(2), abs=1e-9)


def test_ensemble_of_identical_members_equals_the_member():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 7, (50,), generator=g)
    lp = M.log_probs_from_logits(logits)
    stack = torch.stack([lp, lp, lp])
    ens = M.ensemble_log_probs(stack)
    assert torch.allclose(ens, lp, atol=1e-12)
    assert M.accuracy(ens, labels) == M.accuracy(lp, labels)
    assert M.nll(ens, labels) == pytest.approx(M.nll(lp, labels), abs=1e-12)
    assert M.ece(ens.exp(), labels) == pytest.approx(M.ece(lp.exp(), labels), abs=1e-12)
    assert M.brier(ens.exp(), labels) == pytest.approx(M.brier(lp.exp(), labels), abs=1e-12)
    assert M.mean_over_pairs(M.disagreement_matrix(stack)) == 0.0
    assert M.mean_pairwise_kl(stack) == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(M.mutual_information(stack.exp()), torch.zeros(50, dtype=torch.float64), atol=1e-12)


# --------------------------------------------------------------------------- ECE
def test_ece_15_bins_hand_computed_with_conf_one_in_last_bin():
    probs = t([[1.0, 0.0],    # conf 1.0, correct -> last bin (14/15, 1]
               [0.5, 0.5],    # conf 0.5, argmax 0, wrong -> bin 7 = (7/15, 8/15]
               [0.1, 0.9],    # conf 0.9, correct -> bin 13
               [0.95, 0.05]])  # conf 0.95, wrong -> last bin too
    labels = lab([0, 1, 1, 1])
    # last bin |1 - (1.0 + 0.95)| = 0.95 ; bin 7 |0 - 0.5| ; bin 13 |1 - 0.9|
    assert M.ece(probs, labels) == pytest.approx((0.95 + 0.5 + 0.1) / 4, abs=1e-12)
    rb = M.reliability_bins(probs, labels)
    assert rb["count"][14] == 2 and rb["count"][7] == 1 and rb["count"][13] == 1 and sum(rb["count"]) == 4
    assert rb["accuracy"][14] == 0.5 and rb["confidence"][14] == pytest.approx(0.975)
    assert rb["accuracy"][0] is None and len(rb["edges"]) == 16


def test_ece_bins_are_right_closed_at_edges():
    # 5 bins: conf 0.6 is in (0.4, 0.6] with conf 0.55 -> one bin |1 - 1.15| = 0.15 -> ECE 0.075.
    # (Were 0.6 put in (0.6, 0.8], ECE would be (0.4 + 0.55) / 2 = 0.475.)
    probs = t([[0.6, 0.4], [0.55, 0.45]])
    labels = lab([0, 1])
    assert M.ece(probs, labels, n_bins=5) == pytest.approx(0.075, abs=1e-12)
    assert M.reliability_bins(probs, labels, n_bins=5)["count"] == [0, 0, 2, 0, 0]


def test_ece_conf_zero_goes_to_first_bin_and_one_to_last():
    probs = t([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # first row: degenerate conf 0 (argmax 0)
    labels = lab([1, 0, 0])
    rb = M.reliability_bins(probs, labels, n_bins=15)
    assert rb["count"][0] == 1 and rb["count"][14] == 2
    # bin 0: |0 - 0| ; last bin: |1 - 2| -> ECE 1/3
    assert M.ece(probs, labels) == pytest.approx(1 / 3, abs=1e-12)
    assert M.ece(t([[1.0, 0.0]]), lab([0])) == 0.0
    assert M.ece(t([[1.0, 0.0]]), lab([1])) == 1.0


def test_ece_freetickets_uses_14_bins():
    # conf 0.5 (wrong) and 0.52 (correct): 14 bins put them in bins 6 = (6/14, 7/14] and 7,
    # 15 bins put both in bin 7.
    probs = t([[0.5, 0.5], [0.52, 0.48]])
    labels = lab([1, 0])
    assert M.ece_freetickets(probs, labels) == pytest.approx((0.5 + 0.48) / 2, abs=1e-12)
    assert M.ece(probs, labels) == pytest.approx(abs(1 - 1.02) / 2, abs=1e-12)


def _ece_original_loop(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The original's procedure as described in the reference (edges linspace(0, 1, 15), (lo, hi])."""
    conf, pred = probs.max(1)
    correct = pred.eq(labels).double()
    edges = torch.linspace(0, 1, 15, dtype=torch.float64)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        prop = in_bin.double().mean()
        if prop > 0:
            total += float(torch.abs(conf[in_bin].mean() - correct[in_bin].mean()) * prop)
    return total


def test_ece_freetickets_matches_original_procedure_on_random_data():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(2000, 10, generator=g, dtype=torch.float64) * 2, 1)
    labels = torch.randint(0, 10, (2000,), generator=g)
    assert M.ece_freetickets(probs, labels) == pytest.approx(_ece_original_loop(probs, labels), abs=1e-12)


@pytest.mark.parametrize("n_bins", [1, 5, 14, 15, 100])
def test_ece_matches_torchmetrics(n_bins):
    """torchmetrics bins [lo, hi) where we bin (lo, hi]; random confidences never sit on an edge."""
    mc = pytest.importorskip("torchmetrics.classification")
    g = torch.Generator().manual_seed(7)
    probs = torch.softmax(torch.randn(3000, 10, generator=g, dtype=torch.float64) * 2.5, 1)
    labels = torch.randint(0, 10, (3000,), generator=g)
    ref = mc.MulticlassCalibrationError(num_classes=10, n_bins=n_bins, norm="l1")(probs.float(), labels)
    assert M.ece(probs, labels, n_bins) == pytest.approx(float(ref), abs=1e-5)
    ref14 = mc.MulticlassCalibrationError(num_classes=10, n_bins=14, norm="l1")(probs.float(), labels)
    assert M.ece_freetickets(probs, labels) == pytest.approx(float(ref14), abs=1e-5)


def test_pooled_ece_from_bin_sums_equals_ece_of_union():
    g = torch.Generator().manual_seed(2)
    p1 = torch.softmax(torch.randn(300, 5, generator=g, dtype=torch.float64), 1)
    p2 = torch.softmax(torch.randn(200, 5, generator=g, dtype=torch.float64) * 4, 1)
    y1, y2 = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 5, (200,), generator=g)
    s1, s2 = M.ece_bin_sums(p1, y1), M.ece_bin_sums(p2, y2)
    pooled = {k: s1[k] + s2[k] for k in s1}
    assert M.ece_from_bin_sums(pooled) == pytest.approx(M.ece(torch.cat([p1, p2]), torch.cat([y1, y2])), abs=1e-12)
    # pooled ECE never exceeds the count-weighted mean of per-cell ECEs (triangle inequality)
    weighted = (300 * M.ece(p1, y1) + 200 * M.ece(p2, y2)) / 500
    assert M.ece_from_bin_sums(pooled) <= weighted + 1e-12


# --------------------------------------------------------------------------- diversity
def test_disagreement_hand_computed():
    preds = torch.tensor([[0, 1, 2, 0], [0, 1, 1, 0], [1, 1, 1, 1]])
    d = M.disagreement_matrix(preds)
    expected = t([[0, 0.25, 0.75], [0.25, 0, 0.5], [0.75, 0.5, 0]])
    assert torch.equal(d, expected)
    assert M.mean_over_pairs(d) == pytest.approx(0.5, abs=1e-12)  # (0.25 + 0.75 + 0.5) / 3, no +0.001


def test_disagreement_symmetric_zero_diagonal_from_probabilities():
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(5, 100, 4, generator=g), 2)
    d = M.disagreement_matrix(probs)
    assert torch.equal(d, d.T)
    assert torch.equal(d.diagonal(), torch.zeros(5, dtype=torch.float64))
    assert ((d >= 0) & (d <= 1)).all()


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_kl_matrix_m3_hand_computed():
    ps = [[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]
    lp = torch.stack([t([p]).log() for p in ps])  # (3, 1, 2)
    k = M.kl_matrix(lp)
    for a in range(3):
        for b in range(3):
            ref = 0.0 if a == b else _kl(ps[b], ps[a])  # K[a, b] = KL(p_b || p_a)
            assert k[a, b].item() == pytest.approx(ref, abs=1e-12)
    pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
    assert M.mean_pairwise_kl(lp) == pytest.approx(sum(_kl(ps[b], ps[a]) for a, b in pairs) / 6, abs=1e-12)
    sym = M.symmetric_kl_matrix(lp)
    assert sym[0, 1].item() == pytest.approx((_kl(ps[0], ps[1]) + _kl(ps[1], ps[0])) / 2, abs=1e-12)
    assert M.mean_over_pairs(sym) == pytest.approx(M.mean_pairwise_kl(lp), abs=1e-12)


def test_symmetric_and_mean_kl_accept_the_computed_matrix():
    g = torch.Generator().manual_seed(9)
    lp = torch.log_softmax(torch.randn(4, 30, 5, generator=g, dtype=torch.float64), 2)
    k = M.kl_matrix(lp)
    assert torch.equal(M.symmetric_kl_matrix(k), M.symmetric_kl_matrix(lp))
    assert M.mean_pairwise_kl(k) == M.mean_pairwise_kl(lp)


def test_kl_matrix_m4_two_samples_matches_original_kl_div_convention():
    ps = [[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]],
          [[0.3, 0.3, 0.4], [0.2, 0.5, 0.3]],
          [[0.6, 0.3, 0.1], [0.05, 0.05, 0.9]],
          [[0.1, 0.8, 0.1], [0.4, 0.4, 0.2]]]
    lp = t(ps).log()  # (4, 2, 3)
    k = M.kl_matrix(lp)
    assert k.shape == (4, 4)
    for a in range(4):
        for b in range(4):
            hand = 0.0 if a == b else (_kl(ps[b][0], ps[a][0]) + _kl(ps[b][1], ps[a][1])) / 2
            assert k[a, b].item() == pytest.approx(hand, abs=1e-12)
            # the original: F.kl_div(log-probs of a, probs of b, reduction="batchmean")
            orig = F.kl_div(lp[a], lp[b].exp(), reduction="batchmean").item()
            assert k[a, b].item() == pytest.approx(orig, abs=1e-12)
    assert M.mean_pairwise_kl(lp) == pytest.approx(float(k.sum() / 12), abs=1e-12)


def test_mean_over_pairs_needs_two_members():
    with pytest.raises(ValueError):
        M.mean_over_pairs(torch.zeros(1, 1))


def test_entropy_and_mutual_information():
    assert M.predictive_entropy(t([[0.5, 0.5]]))[0].item() == pytest.approx(math.log(2))
    assert M.predictive_entropy(t([[1.0, 0.0]]))[0].item() == 0.0
    members = t([[[1.0, 0.0]], [[0.0, 1.0]]])  # confident, disagreeing members
    assert M.mutual_information(members)[0].item() == pytest.approx(math.log(2))
    assert M.expected_entropy(members)[0].item() == 0.0


# --------------------------------------------------------------------------- OoD
def test_ood_metrics_hand_computed():
    s_in = [0.1, 0.2, 0.3, 0.4]
    s_out = [0.35, 0.5, 0.6, 0.7]
    r = M.ood_metrics(t(s_in), t(s_out))
    assert r["auroc"] == pytest.approx(15 / 16)
    # detect all 4 OoD (TPR 1 >= 0.95) -> threshold 0.35 -> ID 0.4 flagged: FPR 1/4
    assert r["fpr95_oodpos"] == pytest.approx(0.25)
    # accept all 4 ID -> OoD 0.35 accepted: 1/4
    assert r["fpr95_idpos"] == pytest.approx(0.25)
    # OoD positive ranking: 0.7 0.6 0.5 (P=1,1,1) 0.4 (ID) 0.35 (P 4/5): AP = (1+1+1+0.8)/4
    assert r["aupr_out"] == pytest.approx((3 + 0.8) / 4)
    # ID positive, ranking by -score: 0.1 0.2 0.3 (P=1) 0.35 (OoD) 0.4 (P 4/5)
    assert r["aupr_in"] == pytest.approx((3 + 0.8) / 4)


def _auroc_by_pairs(s_in: np.ndarray, s_out: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic: P(OoD score > ID score) + P(tie) / 2, over every pair."""
    diff = s_out[:, None] - s_in[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _average_precision_by_rank(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mean over positives of the precision among the samples scored at least as high (no ties here)."""
    return float(np.mean([((pos >= p).sum()) / ((pos >= p).sum() + (neg >= p).sum()) for p in pos]))


def test_ood_metrics_against_independent_definitions():
    rng = np.random.default_rng(4)
    s_in = rng.normal(0, 1, 500)
    s_out = rng.normal(1.2, 1.3, 300)
    r = M.ood_metrics(torch.from_numpy(s_in), torch.from_numpy(s_out))
    assert r["auroc"] == pytest.approx(_auroc_by_pairs(s_in, s_out), abs=1e-12)
    assert r["aupr_out"] == pytest.approx(_average_precision_by_rank(s_out, s_in), abs=1e-12)
    assert r["aupr_in"] == pytest.approx(_average_precision_by_rank(-s_in, -s_out), abs=1e-12)
    # FPR95 (OoD positive): the smallest threshold keeping >= 95% of OoD, fraction of ID above it
    thr = np.sort(s_out)[int(np.floor(0.05 * 300))]
    assert (s_out >= thr).mean() >= 0.95
    assert r["fpr95_oodpos"] == pytest.approx((s_in >= thr).mean(), abs=1e-12)
    # swapping the roles (ID positive, score negated)
    thr_in = np.sort(-s_in)[int(np.floor(0.05 * 500))]
    assert r["fpr95_idpos"] == pytest.approx((-s_out >= thr_in).mean(), abs=1e-12)


def test_auroc_hand_computed_with_ties():
    # pairs (out, in): 0.5 vs {0.1, 0.5}: 1 + 0.5 ; 0.9 vs both: 2 -> 3.5 / 4
    r = M.ood_metrics(t([0.1, 0.5]), t([0.5, 0.9]))
    assert r["auroc"] == pytest.approx(3.5 / 4, abs=1e-12)
    assert M.ood_metrics(t([0.0, 0.1]), t([0.2, 0.3]))["auroc"] == 1.0
    assert M.ood_metrics(t([0.2, 0.3]), t([0.0, 0.1]))["auroc"] == 0.0


def test_ood_scores():
    lp = t([[[0.9, 0.1], [0.5, 0.5]], [[0.1, 0.9], [0.5, 0.5]]]).log()
    msp = M.ood_scores("msp", lp)
    assert msp.tolist() == pytest.approx([-0.5, -0.5])
    ent = M.ood_scores("entropy", lp)
    assert ent.tolist() == pytest.approx([math.log(2), math.log(2)])
    mi = M.ood_scores("mi", lp)
    assert mi[0].item() > 0 and mi[1].item() == pytest.approx(0.0, abs=1e-12)
    logits = t([[[1.0, 2.0]], [[3.0, 0.0]]])
    assert M.ood_scores("energy", lp[:, :1], logits).item() == pytest.approx(-math.log(math.exp(2) + math.exp(1)))
    with pytest.raises(ValueError):
        M.ood_scores("nope", lp)


# --------------------------------------------------------------------------- masks and summaries
def test_mask_overlap():
    a = {"w": torch.tensor([1, 1, 0, 0], dtype=torch.bool), "v": torch.tensor([[True, False]])}
    b = {"w": torch.tensor([1, 0, 1, 0], dtype=torch.bool), "v": torch.tensor([[True, False]])}
    r = M.mask_overlap(a, b)
    # intersection: w 1 + v 1 = 2 ; union: w 3 + v 1 = 4 ; differ: 2 of 6
    assert r["jaccard"] == pytest.approx(0.5)
    assert r["hamming"] == pytest.approx(2 / 6)
    assert r["hamming_count"] == 2
    assert M.mask_overlap(a, a)["jaccard"] == 1.0 and M.mask_overlap(a, a)["hamming"] == 0.0
    with pytest.raises(ValueError):
        M.mask_overlap(a, {"w": a["w"]})


def test_mean_std():
    assert M.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert M.mean_std([5.0]) == (5.0, 0.0)
