"""The ``ood`` mode: how well each score separates the test set (ID) from each OoD set."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from . import metrics as Mx
from .config import OOD_METRICS
from .records import ModeResult

__all__ = ["ood"]


def _set_rows(res: ModeResult, names: Sequence[str], set_name: str, score: str, id_logits: torch.Tensor,
              id_lp: torch.Tensor, o_logits: torch.Tensor, o_lp: torch.Tensor) -> tuple[list, tuple]:
    """Rows of one (OoD set, score): each member, members' mean/std (not for mi) and the ensemble."""
    split = f"ood:{set_name}"
    table, per_member = [], []
    if score != "mi":  # mutual information is identically 0 for a single model
        for i, mname in enumerate(names):
            r = Mx.ood_metrics(Mx.ood_scores(score, id_lp[i:i + 1], id_logits[i:i + 1]),
                               Mx.ood_scores(score, o_lp[i:i + 1], o_logits[i:i + 1]))
            per_member.append(r)
            for mt in OOD_METRICS:
                res.row(mname, f"{score}_{mt}", r[mt], split=split)
            table.append([set_name, score, mname] + [r[mt] for mt in OOD_METRICS])
        for label, j in (("members_mean", 0), ("members_std", 1)):
            vals = [Mx.mean_std([r[mt] for r in per_member])[j] for mt in OOD_METRICS]
            for mt, v in zip(OOD_METRICS, vals):
                res.row(label, f"{score}_{mt}", v, split=split)
            table.append([set_name, score, label] + vals)
    s_in = Mx.ood_scores(score, id_lp, id_logits)
    s_out = Mx.ood_scores(score, o_lp, o_logits)
    r = Mx.ood_metrics(s_in, s_out)
    for mt in OOD_METRICS:
        res.row("ensemble", f"{score}_{mt}", r[mt], split=split)
    table.append([set_name, score, "ensemble"] + [r[mt] for mt in OOD_METRICS])
    return table, (s_in.tolist(), s_out.tolist(), r["auroc"])


def ood(names: Sequence[str], id_logits: torch.Tensor, ood_logits: Mapping[str, torch.Tensor],
        scores: Sequence[str], dataset: str, title: str, skipped: Sequence[str] = ()) -> ModeResult:
    """Detection metrics per OoD set and score, for each member and the ensemble.

    ``id_logits``: (M, N, C) on the test set; ``ood_logits``: {set name: (M, N', C)}; ``skipped``:
    notes on default OoD sets that could not be loaded (recorded in the extras).
    """
    res = ModeResult("ood", dataset)
    id_lp = Mx.log_probs_from_logits(id_logits)
    scores = list(scores)
    table = []
    roc = {}
    for set_name, o_logits in ood_logits.items():
        o_lp = Mx.log_probs_from_logits(o_logits)
        for score in scores:
            rows, curve = _set_rows(res, names, set_name, score, id_logits, id_lp, o_logits, o_lp)
            table += rows
            if score == scores[0]:
                roc[set_name] = curve
    res.extras = {"sets": list(ood_logits), "scores": scores, "positive_class": "OoD",
                  "notes": "auroc is the same for either positive class; aupr_in: ID positive; "
                           "aupr_out and fpr95_oodpos: OoD positive; fpr95_idpos: ID positive",
                  "skipped": list(skipped)}
    res.table(f"ood: {dataset} test (ID) vs each OoD set; OoD is the positive class unless named",
              ["set", "score", "member"] + list(OOD_METRICS), table)
    res.figure("ood", "ood", "ood", roc=roc, score=scores[0], dataset=dataset,
               title=f"{title}: ensemble OoD detection ({dataset} test = ID)")
    return res
