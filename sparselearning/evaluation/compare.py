"""``--compare DIR [DIR ...]``: several methods' ensembles side by side, in the paper's Table 1 layout.

Each DIR holds one ensemble (e.g. ``.../DST/`` with ``seed=*/model.pth``, or an EDST ``M=3/seed=17``
folder) or several ensembles of one method, its replicates (see :mod:`.compare_rows`).

- **Results** come from ``DIR/eval/results_latest.json``, checked before use (its format, its rows,
  and member names that stay inside DIR). They are reused only when they list exactly the tickets
  on disk with the same sha256 and hold predict and calibration (and disagreement for M >= 2);
  otherwise DIR is evaluated again (predict,disagreement,calibration) and one line says why.
- **Rows** name their folder, model, dataset, method, M, replicates n, density, epochs and the
  training flags in which they differ from other rows of their method. Folders of different models
  or datasets are refused unless ``allow_mixed``. A dense folder also gives the single dense model's
  row (mean over its members).
- **Costs** (:mod:`sparselearning.costs`, the accounting every table uses): training FLOPs of the
  ensemble (PF: its members' dense pre-training included), absolute and relative to one dense model
  of the same model and dataset trained N epochs: N is the epochs of the compared dense runs, or 250
  (the paper's yardstick) when no dense folder is compared; the table's title says which. Test-time
  forward FLOPs per image and active parameters of all members.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..costs import read_summary
from ..core.flops import DENSE_REFERENCE_EPOCHS
from ..errors import UsageError
from ..provenance import provenance
from . import compare_rows as CR
from .config import EvalConfig, validate_config
from .records import Figure, Table
from .report import draw, print_table, reserve_run_id, write_rows
from .runner import Evaluation, evaluate
from .tickets import _sha256, discover_tickets, load_entries, rel_name

__all__ = ["CompareConfig", "compare", "COMPARE_COLUMNS"]

_STATS = ("acc", "nll", "ece", "disagreement", "ood_auroc", "training_flops", "training_flops_relative")
COMPARE_COLUMNS = ("folder", "model", "dataset", "method", "role", "M", "n", "density", "epochs", "flags",
                   *[c for k in _STATS for c in (k, f"{k}_std")], "test_flops", "parameters", "cost_note")
_EVAL_MODES = ("predict", "disagreement", "calibration")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class CompareConfig:
    folders: Sequence[str]
    output_dir: str | None = None
    template: EvalConfig = dataclasses.field(default_factory=lambda: EvalConfig(resume=""))  # flags for evaluations
    command: Sequence[str] | None = None
    allow_mixed: bool = False  # folders of different models or datasets in one table
    members_per_ensemble: int | None = None  # split each folder into ensembles of this many tickets


# --------------------------------------------------------------------------- inputs
def _check_folders(folders: Sequence[str]) -> list[Path]:
    paths = []
    for f in folders:
        p = Path(f).expanduser()
        if not p.is_dir():
            raise UsageError(f"--compare {f} is not a folder; pass run folders (e.g. results/<model>/<data>/"
                             f"density_0.2/DST)")
        if not discover_tickets(p, exclude=[p / "eval"]):
            raise UsageError(f"--compare {f} holds no tickets (*.pth); point it at a training run folder")
        if p.resolve() in {q.resolve() for q in paths}:
            raise UsageError(f"--compare names {f} twice; pass each folder once")
        paths.append(p)
    return paths


def _labels(paths: Sequence[Path]) -> tuple[list[str], str]:
    """Each folder relative to the folders' common parent, and that parent (relative to the working directory
    when it lies inside it)."""
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath(resolved))
    base = common.parent if common in resolved else common
    return [r.relative_to(base).as_posix() for r in resolved], _shown(base)


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies inside it."""
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    return resolved.relative_to(cwd).as_posix() or "." if resolved == cwd or cwd in resolved.parents else str(path)


def _check_setting(paths: Sequence[Path], labels: Sequence[str], allow_mixed: bool) -> None:
    """Refuse folders of different models or datasets (from each folder's first ticket) unless allowed."""
    settings = {}
    for p, label in zip(paths, labels):
        t = load_entries(discover_tickets(p, exclude=[p / "eval"])[:1], p)[0].ticket
        settings[label] = f"{t.get('model')} on {t.get('dataset')}"
    if len(set(settings.values())) > 1 and not allow_mixed:
        listing = ", ".join(f"{k}: {v}" for k, v in settings.items())
        raise UsageError(f"--compare: the folders hold different models or datasets ({listing}); compare one "
                         f"setting at a time or pass --allow-mixed")


def _results_problem(data, folder: Path) -> str | None:
    """What makes a results JSON unusable (None: nothing)."""
    if not isinstance(data, dict) or data.get("format") != "freetickets-eval":
        return "not a freetickets-eval results document"
    members, rows = data.get("members"), data.get("rows")
    if not isinstance(members, list) or not members or not isinstance(rows, list):
        return "no members or no rows"
    if not isinstance(data.get("model"), str) or not isinstance(data.get("dataset"), str):
        return "no model or dataset"
    root = folder.resolve()
    for m in members:
        name = m.get("name") if isinstance(m, dict) else None
        if not isinstance(name, str) or not _SHA256.match(str(m.get("sha256"))):
            return "a member without a name or sha256"
        path = (root / name).resolve()
        if Path(name).is_absolute() or (root != path and root not in path.parents):
            return f"member {name!r} lies outside the folder"
    for r in rows:
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("mode", "member", "metric")):
            return "a row without mode, member or metric"
        v = r.get("value")
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            return f"a non-numeric value {v!r}"
    if not isinstance(data.get("modes_run", []), list) or not isinstance(data.get("skipped", {}), dict):
        return "malformed modes_run or skipped"
    bins = data.get("config", {}).get("ece_bins", 15) if isinstance(data.get("config", {}), dict) else None
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        return f"config.ece_bins {bins!r} is not a positive integer"
    return None


def _read_results(path: Path, folder: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UsageError(f"{path} is unreadable ({type(err).__name__}); delete it to evaluate the folder again") \
            from None
    problem = _results_problem(data, folder)
    if problem:
        raise UsageError(f"{path} is not a valid results file ({problem}); delete it to evaluate {folder} again")
    return data


def _stale(results: dict, folder: Path, names: list[str]) -> str | None:
    """Why the results no longer describe the folder's tickets (None: they do)."""
    recorded = {m["name"]: m["sha256"] for m in results["members"]}
    if set(recorded) != set(names):
        added, gone = sorted(set(names) - set(recorded)), sorted(set(recorded) - set(names))
        return f"its tickets changed since its results ({'added ' + added[0] if added else 'removed ' + gone[0]})"
    for name in names:
        if _sha256(folder / name) != recorded[name]:
            return f"{name} changed since its results were written (sha256 differs)"
    done = set(results.get("modes_run", [])) | set(results.get("skipped", {}))
    need = {"predict", "calibration"} | ({"disagreement"} if len(names) > 1 else set())
    if not need <= done:
        return f"its results lack {', '.join(sorted(need - done))}"
    return None


def _load_folder(path: Path, label: str, template: EvalConfig, out: Callable[[str], None]) -> CR.Folder:
    names = [rel_name(t, path) for t in discover_tickets(path, exclude=[path / "eval"])]
    results_path = path / "eval" / "results_latest.json"
    results = _read_results(results_path, path)
    why = "it has no evaluation results" if results is None else _stale(results, path, names)
    if why:
        out(f"compare: {label}: {why}; evaluating it ({', '.join(_EVAL_MODES)})")
        results = evaluate(dataclasses.replace(template, resume=str(path), output_dir=None), out)
    folder = CR.Folder(path, label, names, results)
    for run in dict.fromkeys(folder.run_of(n) for n in names):
        summary = read_summary(path / run / "summary.json")
        if summary is not None:
            folder.summaries[run] = summary
    return folder


# --------------------------------------------------------------------------- rows
def _replicate_metrics(folder: CR.Folder, groups: list[list[str]], template: EvalConfig) -> list[dict]:
    """Each ensemble's metrics from the folder's cached test logits (no forward pass when cached)."""
    cfg = dataclasses.replace(template, resume=str(folder.path), modes=["predict"], output_dir=None,
                              modes_explicit=False)
    ev = Evaluation(cfg, out=lambda _line: None)
    ev.prepare()
    lp, index = ev.test_log_probs(), {n: i for i, n in enumerate(ev.names)}
    bins = int(CR.ece_key(folder.results)[3:])
    return [CR.metrics_from_log_probs(lp[[index[n] for n in g]], ev.test.labels, bins) for g in groups]


def _row(folder: CR.Folder, role: str, groups: list[list[str]], metrics: list[dict]) -> dict:
    density = {m["name"]: m.get("density") for m in folder.results["members"]}
    dens = [density.get(n) for g in groups for n in g]
    epochs = sorted({CR.run_epochs(folder, run) for run in folder.summaries} - {None})
    cost = [CR.ensemble_cost(folder, g) for g in groups]
    row = {"folder": folder.label, "model": folder.results["model"], "dataset": folder.results["dataset"],
           "method": folder.kind, "role": role, "M": "/".join(sorted({str(len(g)) for g in groups})),
           "n": len(groups), "density": None if None in dens else sum(dens) / len(dens),
           "epochs": "/".join(epochs), "epochs_list": epochs, "flags": "",
           "test_flops": cost[0]["test_flops"], "parameters": cost[0]["parameters"],
           "cost_note": next((c["note"] for c in cost if c["note"]), ""),
           "replicates": [{**m, **c, "members": g} for m, c, g in zip(metrics, cost, groups)]}
    for key in (*CR.METRICS, "training_flops"):
        row[key], row[f"{key}_std"] = CR.aggregate([r[key] for r in row["replicates"]])
    return row


def folder_rows(folder: CR.Folder, per_ensemble: int | None, template: EvalConfig) -> list[dict]:
    """The folder's ensemble row (mean ± std over its replicates); for a dense folder also the single model."""
    groups = CR.ensembles(folder, per_ensemble)
    if len(groups) == 1:
        metrics = [CR.metrics_from_results(folder.results)]
    else:
        metrics = _replicate_metrics(folder, groups, template)
    rows = [_row(folder, "ensemble", groups, metrics)]
    if folder.kind == "dense" and len(folder.names) > 1:
        singles = [[n] for n in folder.names]
        rows.insert(0, _row(folder, "single", singles, CR.single_model_metrics(folder.results, folder.names)))
    return rows


def _apply_basis(rows: list[dict]) -> str:
    """Fill ``training_flops_relative`` (and its std); returns the yardstick in words."""
    dense_epochs = {e for r in rows if r["method"] == "dense" for e in r["epochs_list"]}
    if len(dense_epochs) == 1 and next(iter(dense_epochs)).isdigit():
        n = int(dense_epochs.pop())
        basis = f"one dense model of the same model and dataset trained {n} epochs, as the compared dense runs"
    else:
        n = DENSE_REFERENCE_EPOCHS
        why = "no dense folder compared" if not dense_epochs else "the dense runs differ in epochs"
        basis = f"one dense model of the same model and dataset trained {n} epochs (the paper's yardstick; {why})"
    for r in rows:
        rel = [None if (t := rep["training_flops"]) is None or not rep["dense_epoch_flops"]
               else t / (n * rep["dense_epoch_flops"]) for rep in r["replicates"]]
        r["training_flops_relative"], r["training_flops_relative_std"] = CR.aggregate(rel)
    return basis


# --------------------------------------------------------------------------- table
def _unit(values: Sequence[float | None], units: Sequence[tuple[float, str]]) -> tuple[float, str]:
    big = max((v for v in values if v), default=1.0)
    return next(((s, u) for s, u in units if big >= s), units[-1])


def _cell(row: dict, key: str, scale: float = 1.0, digits: str = ".4f") -> str:
    v, sd = row.get(key), row.get(f"{key}_std")
    if v is None:
        return "n/a"
    text = format(v / scale, digits)
    return text if not sd else f"{text} ± {format(sd / scale, digits)}"


def _table(rows: list[dict], basis: str, parent: str) -> Table:
    scale, unit = _unit([r["training_flops"] for r in rows],
                        [(1e18, "EFLOPs"), (1e15, "PFLOPs"), (1e12, "TFLOPs"), (1e9, "GFLOPs"), (1, "FLOPs")])
    t_scale, t_unit = _unit([r["test_flops"] for r in rows], [(1e9, "GFLOPs"), (1e6, "MFLOPs"), (1, "FLOPs")])

    def params(v):
        return "n/a" if v is None else (f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v:,}")

    body = []
    for r in rows:
        method = r["method"] + (" (single)" if r["role"] == "single" else "")
        train = "n/a (" + r["cost_note"] + ")" if r["training_flops"] is None and r["cost_note"] else \
            _cell(r, "training_flops", scale, ".3g")
        rel = _cell(r, "training_flops_relative", digits=".3f")
        density = "n/a" if r["density"] is None else f"{r['density']:.3g}"
        body.append([r["folder"], r["model"], r["dataset"], method, r["M"], r["n"], density, r["epochs"],
                     r["flags"] or "-", *[_cell(r, k) for k in CR.METRICS], train,
                     rel if rel == "n/a" else rel + "x",
                     "n/a" if r["test_flops"] is None else f"{r['test_flops'] / t_scale:.3g}", params(r["parameters"])])
    header = ["folder", "model", "dataset", "method", "M", "n", "density", "epochs", "flags", "acc", "nll", "ece",
              "disagr.", "OoD AUROC", f"train {unit}", "train rel.", f"test {t_unit}/img", "params"]
    title = (f"compare: ensembles in {parent}/ (mean ± std over n replicates; train rel. = training FLOPs "
             f"relative to {basis}; OoD AUROC: max-softmax, mean over the OoD sets, where the ood mode was run)")
    return Table(title, header, body)


# --------------------------------------------------------------------------- run
def compare(cc: CompareConfig, out: Callable[[str], None] = print) -> dict:
    """Evaluate (where needed) and compare the folders; writes compare_<run_id>.{json,csv} and a figure."""
    device = validate_config(cc.template)
    if cc.members_per_ensemble is not None and cc.members_per_ensemble < 1:
        raise UsageError(f"--members-per-ensemble {cc.members_per_ensemble} must be at least 1")
    paths = _check_folders(cc.folders)
    labels, parent = _labels(paths)
    _check_setting(paths, labels, cc.allow_mixed)
    out_dir = Path(cc.output_dir).expanduser() if cc.output_dir else paths[0].resolve().parent / "compare"
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--output-dir {out_dir} is a file; pass a folder")
    folders = [_load_folder(p, label, cc.template, out) for p, label in zip(paths, labels)]
    rows, flags = [], []
    for f in folders:
        new = folder_rows(f, cc.members_per_ensemble, cc.template)
        rows += new
        flags += [CR.folder_flags(f)] * len(new)
    CR.describe_flags(rows, flags)
    basis = _apply_basis(rows)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        run_id = reserve_run_id(out_dir, "compare")
    except OSError as err:
        raise UsageError(f"cannot write to the output folder {out_dir} ({err.strerror or err}); pass a writable "
                         f"--output-dir") from None
    print_table(_table(rows, basis, parent), out)
    setting = ", ".join(dict.fromkeys(f"{r['model']} on {r['dataset']}" for r in rows))
    plot = out_dir / "plots" / f"{run_id}_compare.png"
    draw(Figure("compare", "compare", "compare", {"rows": rows, "title": f"ensembles compared: {setting}",
                                                  "basis": basis}), plot)
    argv = None if cc.command is None else ["ensemble_freetickets.py", *cc.command]
    document = {"format": "freetickets-compare", "version": 2, "run_id": run_id,
                "created": _dt.datetime.now().isoformat(timespec="seconds"), "folders": [str(f) for f in paths],
                "folders_under": parent,
                "flops_relative_to": basis, "provenance": provenance(argv, device),
                "columns": list(COMPARE_COLUMNS), "rows": rows, "plots": {"compare": str(plot)}}
    json_path, csv_path = write_rows(out_dir, "compare", run_id, document, COMPARE_COLUMNS)
    out("")
    out(f"comparison: {_shown(json_path)} and {csv_path.name} (copies: compare_latest.*); plot: {_shown(plot)}")
    document["json_path"], document["csv_path"] = str(json_path), str(csv_path)
    return document
