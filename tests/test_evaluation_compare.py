"""``ensemble_freetickets.py --compare``: folders evaluated when needed, Table 1 rows, costs, replicates, figure.

The runs are tickets of cnn-small with summaries whose FLOPs follow the engine's accounting for a model
of f_dense = 2000 and f_sparse = 600 forward FLOPs per image, 90 training images: one dense epoch costs
D = 3 * 2000 * 90 = 540,000 FLOPs and one sparse epoch 3 * 600 * 90 = 162,000.
"""
from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from helpers import run_cli_captured, write_fashion_mnist
from models import get_model
from sparselearning import costs
from sparselearning.checkpoint import atomic_save, build_ticket
from sparselearning.evaluation import main

pytestmark = pytest.mark.usefixtures("single_torch_thread")

F_DENSE, F_SPARSE, N_TRAIN = 2000, 600, 90
D = 3 * F_DENSE * N_TRAIN  # one dense epoch


def _write_run(base, rel, kind: str, seed: int, density: float, epochs: int, flags: dict | None = None,
               dataset: str = "fashionmnist", extra_flops: float = 0.0) -> None:
    """A run folder ``base/rel``: a ticket and a summary as the training scripts write them."""
    run = base / rel
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = get_model("cnn-small", 10, 1, 28)
    masks = None if density == 1 else {n: torch.rand(p.shape) < density
                                       for n, p in model.named_parameters() if p.dim() > 1}
    meta = {"model": "cnn-small", "num_classes": 10, "in_channels": 1, "image_size": 28, "dataset": dataset,
            "normalization": {"mean": [0.2860], "std": [0.3530]}, "kind": kind, "seed": seed, "epoch": epochs,
            "ticket_index": 0, "role": "ticket", "density": density}
    atomic_save(build_ticket(model, masks, meta), run / "model.pth")
    fwd = F_DENSE if density == 1 else F_SPARSE
    flops = 3 * fwd * N_TRAIN * epochs + extra_flops
    active = 5000 if density == 1 else 1000 + seed
    summary = {"kind": kind, "status": "finished", "run_dir": rel, "epochs_total": epochs,
               "flags": {"seed": seed, "epochs": epochs, "output_dir": "runs", **(flags or {})},
               "training_flops": flops, "training_flops_relative_to_dense_250_epochs": flops / (250 * D),
               "dense_forward_flops_per_sample": F_DENSE, "sparse_forward_flops_per_sample": fwd,
               "parameters": {"active": active}, "tickets": [{"file": "model.pth", "active_weights": active}]}
    (run / "summary.json").write_text(json.dumps(summary))


def _study(base):
    """dense x2 (4 epochs), DST x4 (4 epochs), PF x2 (2 fine-tuning epochs from the dense runs)."""
    data = write_fashion_mnist(base / "data", n_train=20, n_test=30)
    root = base / "runs"
    for s in (1, 2):
        _write_run(base, f"runs/individual/dense/seed={s}", "dense", s, 1.0, 4)
        _write_run(base, f"runs/density_0.5/PF/seed={s}", "PF", 10 + s, 0.5, 2,
                   {"pretrained": f"runs/individual/dense/seed={s}/model.pth"})
    for s in (1, 2, 3, 4):
        _write_run(base, f"runs/density_0.5/DST/seed={s}", "DST", 20 + s, 0.5, 4)
    return {"data": data, "root": root, "dense": root / "individual" / "dense", "dst": root / "density_0.5" / "DST",
            "pf": root / "density_0.5" / "PF"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return _study(tmp_path_factory.mktemp("compare"))


def _run(argv, capsys):
    return run_cli_captured(main, argv, capsys)


def _flags(s):
    return ["--data-dir", str(s["data"]), "--no-download", "--no-progress"]


def test_compare_rows_costs_and_files(study, capsys):
    s = study
    code, out, err = _run(["--compare", str(s["dst"]), str(s["pf"]), str(s["dense"]), *_flags(s)], capsys)
    assert code == 0, err
    assert out.count("has no evaluation results; evaluating it") == 3
    folder = s["root"] / "density_0.5" / "compare"  # default: the first folder's parent
    js = json.loads((folder / "compare_latest.json").read_text())
    rows = {(r["method"], r["role"]): r for r in js["rows"]}
    dst, pf = rows[("DST", "ensemble")], rows[("PF", "ensemble")]
    single, deep = rows[("dense", "single")], rows[("dense", "ensemble")]
    assert (dst["M"], dst["n"], pf["M"], deep["M"], single["M"], single["n"]) == ("4", 1, "2", "2", "1", 2)
    assert dst["folder"].endswith("density_0.5/DST") and dst["model"] == "cnn-small"
    assert dst["dataset"] == "fashionmnist"
    # training FLOPs, worked by hand: DST 4 runs x 4 sparse epochs; PF 2 x (4 dense epochs of pre-training +
    # 2 sparse fine-tuning epochs); relative to one dense run of the compared dense runs' 4 epochs
    assert dst["training_flops"] == pytest.approx(4 * 4 * 162_000)
    assert pf["training_flops"] == pytest.approx(2 * (4 * 540_000 + 2 * 162_000)) == pytest.approx(4_968_000)
    assert pf["training_flops_relative"] == pytest.approx(4_968_000 / 2_160_000)
    assert dst["training_flops_relative"] == pytest.approx(2_592_000 / 2_160_000)
    assert deep["training_flops_relative"] == pytest.approx(2.0) and single["training_flops_relative"] == 1.0
    assert "trained 4 epochs" in js["flops_relative_to"]
    # test time: the members' sparse forward FLOPs per image, and their active weights
    assert dst["test_flops"] == 4 * 600 and deep["test_flops"] == 2 * 2000
    assert dst["parameters"] == 1021 + 1022 + 1023 + 1024 and deep["parameters"] == 10_000
    # metrics: the ensemble's rows of the folder's evaluation; the single dense model = mean of its members
    ev = json.loads((s["dst"] / "eval" / "results_latest.json").read_text())
    ens = {r["metric"]: r["value"] for r in ev["rows"] if r["member"] == "ensemble" and r["split"] == "test"}
    assert dst["acc"] == ens["acc"] and dst["ece"] == ens["ece15"] and 0 <= dst["disagreement"] <= 1
    dense_ev = json.loads((s["dense"] / "eval" / "results_latest.json").read_text())
    accs = [r["value"] for r in dense_ev["rows"] if r["mode"] == "predict" and r["metric"] == "acc"
            and r["member"].endswith("model.pth")]
    assert single["acc"] == pytest.approx(sum(accs) / 2)
    with open(folder / "compare_latest.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["method"] for r in table] == ["DST", "PF", "dense", "dense"] and float(table[0]["acc"]) == dst["acc"]
    assert (folder / "plots" / f"{js['run_id']}_compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "train rel." in out and "1.200x" in out and "2.300x" in out

    # again, DST alone: results reused (no evaluation); no dense folder, so the 250-epoch yardstick, stated
    code, out, err = _run(["--compare", str(s["dst"]), "--output-dir", str(s["root"] / "cmp2"), *_flags(s)], capsys)
    assert code == 0, err and "evaluating" not in out
    doc = json.loads((s["root"] / "cmp2" / "compare_latest.json").read_text())
    assert doc["rows"][0]["training_flops_relative"] == pytest.approx(2_592_000 / (250 * 540_000))
    assert "trained 250 epochs" in doc["flops_relative_to"] and "no dense folder" in doc["flops_relative_to"]


def test_replicates_match_separate_evaluations(study, capsys):
    """DST/ with 4 seeds as 2 ensembles of 2: each replicate equals the evaluation of a folder holding only it."""
    s = study
    code, out, err = _run(["--compare", str(s["dst"]), "--members-per-ensemble", "2", "--output-dir",
                           str(s["root"] / "cmp3"), *_flags(s)], capsys)
    assert code == 0, err
    (row,) = json.loads((s["root"] / "cmp3" / "compare_latest.json").read_text())["rows"]
    assert (row["M"], row["n"]) == ("2", 2)
    accs = []
    for k, seeds in enumerate(((1, 2), (3, 4))):
        alone = s["root"] / f"alone{k}"
        for seed in seeds:
            shutil.copytree(s["dst"] / f"seed={seed}", alone / f"seed={seed}")
        code, _, err = _run(["--mode", "predict", "--resume", str(alone), *_flags(s)], capsys)
        assert code == 0, err
        ev = json.loads((alone / "eval" / "results_latest.json").read_text())
        accs.append(next(r["value"] for r in ev["rows"] if r["member"] == "ensemble" and r["metric"] == "acc"))
    assert row["acc"] == pytest.approx(sum(accs) / 2)
    assert row["acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert row["training_flops"] == pytest.approx(2 * 4 * 162_000)  # one replicate: 2 runs of 4 sparse epochs


def test_replaced_ticket_is_evaluated_again(evaluated, tmp_path, capsys):
    shutil.copytree(evaluated, tmp_path / "study")
    s = {"data": tmp_path / "study" / "data", "pf": tmp_path / "study" / "runs" / "density_0.5" / "PF"}
    argv = ["--compare", str(s["pf"]), *_flags(s)]
    first = json.loads((s["pf"] / "eval" / "results_latest.json").read_text())
    _write_run(tmp_path / "study", "runs/density_0.5/PF/seed=2", "PF", 99, 0.5, 2)  # a retrained seed
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "seed=2/model.pth changed since its results were written (sha256 differs); evaluating it" in out
    again = json.loads((s["pf"] / "eval" / "results_latest.json").read_text())
    assert again["run_id"] != first["run_id"]
    code, out, _ = _run(argv, capsys)  # nothing changed since: reused
    assert code == 0 and "evaluating" not in out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A study whose PF folder has been compared once (so it holds its results JSON)."""
    base = tmp_path_factory.mktemp("evaluated")
    s = _study(base)
    code, _, err = run_cli_captured_plain(["--compare", str(s["pf"]), *_flags(s)])
    assert code == 0, err
    return base


def run_cli_captured_plain(argv):
    """``main`` in this process with its output discarded: (exit code, '', '')."""
    import contextlib
    import io

    from sparselearning.errors import run_cli

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            run_cli(main, argv)
        except SystemExit as exc:
            return exc.code, "", err.getvalue()
    return 0, "", err.getvalue()


@pytest.mark.parametrize("damage, needle", [
    (lambda d: d["members"][0].update(name="../../../elsewhere/model.pth"), "outside the folder"),
    (lambda d: d["rows"][0].update(value="0.9"), "non-numeric value"),
    (lambda d: d["members"][0].update(sha256="abc"), "sha256"),
    (lambda d: d.update(format="something-else"), "not a freetickets-eval"),
    (lambda d: d["config"].update(ece_bins="15"), "ece_bins"),
])
def test_malformed_results_are_refused(evaluated, tmp_path, capsys, damage, needle):
    shutil.copytree(evaluated, tmp_path / "study")
    s = {"data": tmp_path / "study" / "data", "pf": tmp_path / "study" / "runs" / "density_0.5" / "PF"}
    path = s["pf"] / "eval" / "results_latest.json"
    doc = json.loads(path.read_text())
    damage(doc)
    path.write_text(json.dumps(doc))
    before = sorted(p.name for p in (s["pf"] / "eval").iterdir())
    code, out, err = _run(["--compare", str(s["pf"]), *_flags(s)], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0] and "not a valid results file" in lines[0], err
    assert sorted(p.name for p in (s["pf"] / "eval").iterdir()) == before


def test_mixed_datasets_are_refused(tmp_path, capsys):
    s = _study(tmp_path)
    _write_run(tmp_path, "other/seed=1", "DST", 5, 0.5, 4, dataset="mnist")
    code, out, err = _run(["--compare", str(s["dst"]), str(tmp_path / "other"), *_flags(s)], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "different models or datasets" in lines[0] and "--allow-mixed" in lines[0]
    assert "cnn-small on mnist" in lines[0] and "cnn-small on fashionmnist" in lines[0]
    assert not (s["root"] / "density_0.5" / "compare").exists() and not (s["dst"] / "eval").exists()


def test_pf_cost_needs_its_pretraining(tmp_path):
    """PF includes each member's pre-training, once per pre-trained model; unknown when its summary is gone."""
    _study(tmp_path)
    pf = [json.loads((tmp_path / f"runs/density_0.5/PF/seed={k}/summary.json").read_text()) for k in (1, 2)]
    runs = [costs.run_cost(p, tmp_path / f"runs/density_0.5/PF/seed={k}") for p, k in zip(pf, (1, 2))]
    assert [r.pretraining_flops for r in runs] == [4 * 540_000] * 2
    assert costs.ensemble_training_flops(runs) == pytest.approx(4_968_000)
    # two members pruned from one dense model pay for it once
    assert costs.ensemble_training_flops([runs[0], runs[0]]) == pytest.approx(4 * 540_000 + 2 * 2 * 162_000)
    shutil.rmtree(tmp_path / "runs/individual/dense/seed=2")
    gone = costs.run_cost(pf[1], tmp_path / "runs/density_0.5/PF/seed=2")
    assert gone.pretraining_flops is None and "pre-trained model" in gone.why_unknown
    assert costs.ensemble_training_flops([runs[0], gone]) is None


def test_replicate_groups_and_distinguishing_flags(tmp_path):
    """EDST/M=3 with two seed=* runs: two ensembles; flags: only those in which rows of one method differ."""
    from sparselearning.errors import UsageError
    from sparselearning.evaluation import compare_rows as CR

    names = [f"seed={s}/model_{k}.pth" for s in (1, 2) for k in range(3)]
    edst = CR.Folder(tmp_path, "EDST/M=3", names, {"members": []})
    assert CR.ensembles(edst, None) == [names[:3], names[3:]]
    assert CR.ensembles(edst, 2) == [names[:2], names[2:4], names[4:]]
    with pytest.raises(UsageError, match="not a multiple of 4"):
        CR.ensembles(edst, 4)
    dst = CR.Folder(tmp_path, "DST", [f"seed={s}/model.pth" for s in (1, 2, 3)], {"members": []})
    assert CR.ensembles(dst, None) == [dst.names]  # one ticket per run: one ensemble
    rows = [{"method": "EDST", "role": "ensemble"}, {"method": "EDST", "role": "ensemble"},
            {"method": "DST", "role": "ensemble"}]
    flags = [{"large_death_rate": 0.5, "fix": False, "epochs": 9}, {"large_death_rate": 0.8, "fix": True, "epochs": 9},
             {"large_death_rate": 0.1, "fix": True, "epochs": 5}]
    CR.describe_flags(rows, flags)
    assert [r["flags"] for r in rows] == ["large_death_rate=0.5", "--fix large_death_rate=0.8", ""]
