"""What an ensemble costs: training FLOPs (pre-training included), test-time FLOPs, and the dense yardstick.

One accounting for ``ensemble_freetickets.py --compare``, ``benchmarks/reproduce_small.py`` and
``benchmarks/flops_table.py``:

- an ensemble's training FLOPs are the sum of its training runs' own FLOPs (each run's
  ``summary.json``, counted step by step by :mod:`sparselearning.core.flops`) plus the dense
  pre-training of every run that started from a pre-trained model (PF: each member's
  ``--pretrained`` run, read from that run's ``summary.json``; a pre-trained model shared by several
  members is counted once). When a pre-training's summary cannot be found the total is unknown
  (``None``), never the fine-tuning alone;
- test-time FLOPs are the sum of the members' sparse forward FLOPs per sample;
- the yardstick is one dense model of the same model and dataset trained N epochs, for a stated N.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .core.flops import DENSE_REFERENCE_EPOCHS

__all__ = ["RunCost", "ensemble_training_flops", "run_cost", "pretrained_summary_path", "read_summary",
           "dense_epoch_flops",
           "forward_flops"]


@dataclass(frozen=True)
class RunCost:
    """One training run's share of an ensemble's training cost.

    ``pretraining_flops``: the cost of the model it started from (0: trained from scratch; None: it
    started from a pre-trained model whose cost is unknown). ``pretrained_from`` names that model,
    so that members pruned from one dense model pay for it once; ``why_unknown`` says what is missing.
    """
    training_flops: float
    pretraining_flops: float | None = 0.0
    pretrained_from: str | None = None
    why_unknown: str = ""


def ensemble_training_flops(runs: Sequence[RunCost]) -> float | None:
    """Training FLOPs of an ensemble: its runs' own FLOPs plus each distinct pre-training; None if one is unknown."""
    total = 0.0
    counted: set[str] = set()
    for r in runs:
        if r.pretraining_flops is None:
            return None
        total += r.training_flops
        if r.pretrained_from is None or r.pretrained_from not in counted:
            total += r.pretraining_flops
        if r.pretrained_from is not None:
            counted.add(r.pretrained_from)
    return total


def _training_cwd(summary: dict, run_dir: Path) -> Path | None:
    """The folder the run was started from: ``run_dir`` less the relative ``run_dir`` its summary recorded."""
    recorded = Path(str(summary.get("run_dir", "")))
    if recorded.is_absolute() or not recorded.parts:
        return None
    here = run_dir.resolve()
    n = len(recorded.parts)
    if len(here.parts) <= n or here.parts[-n:] != recorded.parts:
        return None
    return here.parents[n - 1]


def pretrained_summary_path(summary: dict, run_dir: Path) -> Path | None:
    """The ``summary.json`` of the run whose model ``--pretrained`` named, if it can be found."""
    flag = (summary.get("flags") or {}).get("pretrained")
    if not flag:
        return None
    p = Path(str(flag)).expanduser()
    candidates = [p] if p.is_absolute() else [c / p for c in (_training_cwd(summary, run_dir), Path.cwd()) if c]
    for c in candidates:
        s = (c if c.is_dir() else c.parent) / "summary.json"
        if s.is_file():
            return s
    return None


def read_summary(path: Path) -> dict | None:
    """A summary.json's contents, or None when it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_cost(summary: dict, run_dir: Path) -> RunCost:
    """The cost of one training run from its ``summary.json`` (and, for a pre-trained start, the pre-training's)."""
    flops = float(summary.get("training_flops") or 0.0)
    flag = (summary.get("flags") or {}).get("pretrained")
    if not flag:
        return RunCost(flops)
    path = pretrained_summary_path(summary, run_dir)
    pre = read_summary(path) if path else None
    if pre is None or not isinstance(pre.get("training_flops"), (int, float)):
        return RunCost(flops, None, str(flag), f"the summary.json of the pre-trained model {flag} was not found")
    return RunCost(flops, float(pre["training_flops"]), str(path.resolve()))


def dense_epoch_flops(summary: dict) -> float | None:
    """Training FLOPs of one epoch of the dense model of this run's model and dataset (the yardstick's unit)."""
    flops, rel = summary.get("training_flops"), summary.get("training_flops_relative_to_dense_250_epochs")
    if not isinstance(flops, (int, float)) or not isinstance(rel, (int, float)) or flops <= 0 or rel <= 0:
        return None
    return flops / rel / DENSE_REFERENCE_EPOCHS


def forward_flops(summary: dict, tickets: int = 1) -> float | None:
    """Test-time forward FLOPs per sample of ``tickets`` tickets of this run (its sparse forward each)."""
    f = summary.get("sparse_forward_flops_per_sample", summary.get("dense_forward_flops_per_sample"))
    return None if not isinstance(f, (int, float)) else float(f) * tickets
