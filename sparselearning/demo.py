"""`make demo`: train and evaluate a small FreeTickets ensemble on Fashion-MNIST, on the CPU.

The paper's premise is sparse subnetworks of an over-parameterized network, so the demo trains the
784-1024-512 MLP (``MLPCIFAR10``, 1.33M weights; about 12 CPU-seconds per epoch) with the paper's
epoch proportions scaled down to E epochs. It runs the repository's own scripts, exactly as a user
would type them:
  1. three dense runs of E epochs, seeds 17-19 (main_individual.py): the dense model and a dense
     deep ensemble of 3;
  2. one EDST run at density 0.2: round(0.6E) exploration epochs + 3 refinement phases of
     round(0.4E) epochs, one free ticket per phase (main_EDST.py);
  3. ensemble_freetickets.py --mode predict,calibration on both;
then prints accuracy, NLL, ECE, training FLOPs relative to one dense run, parameters, and a verdict
computed from these numbers. Runs go as many at a time as there are CPUs (at most 4, the number of
runs), one log each under results/demo/logs/. Runs that already finished are resumed (a no-op).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .jobs import REPO, Job, run_jobs
from .runfolder import run_folder

OUT = "results/demo"
MODEL, DATA, DENSITY, TICKETS = "MLPCIFAR10", "fashionmnist", 0.2, 3
EPOCHS = 5  # E; fits 5 minutes on 2 cores (3 x 5 dense + 9 EDST epochs of ~12 s, 2 at a time)
DENSE_SEEDS = (17, 18, 19)
EDST_SEED = 17
EXPLO, PHASE = round(0.6 * EPOCHS), round(0.4 * EPOCHS)
METRICS = (("acc", "accuracy", 1), ("nll", "NLL", -1), ("ece15", "ECE", -1))  # (key, name, +1: higher is better)


def common(seed: int) -> list[str]:
    return ["--model", MODEL, "--data", DATA, "--seed", str(seed), "--output-dir", OUT, "--resume", "--no-progress"]


def training_jobs() -> list[Job]:
    edst = ["main_EDST.py", "--sparse", "--density", str(DENSITY), "--epochs", str(EXPLO + TICKETS * PHASE),
            "--epochs-explo", str(EXPLO), "--model-num", str(TICKETS), "--update-frequency", "200", "--nolrsche",
            *common(EDST_SEED)]
    return [Job("EDST", edst)] + [Job(f"dense-seed{s}", ["main_individual.py", "--epochs", str(EPOCHS), *common(s)])
                                  for s in DENSE_SEEDS]


def run_all(jobs: list[Job]) -> None:
    """The jobs, as many at a time as there are CPUs (their threads shared out); stops at the first failure."""
    n = max(1, min(len(jobs), os.cpu_count() or 1))
    run_jobs(jobs, n, max(1, (os.cpu_count() or 1) // n), REPO / OUT / "logs", echo_commands=True, stopped_by="demo")


def ensemble_rows(run_dir: Path) -> dict:
    """{member: {metric: value}} from the evaluation's latest results."""
    data = json.loads((run_dir / "eval" / "results_latest.json").read_text())
    table: dict[str, dict] = {}
    for row in data["rows"]:
        if row["mode"] in ("predict", "calibration") and row["corruption"] is None:
            table.setdefault(row["member"], {})[row["metric"]] = row["value"]
    return table


def verdict(dense: dict, dense_std: dict, edst: dict, flops_rel: float, n_dense: int) -> str:
    """One line saying where the EDST ensemble beats, loses to or ties the dense model, from the numbers.

    A difference smaller than the sample std of the n_dense dense runs counts as a tie ("within the
    spread"); ``dense`` holds the mean of those runs.
    """
    better, worse, tied = [], [], []
    for key, name, sign in METRICS:
        diff = sign * (edst[key] - dense[key])
        (tied if abs(diff) < dense_std.get(key, 0.0) else better if diff > 0 else worse).append(name)
    parts = []
    if better:
        parts.append("beats the dense model in " + " and ".join(better))
    if worse:
        parts.append(("loses to it" if better else "loses to the dense model") + " in " + " and ".join(worse))
    if tied:
        parts.append(f"is within the spread of the {n_dense} dense runs in " + " and ".join(tied))
    return f"verdict: the EDST ensemble {', '.join(parts)}, at {flops_rel:.2f}x the training FLOPs of one dense run."


def main() -> None:
    start = time.time()
    members = [run_folder(REPO / OUT, MODEL, DATA, "dense", s) for s in DENSE_SEEDS]
    dense_root = members[0].parent
    edst_dir = run_folder(REPO / OUT, MODEL, DATA, "EDST", EDST_SEED, DENSITY, TICKETS)
    run_all(training_jobs())
    if set(dense_root.iterdir()) - set(members) - {dense_root / "eval"}:
        print(f"note: {dense_root} holds other runs too; they join the deep ensemble")
    run_all([Job(f"eval-{name}", ["ensemble_freetickets.py", "--mode", "predict,calibration", "--resume",
                                  str(d.relative_to(REPO)), "--data", DATA])
             for name, d in (("dense", dense_root), ("EDST", edst_dir))])
    dense_sums = [json.loads((d / "summary.json").read_text()) for d in members]
    edst_sum = json.loads((edst_dir / "summary.json").read_text())
    dense, edst = ensemble_rows(dense_root), ensemble_rows(edst_dir)
    dense_flops = sum(s["training_flops"] for s in dense_sums) / len(dense_sums)
    dense_params = dense_sums[0]["parameters"]["active"]
    n_tickets = len(edst_sum["tickets"])
    edst_flops = edst_sum["training_flops"] / dense_flops
    lines = [
        (f"dense model (mean of {len(members)})", dense["members_mean"], 1.0, dense_params),
        (f"dense deep ensemble (M={len(members)})", dense["ensemble"], len(members), len(members) * dense_params),
        (f"EDST ticket (mean of {n_tickets})", edst["members_mean"], edst_flops, edst_sum["parameters"]["active"]),
        (f"EDST ensemble (M={n_tickets})", edst["ensemble"], edst_flops, n_tickets * edst_sum["parameters"]["active"]),
    ]
    print(f"\nFreeTickets demo: {MODEL} (784-1024-512) on Fashion-MNIST test (10,000 images), CPU, "
          f"{time.time() - start:.0f} s")
    print(f"dense runs {EPOCHS} epochs; EDST {EXPLO} exploration + {n_tickets} x {PHASE} refinement epochs, "
          f"density {DENSITY}")
    print(f"{'':30s} {'accuracy':>9s} {'NLL':>7s} {'ECE':>7s} {'train FLOPs':>12s} {'parameters':>11s}")
    for name, m, flops, params in lines:
        print(f"{name:30s} {m['acc']:9.4f} {m['nll']:7.4f} {m['ece15']:7.4f} {flops:11.2f}x {params:11,d}")
    print(verdict(dense["members_mean"], dense["members_std"], edst["ensemble"], edst_flops, len(members)))
    print(f"{len(members)} dense seeds and 1 EDST seed, {EPOCHS} epochs: an illustration, not a result "
          "(benchmarks/reproduce_small.py --regime over has replicates).")
    print("train FLOPs: relative to one dense run (RigL convention: 3x forward per step, dense gradients at "
          "topology updates);\nparameters: active (mask-on) weights (EDST tickets at density 0.2; biases dense).")
    print(f"tickets, summaries, logs: {OUT}/ (evaluate again with ensemble_freetickets.py --resume DIR --mode all)")


if __name__ == "__main__":
    main()
