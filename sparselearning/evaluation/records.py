"""What a mode returns: result rows, printed tables, JSON extras and the data of its figures.

Modes compute; :mod:`sparselearning.evaluation.report` prints, writes and draws. A mode's output is
therefore testable without a terminal, a file system or matplotlib.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["Table", "Figure", "ModeResult", "json_safe"]


@dataclass
class Table:
    title: str
    header: Sequence[str]
    rows: list[Sequence[Any]]


@dataclass
class Figure:
    """A plot to draw: ``kind`` picks the drawing function in report, ``file`` names the PNG."""
    key: str  # key in the results' "plots"
    file: str  # plots/<run_id>_<file>.png
    kind: str
    data: dict


@dataclass
class ModeResult:
    mode: str
    dataset: str
    rows: list[dict] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed before the tables
    extras: dict | None = None

    def row(self, member: str, metric: str, value: float, split: str = "test", corruption: str | None = None,
            severity: int | str | None = None) -> None:
        self.rows.append({"mode": self.mode, "dataset": self.dataset, "split": split, "corruption": corruption,
                          "severity": severity, "member": member, "metric": metric, "value": float(value)})

    def table(self, title: str, header: Sequence[str], rows: list[Sequence[Any]]) -> None:
        self.tables.append(Table(title, list(header), rows))

    def figure(self, key: str, file: str, kind: str, /, **data) -> None:
        self.figures.append(Figure(key, file, kind, data))

    def value(self, member: str, metric: str, **where) -> float:
        """The value of the one row of ``member`` and ``metric`` (and the given split/corruption/severity)."""
        hits = [r["value"] for r in self.rows if r["member"] == member and r["metric"] == metric
                and all(r[k] == v for k, v in where.items())]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} rows for {member} {metric} {where}")
        return hits[0]


def json_safe(v: Any) -> Any:
    """JSON-safe: non-finite floats become None, tensors lists."""
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return json_safe(v.item())
    return v
