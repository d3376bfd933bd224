"""The ``predict`` and ``calibration`` modes: accuracy, NLL, ECE and Brier of members and ensembles.

Both take member log-probabilities on the test set (M, N, C) and return a
:class:`~sparselearning.evaluation.records.ModeResult`; nothing here prints or writes.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import metrics as Mx
from .records import ModeResult

__all__ = ["predict", "calibration"]


def _first_k_curve(res: ModeResult, log_probs: torch.Tensor, labels: torch.Tensor, bins: int) -> dict:
    """Accuracy, NLL and ECE of the ensemble of the first k members, k = 1..M (rows, table, curve)."""
    ece_name = f"ece{bins}"
    curve = {"k": [], "acc": [], "nll": [], "ece": []}
    table = []
    for k in range(1, log_probs.shape[0] + 1):
        ek = Mx.ensemble_log_probs(log_probs[:k])
        a, n, c = Mx.accuracy(ek, labels), Mx.nll(ek, labels), Mx.ece(ek.exp(), labels, bins)
        res.row(f"ensemble_first_{k}", "acc", a)
        res.row(f"ensemble_first_{k}", "nll", n)
        res.row(f"ensemble_first_{k}", ece_name, c)
        table.append([f"ensemble_first_{k}", a, n, c])
        for key, v in (("k", k), ("acc", a), ("nll", n), ("ece", c)):
            curve[key].append(v)
    res.table("predict: ensembles of the first k members", ["member", "acc", "nll", ece_name], table)
    return curve


def predict(names: Sequence[str], log_probs: torch.Tensor, labels: torch.Tensor, dataset: str, title: str,
            ece_bins: int = 15) -> ModeResult:
    """Member, members' mean/std, ensemble and first-k ensemble accuracy and NLL (+ the first-k ECE)."""
    res = ModeResult("predict", dataset)
    m = len(names)
    accs = [Mx.accuracy(log_probs[i], labels) for i in range(m)]
    nlls = [Mx.nll(log_probs[i], labels) for i in range(m)]
    table = []
    for name, a, n in zip(names, accs, nlls):
        res.row(name, "acc", a)
        res.row(name, "nll", n)
        table.append([name, a, n])
    for label, j in (("members_mean", 0), ("members_std", 1)):
        a, n = Mx.mean_std(accs)[j], Mx.mean_std(nlls)[j]
        res.row(label, "acc", a)
        res.row(label, "nll", n)
        table.append([label, a, n])
    ens = Mx.ensemble_log_probs(log_probs)
    ea, en = Mx.accuracy(ens, labels), Mx.nll(ens, labels)
    res.row("ensemble", "acc", ea)
    res.row("ensemble", "nll", en)
    table.append(["ensemble", ea, en])
    res.table(f"predict: {dataset} test, N={labels.shape[0]}, M={m} (ensemble = mean of probabilities)",
              ["member", "acc", "nll"], table)
    curve = _first_k_curve(res, log_probs, labels, ece_bins)
    if m >= 2:  # one member has no curve to draw
        member_ece = [Mx.ece(log_probs[i].exp(), labels, ece_bins) for i in range(m)]
        res.figure("ensemble_size", "ensemble_size", "ensemble_size", curve=curve, ece_bins=ece_bins,
                   members_mean={"acc": Mx.mean_std(accs)[0], "nll": Mx.mean_std(nlls)[0],
                                 "ece": Mx.mean_std(member_ece)[0]},
                   title=f"{title}, {dataset} test: ensembles of the first k tickets")
    return res


def calibration(names: Sequence[str], log_probs: torch.Tensor, labels: torch.Tensor, dataset: str, title: str,
                ece_bins: int = 15) -> ModeResult:
    """ECE (``ece<B>`` and the original's ``ece_ft14``), NLL and Brier; reliability bins in the extras."""
    res = ModeResult("calibration", dataset)
    b = ece_bins
    cols = ["acc", f"ece{b}", "ece_ft14", "nll", "brier"]

    def stats(logp: torch.Tensor) -> list[float]:
        p = logp.exp()
        return [Mx.accuracy(logp, labels), Mx.ece(p, labels, b), Mx.ece_freetickets(p, labels), Mx.nll(logp, labels),
                Mx.brier(p, labels)]

    table, per = [], []
    for i, name in enumerate(names):
        s = stats(log_probs[i])
        per.append(s)
        table.append([name] + s)
        for c, v in zip(cols, s):
            res.row(name, c, v)
    for label, k in (("members_mean", 0), ("members_std", 1)):
        vals = [Mx.mean_std([s[j] for s in per])[k] for j in range(len(cols))]
        table.append([label] + vals)
        for c, v in zip(cols, vals):
            res.row(label, c, v)
    ens = Mx.ensemble_log_probs(log_probs)
    s = stats(ens)
    table.append(["ensemble"] + s)
    for c, v in zip(cols, s):
        res.row("ensemble", c, v)
    res.table(f"calibration: ECE ({b} equal-width bins, top-label; ece_ft14 = original code's 14 bins), NLL, Brier",
              ["member"] + cols, table)
    rel = {"ensemble": Mx.reliability_bins(ens.exp(), labels, b)}
    for i, name in enumerate(names):
        rel[name] = Mx.reliability_bins(log_probs[i].exp(), labels, b)
    res.extras = {"ece_bins": b, "reliability": rel}
    res.figure("reliability", "reliability", "reliability", reliability=rel, members=list(names), ece_bins=b,
               ensemble_ece=s[1], title=f"{title}, {dataset} test: reliability (ensemble ECE {s[1]:.4f})")
    return res
