"""The ``corruption`` mode: accuracy, NLL and ECE per (corruption, severity) cell and aggregated.

Aggregates: ``mean_*`` average the cells; ``pooled_*`` pool every corrupted sample (the FreeTickets
convention), for ECE through summed bin statistics; ``*_standard15`` cover the 15 standard CIFAR-C
corruptions among those present; ``mean_all`` per severity too.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

from . import metrics as Mx
from .records import ModeResult

__all__ = ["corruption", "AGGREGATE_NOTES"]

AGGREGATE_NOTES = {"mean_all": "mean over every (corruption, severity) cell",
                   "pooled_all": "all corrupted samples pooled (FreeTickets' convention over the files present)",
                   "mean_standard15": "mean over cells of the 15 standard corruptions (UB convention)",
                   "pooled_standard15": "the 15 standard corruptions pooled"}
_SUM_KEYS = ("count", "sum_conf", "sum_correct")


def _cells(names: Sequence[str], inputs: Iterable[tuple[str, torch.Tensor, torch.Tensor, Any]], bins: int
           ) -> dict[tuple[str, int], dict[str, tuple]]:
    """{(corruption, severity): {who: (n, acc, nll, bin sums (bins), bin sums (14))}}."""
    who = list(names) + ["ensemble"]
    cells: dict[tuple[str, int], dict[str, tuple]] = {}
    for name, lp, labels, sev in inputs:
        sev_list = [sev] if isinstance(sev, int) else sorted(int(s) for s in torch.unique(sev))
        for s in sev_list:
            rows = slice(None) if isinstance(sev, int) else (sev == s)
            y = labels[rows]
            cell = {}
            stacks = list(lp[:, rows]) + [Mx.ensemble_log_probs(lp[:, rows])]
            for w, logp in zip(who, stacks):
                p = logp.exp()
                cell[w] = (int(y.shape[0]), Mx.accuracy(logp, y), Mx.nll(logp, y),
                           Mx.ece_bin_sums(p, y, bins), Mx.ece_bin_sums(p, y, 14))
            cells[(name, s)] = cell
    return cells


def _aggregate(cells: dict, per_cell: dict, keys: list, who: Sequence[str], ece_name: str) -> tuple[dict, dict]:
    """(mean over cells, pooled over all samples) per member/ensemble."""
    mean, pooled = {}, {}
    for w in who:
        mean[w] = {m: float(np.mean([per_cell[k][w][m] for k in keys])) for m in per_cell[keys[0]][w]}
        n = sum(cells[k][w][0] for k in keys)
        sb = {f: sum(cells[k][w][3][f] for k in keys) for f in _SUM_KEYS}
        s14 = {f: sum(cells[k][w][4][f] for k in keys) for f in _SUM_KEYS}
        pooled[w] = {"acc": sum(cells[k][w][0] * cells[k][w][1] for k in keys) / n,
                     "nll": sum(cells[k][w][0] * cells[k][w][2] for k in keys) / n,
                     ece_name: Mx.ece_from_bin_sums(sb), "ece_ft14": Mx.ece_from_bin_sums(s14)}
    return mean, pooled


def _emit(res: ModeResult, names: Sequence[str], w_values: dict, corruption: str, severity) -> None:
    """Rows of every member, the ensemble and the members' mean for one cell or aggregate."""
    for w, vals in w_values.items():
        for metric, v in vals.items():
            res.row(w, metric, v, split="corrupted", corruption=corruption, severity=severity)
    mm = {m: Mx.mean_std([w_values[w][m] for w in names])[0] for m in w_values["ensemble"]}
    for metric, v in mm.items():
        res.row("members_mean", metric, v, split="corrupted", corruption=corruption, severity=severity)


def _aggregates(res: ModeResult, cells: dict, per_cell: dict, who: list, ece_name: str,
                standard_names: Sequence[str]) -> tuple[list, int]:
    all_keys = list(cells)
    mean_all, pooled_all = _aggregate(cells, per_cell, all_keys, who, ece_name)
    aggregates: list[tuple[str, Any, dict]] = [("mean_all", "all", mean_all), ("pooled_all", "all", pooled_all)]
    std_keys = [k for k in all_keys if k[0] in standard_names]
    n_std = len({k[0] for k in std_keys})
    if std_keys:
        mean_std15, pooled_std15 = _aggregate(cells, per_cell, std_keys, who, ece_name)
        aggregates += [("mean_standard15", "all", mean_std15), ("pooled_standard15", "all", pooled_std15)]
        if n_std < len(standard_names):
            res.notes.append(f"note: only {n_std} of the {len(standard_names)} standard corruptions are present; "
                             f"the *_standard15 aggregates cover those")
    for s in range(1, 6):
        ks = [k for k in all_keys if k[1] == s]
        if ks:
            aggregates.append(("mean_all", s, _aggregate(cells, per_cell, ks, who, ece_name)[0]))
    return aggregates, n_std


def corruption(names: Sequence[str], inputs: Iterable[tuple[str, torch.Tensor, torch.Tensor, Any]], kind: str,
               dataset: str, title: str, ece_bins: int = 15, standard_names: Sequence[str] = (),
               path: str | None = None) -> ModeResult:
    """``inputs`` yields (corruption, member log-probs (M, N, C), labels (N,), severity or severity per image).

    ``kind``: generated | standard | all | named; ``standard_names``: the 15 standard CIFAR-C names for
    the ``*_standard15`` aggregates (empty for generated corruptions).
    """
    res = ModeResult("corruption", dataset)
    ece_name = f"ece{ece_bins}"
    who = list(names) + ["ensemble"]
    cells = _cells(names, inputs, ece_bins)

    def cell_metrics(cell_w: tuple) -> dict:
        n, acc, nll, sb, s14 = cell_w
        return {"acc": acc, "nll": nll, ece_name: Mx.ece_from_bin_sums(sb), "ece_ft14": Mx.ece_from_bin_sums(s14)}

    per_cell = {key: {w: cell_metrics(v) for w, v in cell.items()} for key, cell in cells.items()}
    for (name, s), cm in per_cell.items():
        _emit(res, names, cm, name, s)
    aggregates, n_std = _aggregates(res, cells, per_cell, who, ece_name, standard_names)
    for corr, severity, agg in aggregates:
        _emit(res, names, agg, corr, severity)
    corruptions = list(dict.fromkeys(k[0] for k in cells))
    res.extras = {"source": kind, "path": path, "corruptions": corruptions, "n_standard_present": n_std,
                  "aggregates": dict(AGGREGATE_NOTES)}
    _tables(res, who, per_cell, aggregates, corruptions, ece_name, kind, path)
    metrics = ("acc", ece_name)
    res.figure("corruption", "corruption", "corruption", metrics=list(metrics), kind=kind,
               ensemble={m: [[per_cell[(n, s)]["ensemble"][m] for n in corruptions if (n, s) in per_cell]
                             for s in range(1, 6)] for m in metrics},
               members_mean={m: [float(np.mean([per_cell[(n, s)][w][m] for n in corruptions if (n, s) in per_cell
                                                for w in names])) for s in range(1, 6)] for m in metrics},
               title=f"{title}: {dataset} test under {kind} corruptions")
    return res


def _tables(res: ModeResult, who: list, per_cell: dict, aggregates: list, corruptions: list, ece_name: str,
            kind: str, path: str | None) -> None:
    metrics_cols = ["acc", "nll", ece_name, "ece_ft14"]
    summary = [[corr, w] + [agg[w][m] for m in metrics_cols]
               for corr, severity, agg in aggregates if severity == "all" for w in who]
    title_src = "generated corruptions" if kind == "generated" else f"CIFAR-C files in {path}"
    res.table(f"corruption: {title_src} ({len(corruptions)} corruptions x 5 severities)",
              ["aggregate", "member"] + metrics_cols, summary)
    grid = [[name] + [per_cell[(name, s)]["ensemble"]["acc"] if (name, s) in per_cell else None for s in range(1, 6)]
            for name in corruptions]
    sev_rows = [agg for agg in aggregates if agg[1] != "all"]
    grid.append(["mean_all"] + [next((a[2]["ensemble"]["acc"] for a in sev_rows if a[1] == s), None)
                                for s in range(1, 6)])
    res.table("corruption: ensemble accuracy per corruption (rows) and severity (columns)",
              ["corruption", "s1", "s2", "s3", "s4", "s5"], grid)
