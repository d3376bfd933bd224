"""`make demo`: train and evaluate a small FreeTickets ensemble on Fashion-MNIST, on the CPU.

Runs the repository's own scripts, exactly as a user would type them:
  1. a dense baseline (main_individual.py),
  2. an EDST ensemble, M=3 tickets at density 0.2, from one run (main_EDST.py),
  3. ensemble_freetickets.py on both,
then prints accuracy, NLL, ECE, training FLOPs relative to the dense model, and parameters.
Runs that already finished are resumed (a no-op), never overwritten.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = "results/demo"
COMMON = ["--model", "cnn-small", "--data", "fashionmnist", "--seed", "17", "--output-dir", OUT, "--resume"]
DENSE = ["main_individual.py", "--epochs", "4", *COMMON]
EDST = ["main_EDST.py", "--sparse", "--density", "0.2", "--epochs", "6", "--epochs-explo", "3", "--model-num", "3",
        "--update-frequency", "200", "--nolrsche", *COMMON]


def run(cmd: list[str]) -> None:
    print("\n$ python " + " ".join(cmd), flush=True)
    if subprocess.run([sys.executable, *cmd], cwd=REPO).returncode != 0:
        sys.exit(f"demo stopped: `python {' '.join(cmd)}` failed (see above)")


def ensemble_rows(run_dir: Path) -> dict:
    """{member: {metric: value}} from the evaluation's latest results."""
    data = json.loads((run_dir / "eval" / "results_latest.json").read_text())
    table: dict[str, dict] = {}
    for row in data["rows"]:
        if row["mode"] in ("predict", "calibration") and row["corruption"] is None:
            table.setdefault(row["member"], {})[row["metric"]] = row["value"]
    return table


def main() -> None:
    start = time.time()
    run(DENSE)
    run(EDST)
    dense_dir = REPO / OUT / "cnn-small/fashionmnist/individual/dense/seed=17"
    edst_dir = REPO / OUT / "cnn-small/fashionmnist/density_0.2/EDST/M=3/seed=17"
    for run_dir in (dense_dir, edst_dir):
        run(["ensemble_freetickets.py", "--mode", "predict,calibration", "--resume", str(run_dir.relative_to(REPO)),
             "--data", "fashionmnist"])
    dense_sum = json.loads((dense_dir / "summary.json").read_text())
    edst_sum = json.loads((edst_dir / "summary.json").read_text())
    dense, edst = ensemble_rows(dense_dir), ensemble_rows(edst_dir)
    dense_flops = dense_sum["training_flops"]
    n_tickets = len(edst_sum["tickets"])
    lines = [
        ("dense model (1 run)", dense["model.pth"], 1.0, dense_sum["parameters"]["active"]),
        ("EDST ticket (mean of 3)", edst["members_mean"], edst_sum["training_flops"] / dense_flops,
         edst_sum["parameters"]["active"]),
        (f"EDST ensemble (M={n_tickets})", edst["ensemble"], edst_sum["training_flops"] / dense_flops,
         n_tickets * edst_sum["parameters"]["active"]),
    ]
    print(f"\nFreeTickets demo: cnn-small on Fashion-MNIST test (10,000 images), CPU, {time.time() - start:.0f} s")
    print(f"{'':26s} {'accuracy':>9s} {'NLL':>7s} {'ECE':>7s} {'train FLOPs':>12s} {'parameters':>11s}")
    for name, m, flops, params in lines:
        print(f"{name:26s} {m['acc']:9.4f} {m['nll']:7.4f} {m['ece15']:7.4f} {flops:11.2f}x {params:11,d}")
    print("train FLOPs: relative to the dense run above (RigL convention: 3x forward per step, dense gradients at "
          "topology updates);\nparameters: non-zero weights (EDST tickets at density 0.2; BatchNorm and biases dense).")
    print(f"tickets, summaries and plots: {OUT}/ (evaluate again with ensemble_freetickets.py --resume DIR --mode all)")


if __name__ == "__main__":
    main()
