"""End-to-end runs of the four training scripts on tiny data (a few hundred images, 2-4 epochs)."""
import json
from pathlib import Path

import pytest
import torch

from helpers import run_script, write_cifar10
from sparselearning import checkpoint as ckpt
from sparselearning.core.schedules import edst_schedule
from sparselearning.cli import build_parser, parser_defaults, validate
from sparselearning.recipes import cifar_plan, main
from sparselearning.train import Run

pytestmark = pytest.mark.slow  # end-to-end: real training/evaluation processes


def common(data_dir, out, *extra):
    return ["--model", "cnn-small", "--data", "fashionmnist", "--data-dir", str(data_dir), "--batch-size", "32",
            "--test-batch-size", "64", "--output-dir", str(out), "--no-progress", "--seed", "1", *map(str, extra)]


def load_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def check_ticket(path: Path, density: float | None):
    t = ckpt.load_ticket(path)  # weights_only=True inside
    for key in ("model", "num_classes", "in_channels", "image_size", "dataset", "normalization", "args", "epoch",
                "val_acc", "val_loss", "version"):
        assert key in t, key
    assert t["model"] == "cnn-small" and t["num_classes"] == 10 and t["in_channels"] == 1 and t["image_size"] == 28
    masks = ckpt.ticket_masks(t)
    if density is None:
        assert masks == {}
    else:
        state = ckpt.ticket_state_dict(t)
        active = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        assert active / total == pytest.approx(density, abs=0.01)
        for name, m in masks.items():
            assert torch.count_nonzero(state[name][~m]) == 0
        model = ckpt.ticket_model(t)
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    return t


def test_edst_schedule_tickets_and_summary(fmnist_dir, tmp_path):
    out = tmp_path / "results"
    s = main("EDST", ["--sparse", "--nolrsche", "--epochs", "7", "--epochs-explo", "1", "--model-num", "3",
                      "--density", "0.2", "--update-frequency", "3", "--save-every", "2", *common(fmnist_dir, out)])
    run_dir = out / "cnn-small/fashionmnist/density_0.2/EDST/M=3/seed=1"
    assert s["run_dir"] == str(run_dir)
    summary = load_summary(run_dir)
    plan = edst_schedule(7, 1, 3, 0.1)
    assert summary["status"] == "finished"
    assert summary["schedule"]["reexplore_after"] == list(plan.reexplore_epochs) == [3, 5]
    assert summary["schedule"]["lr_drop_after"] == [2, 4, 6] and summary["schedule"]["phases"] == [[1, 3], [3, 5], [5, 7]]
    lrs = [row["lr"] for row in summary["history"]]
    assert lrs == pytest.approx([plan.lr(e) for e in range(1, 8)])
    assert lrs == pytest.approx([0.1, 0.01, 0.001, 0.01, 0.001, 0.01, 0.001])
    assert [row["phase"] for row in summary["history"]] == [-1, 0, 0, 1, 1, 2, 2]
    # ticket k = best validation epoch within phase k
    for k, info in enumerate(summary["tickets"]):
        rows = [r for r in summary["history"] if r["phase"] == k]
        best = max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))
        assert info["ticket_index"] == k and info["epoch"] == best["epoch"]
        check_ticket(run_dir / f"model_{k}.pth", 0.2)
    assert sorted(p.name for p in run_dir.glob("model_*.pth")) == ["model_0.pth", "model_1.pth", "model_2.pth"]
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == ["epoch_2.pth", "epoch_4.pth", "epoch_6.pth"]
    # the paper's exploration-rate and FLOPs bookkeeping
    rates = [r["exploration_rate"] for r in summary["history"]]
    assert rates == sorted(rates) and rates[-1] > 0.2
    flops = [r["training_flops"] for r in summary["history"]]
    assert flops == sorted(flops) and summary["training_flops"] == flops[-1]
    ratio = summary["sparse_forward_flops_per_sample"] / summary["dense_forward_flops_per_sample"]
    n_train = 270  # 300 - 10% validation
    sparse_cost = 3 * summary["sparse_forward_flops_per_sample"] * n_train * 7
    dense_cost = 3 * summary["dense_forward_flops_per_sample"] * n_train * 7
    # gradient growth needs dense gradients on update steps: more than sparse, less than dense training
    assert sparse_cost < summary["training_flops"] < dense_cost
    assert ratio * 7 / 250 < summary["training_flops_relative_to_dense_250_epochs"] < 7 / 250
    assert (run_dir / "train.log").read_text().count("epoch ") >= 7


def test_dense_pf_and_static_pipeline(fmnist_dir, tmp_path, capsys):
    out = tmp_path / "results"
    main("individual", ["--epochs", "2", *common(fmnist_dir, out)])
    dense_dir = out / "cnn-small/fashionmnist/individual/dense/seed=1"
    dense = check_ticket(dense_dir / "model.pth", None)
    assert dense["kind"] == "dense"
    summary = load_summary(dense_dir)
    assert [r["lr"] for r in summary["history"]] == pytest.approx([0.1, 0.001])  # E=2: both milestones at epoch 1
    assert summary["training_flops_relative_to_dense_250_epochs"] == pytest.approx(2 / 250, rel=1e-6)

    # the paper's PF command (README), as printed but for the model, the data and the length
    main("PF", ["--sparse", "--model", "wrn-28-10", "--resume", "--pretrain", str(dense_dir / "model.pth"), "--lr",
                "0.001", "--fix", "--data", "cifar10", "--nolrsche", "--decay-schedule", "constant", "--seed", "18",
                "--epochs-fs", "150", "--model-num", "3", "--sparse-init", "pruning", "--update-frequency", "1000",
                "--batch-size", "128", "--death-rate", "0.5", "--large-death-rate", "0.8", "--growth", "gradient",
                "--death", "magnitude", "--redistribution", "none", "--epochs", "2", "--density", "0.2",
                *common(fmnist_dir, out)])
    pf_dir = out / "cnn-small/fashionmnist/density_0.2/PF/seed=1"
    assert f"note: {pf_dir} holds no last.pth yet: starting from the pretrained model" in capsys.readouterr().out
    pf = check_ticket(pf_dir / "model.pth", 0.2)
    # global magnitude pruning of the dense ticket: the kept weights were the largest at the start
    assert pf["kind"] == "PF" and [r["lr"] for r in load_summary(pf_dir)["history"]] == [0.001, 0.001]

    main("DST", ["--sparse", "--fix", "--density", "0.3", "--epochs", "2", *common(fmnist_dir, out)])
    static_dir = out / "cnn-small/fashionmnist/density_0.3/static/seed=1"
    static = check_ticket(static_dir / "model.pth", 0.3)
    assert static["kind"] == "static"
    s = load_summary(static_dir)  # no topology updates: exactly 3 x sparse forward per sample
    assert s["training_flops"] == pytest.approx(3 * s["sparse_forward_flops_per_sample"] * 270 * 2, rel=1e-9)


def _pf_rate(*flags):
    args = build_parser("PF").parse_args(["--model", "cnn-small", "--pretrained", "x.pth", *flags])
    validate("PF", args)
    assert "_given_flags" not in vars(args)  # no trace in the flags (nor in the resume fingerprint)
    return args.PF_rate


def test_pf_rate_rule():
    """An explicit --PF-rate wins; else 1 - --density when --density is given; else 0.8."""
    assert _pf_rate() == 0.8
    assert _pf_rate("--density", "0.1") == pytest.approx(0.9)
    assert _pf_rate("--density", "0.1", "--PF-rate", "0.7") == _pf_rate("--PF-rate", "0.7", "--density", "0.1") == 0.7
    args = build_parser("PF").parse_args(["--model", "cnn-small", "--pretrained", "x.pth", "--density", "0.1"])
    validate("PF", args)
    assert cifar_plan("PF", args, {}).run_dir.parts[-3] == "density_0.1"


def test_resume_fingerprint_ignores_flags_newer_than_the_checkpoint(tmp_path):
    parser = build_parser("DST")
    args = parser.parse_args(["--model", "cnn-small", "--sparse", "--output-dir", str(tmp_path)])
    validate("DST", args)
    run = Run(cifar_plan("DST", args, parser_defaults(parser)))
    saved = run.fingerprint()
    assert run.fingerprint_differences(saved) == []
    older = {k: v for k, v in saved.items() if k != "erk_power_scale"}  # written before the flag existed
    assert run.fingerprint_differences({**older, "a_flag_since_removed": 1}) == []
    run.flags["erk_power_scale"] = 2.0  # ... but a value off the default is a difference
    assert run.fingerprint_differences(older) == ["erk_power_scale"]
    assert run.fingerprint_differences({**saved, "lr": 0.05}) == ["erk_power_scale", "lr"]


def test_dst_topology_changes_and_keeps_density(fmnist_dir, tmp_path):
    out = tmp_path / "results"
    main("DST", ["--sparse", "--density", "0.2", "--epochs", "2", "--update-frequency", "2", "--growth", "random",
                 "--decay-schedule", "cosine", *common(fmnist_dir, out)])
    run_dir = out / "cnn-small/fashionmnist/density_0.2/DST/seed=1"
    check_ticket(run_dir / "model.pth", 0.2)
    hist = load_summary(run_dir)["history"]
    assert all(r["density"] == pytest.approx(0.2, abs=0.005) for r in hist)
    assert hist[-1]["exploration_rate"] > 0.3  # many topology updates happened


def test_cifar10_pickles_train(tmp_path):
    data = write_cifar10(tmp_path / "data")
    out = tmp_path / "results"
    main("DST", ["--sparse", "--model", "cnn-small", "--data", "cifar10", "--data-dir", str(data), "--epochs", "1",
                 "--density", "0.5", "--update-frequency", "2", "--batch-size", "50", "--output-dir", str(out),
                 "--no-progress"])
    t = ckpt.load_ticket(out / "cnn-small/cifar10/density_0.5/DST/seed=17/model.pth")
    assert t["in_channels"] == 3 and t["image_size"] == 32 and t["dataset"] == "cifar10"


def test_existing_run_is_never_overwritten(fmnist_dir, tmp_path):
    out = tmp_path / "results"
    args = ["--sparse", "--density", "0.2", "--epochs", "1", *common(fmnist_dir, out)]
    main("DST", args)
    run_dir = out / "cnn-small/fashionmnist/density_0.2/DST/seed=1"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    r = run_script("main_DST.py", *args)
    assert r.returncode == 2 and "--resume" in r.stderr and "--overwrite" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


# Bad input (one line, exit 2, nothing written): tests/test_bad_inputs.py.
# Killed runs resumed bit-identically: tests/test_faults.py (kills land at exact, observed points).
