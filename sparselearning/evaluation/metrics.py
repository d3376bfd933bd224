"""Evaluation metrics for classifiers and their ensembles: small pure functions over tensors.

Conventions (each defined once, here):

* ``probs`` are class probabilities shaped (N, C); ``log_probs`` are their logarithms, normally from
  ``torch.log_softmax(logits, -1)``; member stacks are shaped (M, N, C); ``labels`` are int64 (N,).
* The ensemble averages member **probabilities** (never logits); its log-probabilities are computed
  stably as ``logsumexp_m(log p_m) - log M`` (:func:`ensemble_log_probs`).
* Scalars come back as Python floats; every metric is a fraction (not a percentage).
* ECE is top-label, L1, count-weighted, over ``n_bins`` equal-width bins with intervals (lo, hi]; a
  confidence of exactly 0 goes to the first bin and 1.0 to the last bin. The default is 15 bins.
  :func:`ece_freetickets` is the original FreeTickets code's variant: ``linspace(0, 1, 15)`` edges, i.e.
  14 bins of width 1/14 (top-label confidences are >= 1/C > 0, so the original's dropping of an exact
  0 never matters).
* Disagreement is the plain fraction of differing top-1 predictions (the original added 0.001).
* ``kl_matrix[a, b] = KL(p_b || p_a)`` averaged over samples, for every ordered pair (the original's
  convention, there computed only for three members).
* OoD detection treats OoD as the positive class unless a key says otherwise: ``auroc`` (the same for
  either positive class), ``aupr_out`` (OoD positive), ``aupr_in`` (in-distribution positive, score
  negated), ``fpr95_oodpos`` (fraction of ID samples flagged when 95% of OoD samples are detected) and
  ``fpr95_idpos`` (fraction of OoD samples accepted when 95% of ID samples are accepted).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

__all__ = [
    "log_probs_from_logits", "accuracy", "nll", "ensemble_log_probs", "ensemble_probs", "brier",
    "ece", "ece_freetickets", "ece_bin_sums", "ece_from_bin_sums", "reliability_bins",
    "predictions", "disagreement_matrix", "mean_over_pairs",
    "kl_matrix", "symmetric_kl_matrix", "mean_pairwise_kl", "predictive_entropy", "expected_entropy",
    "mutual_information", "ood_scores", "ood_metrics", "mask_overlap", "mean_std",
]


# --------------------------------------------------------------------------- basic
def log_probs_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities in float64 (stable), for logits shaped (..., C)."""
    return torch.log_softmax(logits.double(), dim=-1)


def _check_labels(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"expected (N, C) scores, got shape {tuple(scores.shape)}")
    if labels.dim() != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match scores {tuple(scores.shape)}")


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of (N, C) probabilities, log-probabilities or logits (argmax is the same)."""
    _check_labels(scores, labels)
    if scores.shape[0] == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((scores.argmax(dim=1) == labels).double().mean())


def nll(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood -1/N sum_i log p_i(y_i), from (N, C) log-probabilities."""
    _check_labels(log_probs, labels)
    picked = log_probs.double().gather(1, labels.long().view(-1, 1)).squeeze(1)
    return float(-picked.mean())


def ensemble_log_probs(member_log_probs: torch.Tensor) -> torch.Tensor:
    """log of the mean member probability: logsumexp over members of log p_m, minus log M.

    (M, N, C) -> (N, C), float64. Equal to ``log(mean_m exp(log p_m))`` but never underflows.
    """
    if member_log_probs.dim() != 3:
        raise ValueError(f"expected (M, N, C) member log-probabilities, got {tuple(member_log_probs.shape)}")
    m = member_log_probs.shape[0]
    return torch.logsumexp(member_log_probs.double(), dim=0) - math.log(m)


def ensemble_probs(member_probs: torch.Tensor) -> torch.Tensor:
    """Mean of member probabilities, (M, N, C) -> (N, C)."""
    if member_probs.dim() != 3:
        raise ValueError(f"expected (M, N, C) member probabilities, got {tuple(member_probs.shape)}")
    return member_probs.double().mean(dim=0)


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Brier score summed over classes, averaged over samples: 1/N sum_i sum_c (p_ic - 1[c = y_i])^2."""
    _check_labels(probs, labels)
    p = probs.double()
    onehot = torch.zeros_like(p)
    onehot.scatter_(1, labels.long().view(-1, 1), 1.0)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


# --------------------------------------------------------------------------- calibration
def _edges(n_bins: int) -> torch.Tensor:
    """Bin edges i / n_bins, each correctly rounded (so 0.6 is exactly the double nearest 3/5)."""
    return torch.arange(n_bins + 1, dtype=torch.float64) / n_bins


def _bin_index(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin of each confidence for n_bins equal-width bins (lo, hi]; 0 -> first bin, 1 -> last bin."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = _edges(n_bins)
    # bucketize(right=False) returns i with edges[i-1] < x <= edges[i]: exactly the (lo, hi] rule.
    idx = torch.bucketize(confidence.double().clamp(0.0, 1.0), edges, right=False) - 1
    return idx.clamp(0, n_bins - 1)


def ece_bin_sums(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, torch.Tensor]:
    """Per-bin sufficient statistics of top-label calibration: counts, sum of confidences, sum of hits.

    Sums from several subsets (e.g. corruption cells) can be added and passed to
    :func:`ece_from_bin_sums` to get the ECE of their union (the "pooled" ECE).
    """
    _check_labels(probs, labels)
    p = probs.double()
    conf, pred = p.max(dim=1)
    correct = (pred == labels).double()
    idx = _bin_index(conf, n_bins)
    counts = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, torch.ones_like(conf))
    sum_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    sum_correct = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    return {"count": counts, "sum_conf": sum_conf, "sum_correct": sum_correct}


def ece_from_bin_sums(sums: Mapping[str, torch.Tensor]) -> float:
    """ECE = 1/N sum_b |sum_{i in b} (correct_i - conf_i)| from :func:`ece_bin_sums` output."""
    total = float(sums["count"].sum())
    if total == 0:
        raise ValueError("ECE of an empty set is undefined")
    return float((sums["sum_correct"] - sums["sum_conf"]).abs().sum() / total)


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (top-label, L1, count-weighted, equal-width bins (lo, hi])."""
    return ece_from_bin_sums(ece_bin_sums(probs, labels, n_bins))


def ece_freetickets(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """ECE as the original FreeTickets code computes it: edges linspace(0, 1, 15), i.e. 14 bins."""
    return ece(probs, labels, n_bins=14)


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, list]:
    """Reliability-diagram statistics per bin: edges, count, mean confidence, accuracy (None if empty)."""
    sums = ece_bin_sums(probs, labels, n_bins)
    count = sums["count"]
    nonempty = count > 0
    conf = torch.where(nonempty, sums["sum_conf"] / count.clamp(min=1), torch.nan)
    acc = torch.where(nonempty, sums["sum_correct"] / count.clamp(min=1), torch.nan)
    to_list = lambda t: [None if math.isnan(v) else float(v) for v in t.tolist()]  # noqa: E731
    return {
        "edges": _edges(n_bins).tolist(),
        "count": [int(c) for c in count.tolist()],
        "confidence": to_list(conf),
        "accuracy": to_list(acc),
    }


# --------------------------------------------------------------------------- diversity
def predictions(member_scores: torch.Tensor) -> torch.Tensor:
    """Top-1 predictions (M, N) from (M, N, C) scores; (M, N) integer input is returned as is."""
    if member_scores.dim() == 3:
        return member_scores.argmax(dim=2)
    if member_scores.dim() == 2 and not member_scores.is_floating_point():
        return member_scores
    raise ValueError(f"expected (M, N, C) scores or (M, N) predictions, got {tuple(member_scores.shape)}")


def disagreement_matrix(member_scores: torch.Tensor) -> torch.Tensor:
    """D[i, j] = fraction of samples whose top-1 predictions of members i and j differ. (M, M), float64.

    Symmetric with a zero diagonal; no offset is added.
    """
    pred = predictions(member_scores)
    differ = pred.unsqueeze(1) != pred.unsqueeze(0)  # (M, M, N)
    return differ.double().mean(dim=2)


def mean_over_pairs(matrix: torch.Tensor, ordered: bool = False) -> float:
    """Mean of the off-diagonal entries (ordered pairs) or of the upper triangle (unordered pairs)."""
    m = matrix.shape[0]
    if matrix.dim() != 2 or matrix.shape[1] != m:
        raise ValueError(f"expected a square matrix, got {tuple(matrix.shape)}")
    if m < 2:
        raise ValueError("a mean over pairs needs at least 2 members")
    mask = ~torch.eye(m, dtype=torch.bool) if ordered else torch.ones(m, m, dtype=torch.bool).triu(1)
    return float(matrix.double()[mask].mean())


def kl_matrix(member_log_probs: torch.Tensor) -> torch.Tensor:
    """K[a, b] = 1/N sum_i KL(p_b,i || p_a,i) for every ordered pair, from (M, N, C) log-probabilities.

    This is the original FreeTickets "KD" convention (PyTorch ``kl_div(out_a, out_b)`` with batchmean),
    generalised from three members to any M. The diagonal is zero.
    """
    if member_log_probs.dim() != 3:
        raise ValueError(f"expected (M, N, C) log-probabilities, got {tuple(member_log_probs.shape)}")
    lp = member_log_probs.double()
    p = lp.exp()
    m = lp.shape[0]
    out = torch.zeros(m, m, dtype=torch.float64)
    for a in range(m):
        for b in range(m):
            if a != b:
                out[a, b] = (p[b] * (lp[b] - lp[a])).sum(dim=1).mean()
    return out


def _kl_of(kl_or_log_probs: torch.Tensor) -> torch.Tensor:
    """A KL matrix (M, M) as given, or computed from (M, N, C) log-probabilities."""
    return kl_or_log_probs if kl_or_log_probs.dim() == 2 else kl_matrix(kl_or_log_probs)


def symmetric_kl_matrix(kl_or_log_probs: torch.Tensor) -> torch.Tensor:
    """(K + K^T) / 2: the symmetrised KL (half the Jeffreys divergence) per pair.

    Pass the (M, M) matrix of :func:`kl_matrix` when it is already computed (it is then not recomputed),
    or (M, N, C) log-probabilities.
    """
    k = _kl_of(kl_or_log_probs)
    return (k + k.T) / 2


def mean_pairwise_kl(kl_or_log_probs: torch.Tensor) -> float:
    """Mean of KL(p_b || p_a) over all M(M-1) ordered pairs, from a KL matrix or log-probabilities.

    Equal to the mean of the symmetrised KL over unordered pairs.
    """
    return mean_over_pairs(_kl_of(kl_or_log_probs), ordered=True)


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    p = probs.double()
    return -torch.special.xlogy(p, p).sum(dim=-1)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of (N, C) probabilities -> (N,)."""
    return _entropy(probs)


def expected_entropy(member_probs: torch.Tensor) -> torch.Tensor:
    """Mean over members of each member's predictive entropy, (M, N, C) -> (N,)."""
    return _entropy(member_probs).mean(dim=0)


def mutual_information(member_probs: torch.Tensor) -> torch.Tensor:
    """Mutual information (epistemic part) H(mean_m p_m) - mean_m H(p_m), (M, N, C) -> (N,), >= 0."""
    return (predictive_entropy(ensemble_probs(member_probs)) - expected_entropy(member_probs)).clamp(min=0.0)


# --------------------------------------------------------------------------- OoD detection
OOD_SCORES = ("msp", "entropy", "mi", "energy")


def ood_scores(kind: str, member_log_probs: torch.Tensor, member_logits: torch.Tensor | None = None) -> torch.Tensor:
    """An OoD score per sample (higher = more likely OoD) for the ensemble of the given members.

    ``msp``: -max of the mean probability; ``entropy``: entropy of the mean probability; ``mi``: mutual
    information between prediction and member; ``energy``: -logsumexp of the members' mean logits
    (needs ``member_logits``). For a single member pass a stack of one (MI is then identically 0).
    """
    if kind == "msp":
        return -ensemble_log_probs(member_log_probs).exp().max(dim=1).values
    if kind == "entropy":
        return predictive_entropy(ensemble_log_probs(member_log_probs).exp())
    if kind == "mi":
        return mutual_information(member_log_probs.double().exp())
    if kind == "energy":
        if member_logits is None:
            raise ValueError("the energy score needs logits")
        return -torch.logsumexp(member_logits.double().mean(dim=0), dim=1)
    raise ValueError(f"unknown OoD score {kind!r}; choose from {', '.join(OOD_SCORES)}")


def _fpr_at_tpr(y_true: np.ndarray, score: np.ndarray, tpr_level: float) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y_true, score, drop_intermediate=False)
    i = int(np.searchsorted(tpr, tpr_level - 1e-12, side="left"))
    return float(fpr[min(i, len(fpr) - 1)])


def ood_metrics(score_in: torch.Tensor | np.ndarray, score_out: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Detection metrics of an OoD score (higher = more OoD) on ID samples against OoD samples.

    Returns ``auroc``, ``aupr_out`` (OoD positive), ``aupr_in`` (ID positive), ``fpr95_oodpos`` and
    ``fpr95_idpos`` (see the module docstring). AUPR is scikit-learn's average precision.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    s_in = np.asarray(torch.as_tensor(score_in).double().cpu(), dtype=np.float64).ravel()
    s_out = np.asarray(torch.as_tensor(score_out).double().cpu(), dtype=np.float64).ravel()
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError("OoD metrics need at least one in-distribution and one OoD sample")
    score = np.concatenate([s_in, s_out])
    is_ood = np.concatenate([np.zeros(s_in.size, dtype=int), np.ones(s_out.size, dtype=int)])
    return {
        "auroc": float(roc_auc_score(is_ood, score)),
        "aupr_out": float(average_precision_score(is_ood, score)),
        "aupr_in": float(average_precision_score(1 - is_ood, -score)),
        "fpr95_oodpos": _fpr_at_tpr(is_ood, score, 0.95),
        "fpr95_idpos": _fpr_at_tpr(1 - is_ood, -score, 0.95),
    }


# --------------------------------------------------------------------------- masks
def mask_overlap(masks_a: Mapping[str, torch.Tensor], masks_b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Global overlap of two sets of bool masks over all masked weights (the same layer names).

    ``jaccard`` = |A and B| / |A or B|; ``hamming`` = fraction of mask positions that differ;
    ``hamming_count`` = their number; ``intersection``, ``union`` and ``total`` are counts.
    """
    if set(masks_a) != set(masks_b):
        diff = sorted(set(masks_a) ^ set(masks_b))
        raise ValueError(f"the masks cover different layers ({', '.join(diff[:3])}...)")
    inter = union = differ = total = 0
    for name in sorted(masks_a):
        a, b = masks_a[name].bool(), masks_b[name].bool()
        if a.shape != b.shape:
            raise ValueError(f"mask {name} has shapes {tuple(a.shape)} and {tuple(b.shape)}")
        inter += int((a & b).sum())
        union += int((a | b).sum())
        differ += int((a ^ b).sum())
        total += a.numel()
    if total == 0:
        raise ValueError("no masked weights to compare")
    return {
        "jaccard": inter / union if union else 1.0,
        "hamming": differ / total,
        "hamming_count": float(differ),
        "intersection": float(inter),
        "union": float(union),
        "total": float(total),
    }


# --------------------------------------------------------------------------- summaries
def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean of no values")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
