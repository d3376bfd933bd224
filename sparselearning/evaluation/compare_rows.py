"""The rows of ``--compare``: a folder's ensembles (its replicates), their metrics, costs and flags.

A compared folder holds one ensemble, or several of one method (replicates): each EDST run folder
``seed=*`` under the folder when every run holds several tickets, or consecutive groups of
``members_per_ensemble`` tickets in natural order (``DST/`` with seeds 1..9 and 3: three ensembles of
3). Metrics of a folder holding one ensemble come from its results JSON; replicates are scored on the
folder's cached logits (:mod:`~sparselearning.evaluation.metrics`, the functions the modes use).
A row gives the mean over the replicates and their sample std (``<key>_std``).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .. import costs
from ..errors import UsageError
from . import metrics as Mx

__all__ = ["Folder", "ensembles", "run_epochs", "metrics_from_results", "metrics_from_log_probs", "single_model_metrics",
           "ensemble_cost", "describe_flags", "aggregate", "METRICS"]

METRICS = ("acc", "nll", "ece", "disagreement", "ood_auroc")
# run plumbing, not method: never a distinguishing flag
_PLUMBING = {"seed", "device", "no_cuda", "workers", "output_dir", "overwrite", "resume", "no_progress", "tensorboard",
             "data_dir", "log_interval", "save_every", "verbose", "pretrained", "max_threads", "bench", "save",
             "save_features", "test_batch_size", "compile", "no_tf32", "channels_last", "world_size", "mgpu"}


@dataclass
class Folder:
    """One compared folder: its tickets (names relative to it), checked results and run summaries."""
    path: Path
    label: str
    names: list[str]
    results: dict
    summaries: dict[str, dict] = field(default_factory=dict)  # run folder (relative, '.' for the folder) -> summary

    def run_of(self, name: str) -> str:
        parent = Path(name).parent.as_posix()
        return parent if parent else "."

    @property
    def kind(self) -> str:
        kinds = [s.get("kind") for s in self.summaries.values()] or [m.get("kind") for m in self.results["members"]]
        return "+".join(dict.fromkeys(str(k) for k in kinds if k)) or self.path.name


def ensembles(folder: Folder, per_ensemble: int | None) -> list[list[str]]:
    """The folder's ensembles: groups of ``per_ensemble`` tickets, else one per multi-ticket run, else one."""
    names = folder.names
    if per_ensemble:
        if len(names) % per_ensemble:
            raise UsageError(f"--members-per-ensemble {per_ensemble}: {folder.label} holds {len(names)} tickets, "
                             f"not a multiple of {per_ensemble}; pass a divisor of {len(names)}")
        return [names[i:i + per_ensemble] for i in range(0, len(names), per_ensemble)]
    runs: dict[str, list[str]] = {}
    for n in names:
        runs.setdefault(folder.run_of(n), []).append(n)
    if len(runs) > 1 and all(len(v) > 1 for v in runs.values()):
        return list(runs.values())
    return [list(names)]


# --------------------------------------------------------------------------- metrics
def _pick(results: dict, mode: str, member: str, metric: str) -> float | None:
    hits = [r["value"] for r in results["rows"] if r["mode"] == mode and r["member"] == member
            and r["metric"] == metric and r.get("split") == "test"]
    return hits[-1] if hits else None


def _ood_auroc(results: dict, member: str) -> float | None:
    """Mean over the OoD sets of the max-softmax AUROC, when the ood mode was run."""
    vals = [r["value"] for r in results["rows"] if r["mode"] == "ood" and r["member"] == member
            and r["metric"] == "msp_auroc" and r["value"] is not None]
    return statistics.fmean(vals) if vals else None


def ece_key(results: dict) -> str:
    return f"ece{results.get('config', {}).get('ece_bins', 15)}"


def metrics_from_results(results: dict) -> dict:
    """The ensemble's metrics as the folder's evaluation recorded them."""
    return {"acc": _pick(results, "predict", "ensemble", "acc"), "nll": _pick(results, "predict", "ensemble", "nll"),
            "ece": _pick(results, "calibration", "ensemble", ece_key(results)),
            "disagreement": _pick(results, "disagreement", "pairs_mean", "disagreement"),
            "ood_auroc": _ood_auroc(results, "ensemble")}


def metrics_from_log_probs(log_probs: torch.Tensor, labels: torch.Tensor, bins: int) -> dict:
    """An ensemble's metrics from its members' (M, N, C) test log-probabilities."""
    ens = Mx.ensemble_log_probs(log_probs)
    return {"acc": Mx.accuracy(ens, labels), "nll": Mx.nll(ens, labels), "ece": Mx.ece(ens.exp(), labels, bins),
            "disagreement": Mx.mean_pairwise_disagreement(log_probs) if log_probs.shape[0] > 1 else None,
            "ood_auroc": None}


def single_model_metrics(results: dict, names: Sequence[str]) -> list[dict]:
    """Each member's own metrics (the dense model's reference row)."""
    key = ece_key(results)
    return [{"acc": _pick(results, "predict", n, "acc"), "nll": _pick(results, "predict", n, "nll"),
             "ece": _pick(results, "calibration", n, key), "disagreement": None,
             "ood_auroc": _ood_auroc(results, n)} for n in names]


# --------------------------------------------------------------------------- costs
def ensemble_cost(folder: Folder, group: Sequence[str]) -> dict:
    """Training FLOPs (pre-training included), test-time FLOPs per sample and active parameters of one ensemble."""
    runs = list(dict.fromkeys(folder.run_of(n) for n in group))
    missing = [r for r in runs if r not in folder.summaries]
    out = {"training_flops": None, "test_flops": None, "parameters": None, "dense_epoch_flops": None, "note": ""}
    if missing:
        out["note"] = f"no summary.json in {missing[0]}"
        return out
    sums = [folder.summaries[r] for r in runs]
    run_costs = [costs.run_cost(s, folder.path / r) for s, r in zip(sums, runs)]
    out["training_flops"] = costs.ensemble_training_flops(run_costs)
    out["note"] = next((c.why_unknown for c in run_costs if c.why_unknown), "")
    out["dense_epoch_flops"] = next((v for v in map(costs.dense_epoch_flops, sums) if v), None)
    tickets = {r: sum(folder.run_of(n) == r for n in group) for r in runs}
    fwd = [costs.forward_flops(folder.summaries[r], k) for r, k in tickets.items()]
    out["test_flops"] = None if None in fwd else sum(fwd)
    params = []
    for n in group:
        s = folder.summaries[folder.run_of(n)]
        active = {t.get("file"): t.get("active_weights") for t in s.get("tickets", [])}
        params.append(active.get(Path(n).name, (s.get("parameters") or {}).get("active")))
    out["parameters"] = None if None in params else int(sum(params))
    return out


def run_epochs(folder: Folder, run: str) -> str | None:
    """A run's epochs; a run from a pre-trained model: ``<pre-training epochs>+<its own>``."""
    s = folder.summaries[run]
    own = s.get("epochs_total")
    path = costs.pretrained_summary_path(s, folder.path / run)
    pre = costs.read_summary(path) if path else None
    return None if own is None else (f"{pre['epochs_total']}+{own}" if pre and pre.get("epochs_total") else str(own))


# --------------------------------------------------------------------------- flags
def folder_flags(folder: Folder) -> dict:
    """The training flags every run of the folder shares (run plumbing left out)."""
    flag_sets = [s.get("flags") or {} for s in folder.summaries.values()]
    if not flag_sets:
        return {}
    first = flag_sets[0]
    return {k: v for k, v in first.items() if k not in _PLUMBING and all(f.get(k) == v for f in flag_sets[1:])}


def describe_flags(rows: list[dict], flags: list[dict]) -> None:
    """Fill each row's ``flags`` with the flags in which it differs from other rows of its method."""
    for row, own in zip(rows, flags):
        peers = [f for r, f in zip(rows, flags) if r["method"] == row["method"] and r["role"] == row["role"]]
        keys = sorted(k for k in set().union(*peers) if len({repr(p.get(k)) for p in peers}) > 1)
        parts = []
        for k in keys:
            v = own.get(k)
            if isinstance(v, bool):
                parts += [f"--{k.replace('_', '-')}"] if v else []
            else:
                parts.append(f"{k}={v}")
        row["flags"] = " ".join(parts)


def aggregate(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std over replicates (std None for one; both None when any value is missing)."""
    if not values or any(v is None for v in values):
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)
