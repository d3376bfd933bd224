"""``ensemble_freetickets.py --compare``: folders evaluated when needed, Table 1 rows, files and figure."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers import run_cli_captured, write_fashion_mnist
from models import get_model
from sparselearning.checkpoint import atomic_save, build_ticket
from sparselearning.evaluation import main

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _write_run(run, kind: str, seed: int, density: float, flops: float, rel250: float, active: int) -> None:
    torch.manual_seed(seed)
    model = get_model("cnn-small", 10, 1, 28)
    masks = None if density == 1 else {n: torch.rand(p.shape) < density
                                       for n, p in model.named_parameters() if p.dim() > 1}
    meta = {"model": "cnn-small", "num_classes": 10, "in_channels": 1, "image_size": 28, "dataset": "fashionmnist",
            "normalization": {"mean": [0.2860], "std": [0.3530]}, "kind": kind, "seed": seed, "epoch": 1,
            "ticket_index": 0, "role": "ticket", "density": density}
    atomic_save(build_ticket(model, masks, meta), run / "model.pth")
    summary = {"kind": kind, "training_flops": flops, "training_flops_relative_to_dense_250_epochs": rel250,
               "parameters": {"active": active}, "tickets": [{"file": "model.pth", "active_weights": active}]}
    (run / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    data = write_fashion_mnist(base / "data", n_train=20, n_test=30)
    root = base / "results" / "cnn-small" / "fashionmnist"
    dst, dense = root / "density_0.5" / "DST", root / "density_1" / "dense"
    _write_run(dst / "seed=1", "DST", 1, 0.5, 2e9, 0.02, 1000)
    _write_run(dst / "seed=2", "DST", 2, 0.5, 3e9, 0.03, 1200)
    _write_run(dense / "seed=1", "dense", 3, 1.0, 8e9, 0.08, 5000)
    return {"data": data, "dst": dst, "dense": dense, "root": root}


def _run(argv, capsys):
    return run_cli_captured(main, argv, capsys)


def test_compare_evaluates_then_tabulates(runs, capsys):
    argv = ["--compare", str(runs["dst"]), str(runs["dense"]), "--data-dir", str(runs["data"]), "--no-download"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert out.count("compare: evaluating") == 2  # neither folder had results yet
    folder = runs["root"] / "density_0.5" / "compare"  # default: the first folder's parent
    js = json.loads((folder / "compare_latest.json").read_text())
    dst, dense = js["rows"]
    assert (dst["method"], dst["M"], dense["method"], dense["M"]) == ("DST", 2, "dense", 1)
    # training FLOPs summed over the runs, relative to the dense folder's model: (2e9 + 3e9) / 8e9
    assert dst["training_flops"] == 5e9 and dst["training_flops_relative"] == pytest.approx(0.625)
    assert dense["training_flops_relative"] == pytest.approx(1.0)
    assert dst["parameters"] == 2200 and dense["parameters"] == 5000
    assert dst["density"] == pytest.approx(0.5) and dense["density"] == 1.0
    assert dense["disagreement"] is None and 0 <= dst["disagreement"] <= 1
    ev = json.loads((runs["dst"] / "eval" / "results_latest.json").read_text())
    ens = {r["metric"]: r["value"] for r in ev["rows"] if r["member"] == "ensemble" and r["mode"] in
           ("predict", "calibration")}
    assert dst["acc"] == ens["acc"] and dst["nll"] == pytest.approx(ens["nll"]) and dst["ece"] == ens["ece15"]
    with open(folder / "compare_latest.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["method"] for r in table] == ["DST", "dense"] and float(table[0]["acc"]) == dst["acc"]
    assert (folder / "plots" / f"{js['run_id']}_compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "== compare:" in out and "0.625x" in out and js["provenance"]["command"][0] == "ensemble_freetickets.py"

    # a second comparison reuses the results (no evaluation), without a dense folder: the 250-epoch figure
    code, out, err = _run(["--compare", str(runs["dst"]), "--output-dir", str(runs["root"] / "cmp2"), "--data-dir",
                           str(runs["data"]), "--no-download"], capsys)
    assert code == 0, err
    assert "compare: evaluating" not in out
    (row,) = json.loads((runs["root"] / "cmp2" / "compare_latest.json").read_text())["rows"]
    assert row["training_flops_relative"] == pytest.approx(0.05)


# Bad folders and flags (one line, exit 2, nothing written): tests/e2e/test_bad_inputs.py.
