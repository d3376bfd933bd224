"""Damaged tickets and bad flags are refused before anything is written; what a run records and prints.

Tickets are untrained 'cnn-small' models with random masks (the checks do not depend on training),
evaluated in-process on a tiny Fashion-MNIST written in torchvision's layout.
"""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import REPO, assert_one_line_error, run_cli_captured, write_fashion_mnist
from models import get_model
from sparselearning.checkpoint import atomic_save, build_ticket, load_ticket
from sparselearning.evaluation import main

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _ticket(seed: int, **meta) -> dict:
    torch.manual_seed(seed)
    model = get_model("cnn-small", 10, 1, 28)
    masks = {n: torch.rand(p.shape) < 0.5 for n, p in model.named_parameters() if p.dim() > 1}
    base = {"model": "cnn-small", "num_classes": 10, "in_channels": 1, "image_size": 28, "dataset": "fashionmnist",
            "normalization": {"mean": [0.2860], "std": [0.3530]}, "kind": "DST", "seed": seed, "epoch": 1,
            "ticket_index": 0, "role": "ticket", "density": 0.5}
    return build_ticket(model, masks, {**base, **meta})


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    base = tmp_path_factory.mktemp("checks")
    data = write_fashion_mnist(base / "data", n_train=20, n_test=40)
    good = _ticket(1)
    atomic_save(good, base / "one" / "seed=1" / "model.pth")
    for s in (1, 2):
        atomic_save(_ticket(s), base / "two" / f"seed={s}" / "model.pth")
    return {"base": base, "data": data, "good": good}


def _run(argv, capsys):
    return run_cli_captured(main, argv, capsys)


def _argv(root: Path, box, *more: str) -> list[str]:
    return ["--mode", "predict", "--resume", str(root), "--data-dir", str(box["data"]), "--no-download", *more]


def _nan_weight(t: dict) -> dict:
    name = next(iter(t["dense_state"]))
    bad = t["dense_state"][name].clone()
    bad.view(-1)[0] = math.nan
    return {**t, "dense_state": {**t["dense_state"], name: bad}}


# Damaged tickets in a folder given to --resume: tests/test_bad_inputs.py (the table).


def test_damaged_snapshot_is_refused_before_any_output(box, tmp_path, capsys):
    root = tmp_path / "snap"
    atomic_save(box["good"], root / "seed=1" / "model.pth")
    atomic_save(_ticket(3, role="snapshot"), root / "seed=1" / "snapshots" / "epoch_1.pth")
    bad = root / "seed=1" / "snapshots" / "epoch_2.pth"
    atomic_save(_nan_weight(_ticket(4, role="snapshot")), bad)
    code, out, err = _run(["--mode", "tsne", "--resume", str(root), "--data-dir", str(box["data"]), "--no-download",
                           "--tsne-samples", "10"], capsys)
    assert_one_line_error(code, err, str(bad), "non-finite")
    assert not (root / "eval").exists()


@pytest.mark.parametrize("bins, ok", [("100000000", False), ("10001", False), ("0", False), ("200", True)])
def test_ece_bins_are_bounded(box, tmp_path, capsys, bins, ok):
    out_dir = tmp_path / "ev"
    code, out, err = _run(_argv(box["base"] / "two", box, "--mode", "calibration", "--ece-bins", bins,
                                "--output-dir", str(out_dir)), capsys)
    if ok:
        assert code == 0, err
        rows = json.loads((out_dir / "results_latest.json").read_text())["rows"]
        assert any(r["metric"] == "ece200" for r in rows)
    else:
        assert_one_line_error(code, err, "--ece-bins")
        assert not out_dir.exists()


def test_plots_line_only_when_a_plot_was_written(box, tmp_path, capsys):
    code, out, err = _run(_argv(box["base"] / "one", box, "--output-dir", str(tmp_path / "one")), capsys)
    assert code == 0, err
    assert "plots:" not in out and not (tmp_path / "one" / "plots").exists()
    code, out, err = _run(_argv(box["base"] / "two", box, "--output-dir", str(tmp_path / "two")), capsys)
    assert code == 0, err
    js = json.loads((tmp_path / "two" / "results_latest.json").read_text())
    plot = Path(js["plots"]["ensemble_size"])
    assert plot.is_file() and plot.read_bytes()[:4] == b"\x89PNG"
    assert f"plots: {tmp_path / 'two' / 'plots'}" in out


def test_first_k_rows_include_ece(box, tmp_path, capsys):
    code, out, err = _run(_argv(box["base"] / "two", box, "--mode", "predict,calibration", "--output-dir",
                                str(tmp_path / "ev")), capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "ev" / "results_latest.json").read_text())["rows"]

    def v(mode, member, metric):
        hits = [r["value"] for r in rows if (r["mode"], r["member"], r["metric"]) == (mode, member, metric)]
        assert len(hits) == 1
        return hits[0]

    assert v("predict", "ensemble_first_2", "ece15") == pytest.approx(v("calibration", "ensemble", "ece15"))
    assert v("predict", "ensemble_first_1", "ece15") == pytest.approx(v("calibration", "seed=1/model.pth", "ece15"))


def test_results_record_provenance(box, tmp_path, capsys):
    argv = _argv(box["base"] / "one", box, "--output-dir", str(tmp_path / "ev"))
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    prov = json.loads((tmp_path / "ev" / "results_latest.json").read_text())["provenance"]
    assert prov["command"] == ["ensemble_freetickets.py", *argv]
    assert prov["torch"] == torch.__version__ and prov["device"] == "cpu" and prov["device_name"].startswith("cpu")
    assert prov["cuda"] == torch.version.cuda and prov["host"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert prov["git_commit"] == head.stdout.strip() and isinstance(prov["git_dirty"], bool)
    else:
        assert prov["git_commit"] is None


def test_loaded_ticket_round_trip_is_accepted(box):
    """The checks accept what the ticket writer produces (guards against over-strict checks)."""
    from sparselearning.evaluation.tickets import check_ticket

    path = box["base"] / "one" / "seed=1" / "model.pth"
    check_ticket(load_ticket(path), path)


def test_workers_flag_is_checked_and_progress_can_be_off(box, tmp_path, capsys):
    out_dir = tmp_path / "ev"
    code, out, err = _run(_argv(box["base"] / "one", box, "-j", "-1", "--output-dir", str(out_dir)), capsys)
    assert_one_line_error(code, err, "--workers")
    assert not out_dir.exists()
    code, out, err = _run(_argv(box["base"] / "one", box, "-j", "0", "--no-progress", "--output-dir", str(out_dir)),
                          capsys)
    assert code == 0, err
    assert (out_dir / "results_latest.json").is_file()


def test_imagenet_logits_use_the_given_workers(monkeypatch):
    """-j reaches the ImageNet val loader (it was fixed at 4)."""
    from sparselearning.data import imagenet as imagenet_data
    from sparselearning.evaluation import logits as L

    seen = {}

    def fake_val_batches(root, image_size, batch_size, device, **kw):
        seen.update(kw)
        return [(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.int64))], None

    monkeypatch.setattr(imagenet_data, "imagenet_val_batches", fake_val_batches)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    spec = type("Spec", (), {"image_size": 8, "mean": (0.5,) * 3, "std": (0.5,) * 3})()
    out = L.imagenet_logits(model, "root", spec, 2, torch.device("cpu"), None, 2, "val", workers=7,
                            show_progress=False)
    assert seen["workers"] == 7 and out.shape == (2, 5) and out.device.type == "cpu"


# =========================================================================== CIFAR-C / SVHN arrays of the wrong kind
CIFAR_NORM = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010]}


@pytest.fixture(scope="module")
def cifar_box(tmp_path_factory):
    """CIFAR-10 tickets (untrained cnn-small) and a 20-image CIFAR-10 test batch, in torchvision's layout."""
    import pickle

    import numpy as np

    base = tmp_path_factory.mktemp("cifar")
    n, rng = 20, np.random.default_rng(5)
    data = base / "data" / "cifar-10-batches-py"
    data.mkdir(parents=True)
    labels = [int(v) for v in np.arange(n) % 10]
    with open(data / "test_batch", "wb") as fh:
        pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": labels}, fh)
    for seed in (1, 2):
        atomic_save(_ticket(seed, dataset="cifar10", in_channels=3, image_size=32, normalization=CIFAR_NORM)
                    | {"dense_state": get_model("cnn-small", 10, 3, 32).state_dict(), "sparse_state": {}},
                    base / "runs" / f"seed={seed}" / "model.pth")
    return {"base": base, "data": base / "data", "runs": base / "runs", "n": n, "labels": labels}


def _cifar_c_cases():
    import numpy as np

    good = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    with_nan = (good / 255).astype(np.float32)
    with_nan[3, 0, 0, 0] = np.nan
    labels = np.tile(np.arange(20) % 10, 5)
    return {  # name: (images, labels, the file the message names, what it says)
        "float-0-1": ((good / 255).astype(np.float32), labels, "fog.npy", "float32 values in [0, 1]"),
        "nan": (with_nan, labels, "fog.npy", "NaN"),
        "int16": (good.astype(np.int16) * 3, labels, "fog.npy", "int16 values"),
        "layout-nchw": (good.transpose(0, 3, 1, 2).copy(), labels, "fog.npy", "(5*K, 32, 32, 3)"),
        "float-labels": (good, labels.astype(np.float64) + 0.7, "labels.npy", "float64 values"),
        "labels-out-of-range": (good, labels + 1, "labels.npy", "label 10, outside 0..9"),
    }


@pytest.mark.parametrize("case", list(_cifar_c_cases()))
def test_bad_cifar_c_arrays_are_refused_before_anything_is_written(cifar_box, tmp_path, capsys, case):
    import numpy as np

    images, labels, named, says = _cifar_c_cases()[case]
    cfc = tmp_path / "CIFAR-10-C"
    cfc.mkdir()
    np.save(cfc / "fog.npy", images)
    np.save(cfc / "labels.npy", labels)
    out_dir = tmp_path / "eval"
    code, out, err = _run(["--mode", "predict,corruption", "--resume", str(cifar_box["runs"]), "--data-dir",
                           str(cifar_box["data"]), "--cf_c_path", str(cfc), "--output-dir", str(out_dir),
                           "--no-download"], capsys)
    assert_one_line_error(code, err, str(cfc / named), says)
    assert not out_dir.exists()  # no cache, no results: the test-set logits were not even computed
    assert "== predict" not in out


def _write_svhn(root: Path, x, y) -> None:
    import numpy as np
    import scipy.io

    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(root / "test_32x32.mat"), {"X": np.transpose(x, (2, 3, 1, 0)), "y": y.reshape(-1, 1)})


@pytest.mark.parametrize("case", ["float-0-1", "int16", "float-labels", "labels-out-of-range"])
@pytest.mark.parametrize("explicit", [True, False])
def test_bad_svhn_arrays_are_refused_even_as_a_default_ood_set(cifar_box, tmp_path, capsys, case, explicit):
    import shutil

    import numpy as np

    data = tmp_path / "data"
    shutil.copytree(cifar_box["data"], data)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8), rng.integers(1, 11, 8)
    x, y, says = {"float-0-1": ((x / 255).astype(np.float32), y, "float32 values in [0, 1]"),
                  "int16": (x.astype(np.int16) - 128, y, "int16 values"),
                  "float-labels": (x, y + 0.5, "float64 values"),
                  "labels-out-of-range": (x, y + 5, "outside 0..10")}[case]
    _write_svhn(data, x, y)
    out_dir = tmp_path / "eval"
    ood = ["--ood-data", "svhn,gaussian"] if explicit else []  # else the defaults: svhn, cifar100 (missing), ...
    code, out, err = _run(["--mode", "ood", "--resume", str(cifar_box["runs"]), "--data-dir", str(data),
                           "--output-dir", str(out_dir), "--no-download", *ood], capsys)
    assert_one_line_error(code, err, str(data / "test_32x32.mat"), says)
    assert not out_dir.exists()
