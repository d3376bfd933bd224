"""``--compare DIR [DIR ...]``: several methods' ensembles side by side, in the paper's Table 1 layout.

Each DIR is one ensemble (e.g. ``.../DST/`` holding ``seed=*/model.pth``, or an EDST ``M=3`` folder).
Its metrics come from its evaluation results (``DIR/eval/results_latest.json``; a folder without
them, or whose results lack predict or calibration, is evaluated first with
predict,disagreement,calibration), its cost from the ``summary.json`` of each training run in it.

Training FLOPs are summed over the runs of a folder; when a dense folder is among those compared they
are given relative to one dense model of it (the dense folder's mean per run), else as the summaries'
figure relative to one dense model trained for 250 epochs. Parameters: the active (non-zero) weights
of all members, i.e. what the ensemble holds at test time.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import UsageError
from ..provenance import provenance
from ..runfolder import refuse_linked_outputs, remove_leftovers
from .config import EvalConfig, validate_config
from .records import Figure, Table
from .report import draw, fmt, print_table, reserve_run_id, write_rows
from .tickets import discover_tickets

__all__ = ["CompareConfig", "compare_config", "compare", "COMPARE_COLUMNS", "comparison_row"]

COMPARE_COLUMNS = ("method", "M", "density", "acc", "nll", "ece", "disagreement", "training_flops_relative",
                   "training_flops", "parameters", "folder")
_EVAL_MODES = ("predict", "disagreement", "calibration")


@dataclass
class CompareConfig:
    folders: Sequence[str]
    output_dir: str | None = None
    template: EvalConfig = dataclasses.field(default_factory=lambda: EvalConfig(resume=""))  # flags for evaluations
    command: Sequence[str] | None = None


def compare_config(args: argparse.Namespace, argv: Sequence[str] | None = None) -> CompareConfig:
    """The parsed flags of ``--compare``: the evaluation flags become the template of the evaluations."""
    from .cli import config_from_args

    flags = argparse.Namespace(**{**vars(args), "mode": ",".join(_EVAL_MODES), "resume": ""})
    template = dataclasses.replace(config_from_args(flags, argv), modes_explicit=False, output_dir=None)
    return CompareConfig(folders=list(args.compare), output_dir=args.output_dir, template=template,
                         command=template.command)


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


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UsageError(f"{path} is unreadable ({type(err).__name__}); delete it to evaluate the folder again") \
            from None


def _has_modes(results: dict) -> bool:
    done = set(results.get("modes_run", [])) | set(results.get("skipped", {}))
    return {"predict", "calibration"} <= done and ("disagreement" in done or len(results.get("members", [])) < 2)


def _results_for(folder: Path, template: EvalConfig, out: Callable[[str], None]) -> dict:
    from .runner import evaluate

    results = _read_json(folder / "eval" / "results_latest.json")
    if results is None or not _has_modes(results):
        out(f"compare: evaluating {folder} ({', '.join(_EVAL_MODES)}) first")
        results = evaluate(dataclasses.replace(template, resume=str(folder)), out)
    return results


def _summaries(results: dict) -> list[tuple[dict, list[str]]]:
    """(summary.json, member file names in that run) for each training run holding a member."""
    runs: dict[Path, list[str]] = {}
    for m in results["members"]:
        p = Path(m["path"])
        runs.setdefault(p.parent, []).append(p.name)
    out = []
    for run_dir, files in runs.items():
        s = _read_json(run_dir / "summary.json")
        if s is not None:
            out.append((s, files))
    return out


# --------------------------------------------------------------------------- one row
def _value(results: dict, mode: str, member: str, metric: str) -> float | None:
    hits = [r["value"] for r in results["rows"] if r["mode"] == mode and r["member"] == member
            and r["metric"] == metric and r.get("split") == "test"]
    return hits[-1] if hits else None


def _parameters(summaries: list[tuple[dict, list[str]]], n_members: int) -> int | None:
    total, found = 0, 0
    for s, files in summaries:
        active = {t.get("file"): t.get("active_weights") for t in s.get("tickets", [])}
        for f in files:
            v = active.get(f, (s.get("parameters") or {}).get("active"))
            if v is not None:
                total, found = total + int(v), found + 1
    return total if found == n_members else None


def comparison_row(folder: Path, results: dict) -> dict:
    """Method, ensemble size, density, ensemble metrics and training cost of one folder."""
    summaries = _summaries(results)
    members = results["members"]
    kinds = [s.get("kind") for s, _ in summaries] or [m.get("kind") for m in members]
    method = "+".join(dict.fromkeys(str(k) for k in kinds if k)) or folder.name
    dens = [m["density"] for m in members if m.get("density") is not None]
    bins = results.get("config", {}).get("ece_bins", 15)
    flops = [s.get("training_flops") for s, _ in summaries]
    rel = [s.get("training_flops_relative_to_dense_250_epochs") for s, _ in summaries]
    complete = bool(summaries) and len(summaries) == len({Path(m["path"]).parent for m in members})
    return {
        "method": method, "M": len(members), "density": sum(dens) / len(dens) if dens else None,
        "acc": _value(results, "predict", "ensemble", "acc"), "nll": _value(results, "predict", "ensemble", "nll"),
        "ece": _value(results, "calibration", "ensemble", f"ece{bins}"),
        "disagreement": _value(results, "disagreement", "pairs_mean", "disagreement"),
        "training_flops": sum(flops) if complete and None not in flops else None,
        "training_flops_250": sum(rel) if complete and None not in rel else None,
        "runs": len(summaries), "parameters": _parameters(summaries, len(members)),
        "folder": str(folder), "results": results.get("json_path") or str(folder / "eval" / "results_latest.json"),
        "model": results.get("model"), "dataset": results.get("dataset"),
    }


def _relative_flops(rows: list[dict]) -> str:
    """Fill ``training_flops_relative``; returns what it is relative to."""
    dense = next((r for r in rows if r["method"] == "dense" and r["training_flops"] and r["runs"]), None)
    if dense is not None:
        unit = dense["training_flops"] / dense["runs"]
        for r in rows:
            r["training_flops_relative"] = None if r["training_flops"] is None else r["training_flops"] / unit
        return f"one dense model of {dense['folder']}"
    for r in rows:
        r["training_flops_relative"] = r["training_flops_250"]
    return "one dense model trained for 250 epochs (summary.json)"


# --------------------------------------------------------------------------- run
def _table(rows: list[dict], basis: str) -> Table:
    def flops(v):
        return "n/a" if v is None else f"{v:.3g}x"

    def params(v):
        return "n/a" if v is None else (f"{v / 1e6:.2f}M" if v >= 1e5 else str(v))

    body = [[r["method"], r["M"], fmt(r["density"]), r["acc"], r["nll"], r["ece"], r["disagreement"],
             flops(r["training_flops_relative"]), params(r["parameters"])] for r in rows]
    return Table(f"compare: ensembles (training FLOPs relative to {basis})",
                 ["method", "M", "density", "acc", "nll", "ece", "disagreement", "train FLOPs", "params"], body)


def compare(cc: CompareConfig, out: Callable[[str], None] = print) -> dict:
    """Evaluate (where needed) and compare the folders; writes compare_<run_id>.{json,csv} and a figure."""
    device = validate_config(cc.template)
    folders = _check_folders(cc.folders)
    out_dir = Path(cc.output_dir).expanduser() if cc.output_dir else folders[0].resolve().parent / "compare"
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--output-dir {out_dir} is a file; pass a folder")
    refuse_linked_outputs(out_dir, named=bool(cc.output_dir))
    rows = [comparison_row(f, _results_for(f, cc.template, out)) for f in folders]
    basis = _relative_flops(rows)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out_dir)
        run_id = reserve_run_id(out_dir, "compare")
    except OSError as err:
        raise UsageError(f"cannot write to the output folder {out_dir} ({err.strerror or err}); pass a writable "
                         f"--output-dir") from None
    print_table(_table(rows, basis), out)
    setting = ", ".join(sorted({f"{r['model']} on {r['dataset']}" for r in rows}))
    plot = out_dir / "plots" / f"{run_id}_compare.png"
    draw(Figure("compare", "compare", "compare", {"rows": rows, "title": f"ensembles compared: {setting}"}), plot)
    argv = None if cc.command is None else ["ensemble_freetickets.py", *cc.command]
    document = {"format": "freetickets-compare", "version": 1, "run_id": run_id,
                "created": _dt.datetime.now().isoformat(timespec="seconds"), "folders": [str(f) for f in folders],
                "flops_relative_to": basis, "provenance": provenance(argv, device),
                "columns": list(COMPARE_COLUMNS), "rows": rows, "plots": {"compare": str(plot)}}
    json_path, csv_path = write_rows(out_dir, "compare", run_id, document, COMPARE_COLUMNS)
    out("")
    out(f"comparison: {json_path} and {csv_path.name} (copies: compare_latest.*); plot: {plot}")
    document["json_path"], document["csv_path"] = str(json_path), str(csv_path)
    return document
