"""Printing, writing and drawing: tables on stdout, results JSON/CSV, PNG figures.

Every file is written atomically (:mod:`sparselearning.checkpoint`), so an interrupted run leaves
either the old file or the new one.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..checkpoint import _atomic_write, atomic_write_text
from ..errors import UsageError
from .records import Figure, ModeResult, Table

__all__ = ["fmt", "print_table", "print_result", "json_safe", "reserve_run_id", "write_rows", "draw", "short_labels"]


# --------------------------------------------------------------------------- tables
def fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def print_table(table: Table, out: Callable[[str], None]) -> None:
    cells = [[str(h) for h in table.header]] + [[fmt(v) for v in r] for r in table.rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(table.header))]
    out("")
    out(f"== {table.title} ==")
    for k, r in enumerate(cells):
        line = "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        out(line.rstrip())
        if k == 0:
            out("  ".join("-" * w for w in widths))


def print_result(res: ModeResult, out: Callable[[str], None]) -> None:
    for note in res.notes:
        out(note)
    for t in res.tables:
        print_table(t, out)


# --------------------------------------------------------------------------- files
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


def reserve_run_id(folder: Path, prefix: str = "results") -> str:
    """Local time YYYYmmdd-HHMMSS (plus -2, -3... when taken); creates the empty <prefix>_<id>.json."""
    base = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    k = 1
    while True:
        rid = base if k == 1 else f"{base}-{k}"
        try:
            fd = os.open(folder / f"{prefix}_{rid}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            return rid
        except FileExistsError:
            k += 1


def csv_text(columns: Sequence[str], rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(k) is None else (repr(r[k]) if isinstance(r[k], float) else r[k]) for k in columns])
    return buf.getvalue()


def write_rows(folder: Path, prefix: str, run_id: str, document: dict, columns: Sequence[str]) -> tuple[Path, Path]:
    """<prefix>_<run_id>.{json,csv} (``document`` and its rows) and their copies <prefix>_latest.*."""
    text = json.dumps(json_safe(document), indent=1, allow_nan=False)
    table = csv_text(columns, document["rows"])
    json_path, csv_path = folder / f"{prefix}_{run_id}.json", folder / f"{prefix}_{run_id}.csv"
    try:
        atomic_write_text(table, csv_path)
        atomic_write_text(text, json_path)
        atomic_write_text(text, folder / f"{prefix}_latest.json")
        atomic_write_text(table, folder / f"{prefix}_latest.csv")
    except OSError as err:
        raise UsageError(f"could not write the results to {folder} ({err.strerror or err}); free space "
                         f"or pass another --output-dir") from None
    return json_path, csv_path


# --------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def short_labels(names: Sequence[str]) -> list[str]:
    """Short labels for plots: the shortest unique path suffixes."""
    parts = [n.split("/") for n in names]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return list(names)


def _annotate(ax, im, mat: np.ndarray) -> None:
    """Each cell's value, in black or white ink depending on the cell's colour."""
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            r, g, b, _ = im.cmap(im.norm(float(mat[i, j])))
            ink = "k" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "w"
            ax.text(j, i, f"{float(mat[i, j]):.3f}", ha="center", va="center", fontsize=7, color=ink)


def _member_axes(ax, labels: Sequence[str], x_label: str, y_label: str) -> None:
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)


def _draw_heatmaps(plt, d: dict):
    panels = d["panels"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.8 * len(panels), 5.4), squeeze=False)
    labels = short_labels(d["members"])
    for ax, panel in zip(axes[0], panels):
        mat = np.asarray(panel["matrix"], dtype=float)
        im = ax.imshow(mat, cmap=panel["cmap"])
        ax.set_title(panel["title"])
        _member_axes(ax, labels, "ticket (column)", "ticket (row)")
        _annotate(ax, im, mat)
        fig.colorbar(im, ax=ax, fraction=0.046).set_label(panel["colorbar"])
    fig.suptitle(d["title"])
    fig.tight_layout()
    return fig


def _draw_kl(plt, d: dict):
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    mat = np.asarray(d["matrix"], dtype=float)
    im = ax.imshow(mat, cmap="magma")
    _member_axes(ax, short_labels(d["members"]), "b: ticket whose prediction is the reference",
                 "a: ticket compared with it")
    _annotate(ax, im, mat)
    ax.set_title(d["title"], fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046).set_label("mean KL(p_b || p_a) over test images (nats)")
    return fig


def _nan_list(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _draw_reliability(plt, d: dict):
    fig, ax = plt.subplots(figsize=(5.5, 5))
    rel, b = d["reliability"], d["ece_bins"]
    r = rel["ensemble"]
    edges = np.asarray(r["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    ax.bar(centers, np.nan_to_num(_nan_list(r["accuracy"])), width=1.0 / b, edgecolor="k", alpha=0.7,
           label="ensemble accuracy")
    names = d["members"]
    for name, label in zip(names, short_labels(names)):
        ax.plot(_nan_list(rel[name]["confidence"]), _nan_list(rel[name]["accuracy"]), marker=".", lw=0.8, alpha=0.6,
                label=label if len(names) <= 8 else None)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(d["title"], fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def shown_ood_score(score: str, values) -> tuple[np.ndarray, str]:
    """A score as the histogram shows it: msp as the max-softmax probability itself (the score ranks by its
    negative, higher = more OoD), every other score as computed; and the axis label that says which way is OoD."""
    values = np.asarray(values, dtype=float)
    if score == "msp":
        return -values, "ensemble max-softmax probability (lower = more OoD)"
    return values, f"ensemble OoD score ({score}; higher = more OoD)"


def _draw_ood(plt, d: dict):
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    score = d["score"]
    for name, (s_in, s_out, auc) in d["roc"].items():
        yy = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
        fpr, tpr, _ = roc_curve(yy, np.r_[s_in, s_out])
        axes[0].plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
        axes[1].hist(shown_ood_score(score, s_out)[0], bins=40, alpha=0.45, density=True, label=f"OoD {name}",
                     gid=f"ood_{name}")
    first = next(iter(d["roc"].values()))
    shown_in, xlabel = shown_ood_score(score, first[0])
    axes[1].hist(shown_in, bins=40, alpha=0.6, density=True, label=f"ID {d['dataset']}", color="k", histtype="step",
                 gid="id")
    axes[0].plot([0, 1], [0, 1], "k:", lw=1)
    axes[0].set_xlabel("false positive rate (ID flagged)")
    axes[0].set_ylabel("true positive rate (OoD detected)")
    axes[0].set_title(f"ensemble ROC, score {score}")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel(xlabel)
    axes[1].set_ylabel("probability density (each histogram integrates to 1)")
    axes[1].set_title(f"ensemble {'max-softmax probability' if score == 'msp' else score + ' score'} distributions")
    axes[1].legend(fontsize=8)
    fig.suptitle(d["title"])
    fig.tight_layout()
    return fig


# the corruption plot's colours: the box's median must not share the colour of either mean line
MEDIAN_COLOUR, MEMBERS_MEAN_COLOUR, ENSEMBLE_MEAN_COLOUR = "tab:green", "tab:blue", "tab:red"


def _draw_corruption(plt, d: dict):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, metric in zip(axes, d["metrics"]):
        data = d["ensemble"][metric]
        ax.boxplot(data, positions=range(1, 6), widths=0.5, medianprops={"color": MEDIAN_COLOUR, "lw": 1.5})
        ax.plot(range(1, 6), d["members_mean"][metric], "o--", color=MEMBERS_MEAN_COLOUR,
                label="members (mean over corruptions)")
        ax.plot(range(1, 6), [np.mean(v) for v in data], "s-", color=ENSEMBLE_MEAN_COLOUR,
                label="ensemble (mean over corruptions)")
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Patch(facecolor="none", edgecolor="k", label="ensemble: spread over corruptions (box)"))
        handles.append(Line2D([], [], color=MEDIAN_COLOUR, lw=1.5, label="ensemble: median over corruptions"))
        ax.set_xlabel("corruption severity")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} over {d['kind']} corruptions")
        ax.legend(handles=handles, fontsize=8)
    fig.suptitle(d["title"])
    fig.tight_layout()
    return fig


def _draw_tsne(plt, d: dict):
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cmap = plt.get_cmap("tab10")
    points, runs = d["points"], d["runs"]
    colour = {r: cmap(k % 10) for k, r in enumerate(runs)}
    for r in runs:
        pts = np.array([[p["x"], p["y"]] for p in points if p["run"] == r and p["kind"] == "snapshot"])
        ax.plot(pts[:, 0], pts[:, 1], "-", color=colour[r], alpha=0.35)
        ax.scatter(pts[:, 0], pts[:, 1], color=colour[r], s=14, label=r)
        ax.scatter(pts[:1, 0], pts[:1, 1], color=colour[r], marker="*", s=160, edgecolor="k")
    for p in points:
        if p["kind"] == "ticket":
            ax.scatter([p["x"]], [p["y"]], marker="X", s=90, color=colour.get(p["run"], "k"), edgecolor="k")
    ax.scatter([], [], marker="X", s=90, color="w", edgecolor="k", label="tickets (run colour)")
    ax.scatter([], [], marker="*", s=160, color="w", edgecolor="k", label="first snapshot")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(d["title"], fontsize=9)
    ax.legend(fontsize=7)
    return fig


def _draw_ensemble_size(plt, d: dict):
    curve, mean = d["curve"], d["members_mean"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, (key, label) in zip(axes, (("acc", "accuracy"), ("nll", "NLL (nats)"),
                                       ("ece", f"ECE ({d['ece_bins']} bins)"))):
        ax.plot(curve["k"], curve[key], "o-", label="ensemble of the first k")
        ax.axhline(mean[key], color="grey", ls="--", lw=1, label="single tickets (mean)")
        ax.set_xlabel("ensemble size k")
        ax.set_ylabel(label)
        ax.set_xticks(curve["k"])
        ax.legend(fontsize=8)
    fig.suptitle(d["title"])
    fig.tight_layout()
    return fig


def _compare_label(r: dict, rows: Sequence[dict]) -> str:
    """A row's legend entry: method, M, density and flags (plus its folder when that is still ambiguous)."""
    density = "?" if r["density"] is None else f"{r['density']:.3g}"
    label = f"{r['method']} M={r['M']} d={density}" + (f" {r['flags']}" if r["flags"] else "")
    if r["n"] > 1:
        label += f" (n={r['n']})"
    twins = [q for q in rows if q is not r and q["method"] == r["method"] and q["M"] == r["M"]
             and q["density"] == r["density"] and q["flags"] == r["flags"]]
    return f"{label} [{r['folder']}]" if twins else label


def _reference_line(ax, r: dict, key: str, colour: str, label: str) -> None:
    v, sd = r.get(key), r.get(f"{key}_std")
    if v is None:
        return
    ax.axhline(v, color=colour, ls="--", lw=1.2, label=label)
    if sd:
        ax.axhspan(v - sd, v + sd, color=colour, alpha=0.12, lw=0)


def _draw_compare(plt, d: dict):
    """Accuracy, NLL and ECE against training FLOPs (top) and test-time parameters (bottom).

    One marker per compared ensemble with error bars over its replicates; the dense model and the
    dense deep ensemble are horizontal reference lines (with their std as a band); the legend names
    each marker, so no label sits on the data.
    """
    rows = d["rows"]
    refs = {("dense", "single"): ("k", "dense model (mean ± std of its runs)"),
            ("dense", "ensemble"): ("tab:grey", "dense deep ensemble")}
    points = [r for r in rows if (r["method"], r["role"]) not in refs]
    markers = "osD^vP*Xh<>p"
    colours = plt.get_cmap("tab10")
    metrics = (("acc", "ensemble accuracy"), ("nll", "ensemble NLL (nats)"), ("ece", "ensemble ECE"))
    xs = (("training_flops_relative", "training FLOPs (x one dense model, see the table's basis)", 1.0),
          ("parameters", "test-time parameters (millions, all members)", 1e6))
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.2))
    for i, (xkey, xlabel, xscale) in enumerate(xs):
        for j, (key, ylabel) in enumerate(metrics):
            ax = axes[i, j]
            for k, r in enumerate(points):
                x, y = r.get(xkey), r.get(key)
                if x is None or y is None:
                    continue
                xerr = (r.get(f"{xkey}_std") or 0) / xscale
                ax.errorbar(x / xscale, y, xerr=xerr or None, yerr=r.get(f"{key}_std") or None,
                            marker=markers[k % len(markers)], color=colours(k % 10), ms=8, capsize=3, ls="none",
                            label=_compare_label(r, rows))
            for r in rows:
                if (r["method"], r["role"]) in refs:
                    colour, label = refs[(r["method"], r["role"])]
                    cost = [f"{r['training_flops_relative']:.2f}x FLOPs"] if r.get("training_flops_relative") else []
                    cost += [f"{r['parameters'] / 1e6:.3g}M params"] if r.get("parameters") else []
                    _reference_line(ax, r, key, colour, f"{label}: {', '.join(cost)} [{r['folder']}]")
            ax.margins(x=0.15, y=0.12)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{d['title']}\ntraining FLOPs relative to {d.get('basis', 'one dense model')}", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(labels) / 2), 1, 1))
    return fig


PLOTTERS = {"heatmaps": _draw_heatmaps, "kl": _draw_kl, "reliability": _draw_reliability, "ood": _draw_ood,
            "corruption": _draw_corruption, "tsne": _draw_tsne, "ensemble_size": _draw_ensemble_size,
            "compare": _draw_compare}


def draw(figure: Figure, path: Path) -> None:
    """Draw ``figure`` and write it as a PNG at ``path`` (atomically)."""
    plt = _pyplot()
    fig = PLOTTERS[figure.kind](plt, figure.data)
    try:
        _atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120, bbox_inches="tight"), "wb")
    finally:
        plt.close(fig)
