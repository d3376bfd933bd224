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
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = "results/demo"
MODEL, DATA, DENSITY, TICKETS = "MLPCIFAR10", "fashionmnist", 0.2, 3
EPOCHS = 5  # E; fits 5 minutes on 2 cores (3 x 5 dense + 9 EDST epochs of ~12 s, 2 at a time)
DENSE_SEEDS = (17, 18, 19)
EDST_SEED = 17
EXPLO, PHASE = round(0.6 * EPOCHS), round(0.4 * EPOCHS)
METRICS = (("acc", "accuracy", 1), ("nll", "NLL", -1), ("ece15", "ECE", -1))  # (key, name, +1: higher is better)


def common(seed: int) -> list[str]:
    return ["--model", MODEL, "--data", DATA, "--seed", str(seed), "--output-dir", OUT, "--resume", "--no-progress"]


def training_commands() -> list[list[str]]:
    edst = ["main_EDST.py", "--sparse", "--density", str(DENSITY), "--epochs", str(EXPLO + TICKETS * PHASE),
            "--epochs-explo", str(EXPLO), "--model-num", str(TICKETS), "--update-frequency", "200", "--nolrsche",
            *common(EDST_SEED)]
    return [edst] + [["main_individual.py", "--epochs", str(EPOCHS), *common(s)] for s in DENSE_SEEDS]


def run_all(commands: list[list[str]], log_names: list[str]) -> None:
    """Run the commands, as many at a time as there are CPUs; stop at the first failure."""
    n = max(1, min(len(commands), os.cpu_count() or 1))
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // n)))
    logs = REPO / OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    queue, running = list(zip(commands, log_names)), []
    while queue or running:
        while queue and len(running) < n:
            cmd, name = queue.pop(0)
            print("$ python " + " ".join(cmd), flush=True)
            fh = open(logs / f"{name}.log", "w")
            running.append((subprocess.Popen([sys.executable, *cmd], cwd=REPO, env=env, stdout=fh,
                                             stderr=subprocess.STDOUT), fh, cmd, name))
        time.sleep(0.5)
        for item in list(running):
            proc, fh, cmd, name = item
            if proc.poll() is None:
                continue
            fh.close()
            running.remove(item)
            if proc.returncode != 0:
                for other in running:
                    other[0].terminate()
                tail = (logs / f"{name}.log").read_text().splitlines()[-10:]
                sys.exit("\n".join(tail) + f"\ndemo stopped: `python {' '.join(cmd)}` failed (log: {logs / name}.log)")


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
    base = REPO / OUT / MODEL / DATA
    dense_root = base / "individual" / "dense"
    edst_dir = base / f"density_{DENSITY:g}" / "EDST" / f"M={TICKETS}" / f"seed={EDST_SEED}"
    run_all(training_commands(), ["EDST"] + [f"dense-seed{s}" for s in DENSE_SEEDS])
    members = [dense_root / f"seed={s}" for s in DENSE_SEEDS]
    if set(dense_root.iterdir()) - set(members) - {dense_root / "eval"}:
        print(f"note: {dense_root} holds other runs too; they join the deep ensemble")
    run_all([["ensemble_freetickets.py", "--mode", "predict,calibration", "--resume", str(d.relative_to(REPO)),
              "--data", DATA] for d in (dense_root, edst_dir)], ["eval-dense", "eval-EDST"])
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
          "topology updates);\nparameters: non-zero weights (EDST tickets at density 0.2; biases dense).")
    print(f"tickets, summaries, logs: {OUT}/ (evaluate again with ensemble_freetickets.py --resume DIR --mode all)")


if __name__ == "__main__":
    main()
