"""The ``disagreement`` and ``KD`` modes: how differently the members predict, and how their masks overlap."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from . import metrics as Mx
from .records import ModeResult

__all__ = ["disagreement", "kd", "mask_overlaps"]


def _matrix_table(names: Sequence[str], matrix: torch.Tensor) -> tuple[list[str], list[list]]:
    header = ["member"] + [str(i) for i in range(len(names))]
    return header, [[f"{i}: {names[i]}"] + [float(v) for v in matrix[i]] for i in range(len(names))]


def mask_overlaps(masks: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor] | None:
    """Pairwise Jaccard and Hamming matrices and each member's density; None unless every member has
    masks on the same layers (dense tickets have none)."""
    if not (all(masks) and all(set(m) == set(masks[0]) for m in masks)):
        return None
    m = len(masks)
    jac = torch.eye(m, dtype=torch.float64)
    ham = torch.zeros(m, m, dtype=torch.float64)
    density = torch.tensor([sum(int(v.sum()) for v in mk.values()) / sum(v.numel() for v in mk.values())
                            for mk in masks], dtype=torch.float64)
    for i in range(m):
        for j in range(i + 1, m):
            ov = Mx.mask_overlap(masks[i], masks[j])
            jac[i, j] = jac[j, i] = ov["jaccard"]
            ham[i, j] = ham[j, i] = ov["hamming"]
    return {"jaccard": jac, "hamming": ham, "density": density}


def disagreement(names: Sequence[str], log_probs: torch.Tensor, labels: torch.Tensor,
                 masks: Sequence[Mapping[str, torch.Tensor]], dataset: str, title: str) -> ModeResult:
    """Pairwise top-1 disagreement (and its ratio to the members' mean error), plus mask overlap."""
    res = ModeResult("disagreement", dataset)
    m = len(names)
    d = Mx.disagreement_matrix(log_probs)
    extra: dict = {"members": list(names), "disagreement": d.tolist()}
    summary = []
    for i in range(m):
        for j in range(i + 1, m):
            res.row(f"{names[i]}|{names[j]}", "disagreement", float(d[i, j]))
    mean_d = Mx.mean_over_pairs(d)
    err = 1.0 - Mx.mean_std([Mx.accuracy(log_probs[i], labels) for i in range(m)])[0]
    res.row("pairs_mean", "disagreement", mean_d)
    summary.append(["pairs_mean", "disagreement", mean_d])
    if err > 0:
        res.row("pairs_mean", "disagreement_over_error", mean_d / err)
        summary.append(["pairs_mean", "disagreement_over_error", mean_d / err])
    ov = mask_overlaps(masks)
    if ov is not None:
        jac, ham = ov["jaccard"], ov["hamming"]
        for i in range(m):
            res.row(names[i], "mask_density", float(ov["density"][i]))
        for i in range(m):
            for j in range(i + 1, m):
                res.row(f"{names[i]}|{names[j]}", "mask_jaccard", float(jac[i, j]))
                res.row(f"{names[i]}|{names[j]}", "mask_hamming", float(ham[i, j]))
        mj, mh = Mx.mean_over_pairs(jac), Mx.mean_over_pairs(ham)
        res.row("pairs_mean", "mask_jaccard", mj)
        res.row("pairs_mean", "mask_hamming", mh)
        summary += [["pairs_mean", "mask_jaccard", mj], ["pairs_mean", "mask_hamming", mh]]
        extra["mask_jaccard"], extra["mask_hamming"] = jac.tolist(), ham.tolist()
    else:
        res.notes.append("note: mask overlap needs sparse tickets with masks on the same layers; skipped")
    res.extras = extra
    res.table(f"disagreement: pairwise top-1 disagreement matrix (M={m}, no offset)", *_matrix_table(names, d))
    panels = [{"matrix": d.tolist(), "title": f"prediction disagreement (mean {mean_d:.4f})", "cmap": "RdBu_r",
               "colorbar": "fraction of test images predicted differently"}]
    if ov is not None:
        res.table("disagreement: mask Jaccard overlap matrix", *_matrix_table(names, ov["jaccard"]))
        panels.append({"matrix": ov["jaccard"].tolist(), "title": f"mask Jaccard overlap (mean {mj:.4f})",
                       "cmap": "viridis", "colorbar": "|A and B| / |A or B| of the active weights"})
    res.table("disagreement: summary", ["member", "metric", "value"], summary)
    res.figure("disagreement", "disagreement", "heatmaps", members=list(names), panels=panels,
               title=f"{title}: pairwise diversity on the {dataset} test set")
    return res


def kd(names: Sequence[str], log_probs: torch.Tensor, dataset: str, title: str) -> ModeResult:
    """KL(p_b || p_a) for every ordered pair (computed once), its symmetrisation, and the ensemble's
    mutual information, expected entropy and predictive entropy."""
    res = ModeResult("KD", dataset)
    m = len(names)
    k = Mx.kl_matrix(log_probs)
    sym = Mx.symmetric_kl_matrix(k)
    for a in range(m):
        for b in range(m):
            if a != b:
                res.row(f"{names[b]}||{names[a]}", "kl", float(k[a, b]))
    mean_kl = Mx.mean_pairwise_kl(k)
    mean_sym = Mx.mean_over_pairs(sym)
    p = log_probs.exp()
    mi = float(Mx.mutual_information(p).mean())
    ee = float(Mx.expected_entropy(p).mean())
    pe = float(Mx.predictive_entropy(Mx.ensemble_probs(p)).mean())
    summary = [["pairs_mean", "kl", mean_kl], ["pairs_mean", "kl_symmetric", mean_sym],
               ["ensemble", "mutual_information", mi], ["ensemble", "expected_entropy", ee],
               ["ensemble", "predictive_entropy", pe]]
    for member, metric, v in summary:
        res.row(member, metric, v)
    res.extras = {"members": list(names), "kl": k.tolist(), "kl_symmetric": sym.tolist(),
                  "convention": "kl[a][b] = mean over test samples of KL(p_b || p_a)"}
    res.table(f"KD: KL(p_col || p_row) matrix over the test set (M={m}, every ordered pair)", *_matrix_table(names, k))
    res.table("KD: summary", ["member", "metric", "value"], summary)
    res.figure("KD", "kl", "kl", members=list(names), matrix=k.tolist(), mean=mean_kl,
               title=f"{title}: KL(p_b || p_a) on the {dataset} test set, mean {mean_kl:.4f}")
    return res
