"""What a run folder holds besides tickets: metrics.csv, curves.png, provenance, an optional TensorBoard log."""
import csv
import json

import pytest

from helpers import write_fashion_mnist
from sparselearning.recipes import main

pytestmark = pytest.mark.slow  # end-to-end: real training/evaluation processes


@pytest.fixture(scope="module")
def edst_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edst")
    data = write_fashion_mnist(tmp / "data", n_train=200, n_test=60)
    out = tmp / "results"
    main("EDST", ["--sparse", "--nolrsche", "--epochs", "4", "--epochs-explo", "2", "--model-num", "2",
                  "--density", "0.2", "--update-frequency", "3", "--model", "cnn-small", "--data", "fashionmnist",
                  "--data-dir", str(data), "--batch-size", "32", "--output-dir", str(out), "--no-progress",
                  "--seed", "1", "--tensorboard"])
    return out / "cnn-small/fashionmnist/density_0.2/EDST/M=2/seed=1"


def test_metrics_csv_holds_the_summary_history(edst_run):
    history = json.loads((edst_run / "summary.json").read_text())["history"]
    with open(edst_run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4] == [h["epoch"] for h in history]
    for r, h in zip(rows, history):
        assert float(r["train_loss"]) == h["train_loss"] and float(r["lr"]) == h["lr"]
        assert int(r["phase"]) == h["phase"]


def test_curves_png_written(edst_run):
    from PIL import Image

    with Image.open(edst_run / "curves.png") as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 600


def test_summary_records_provenance(edst_run):
    prov = json.loads((edst_run / "summary.json").read_text())["provenance"]
    for key in ("command", "torch", "torchvision", "cuda", "device", "device_name", "git_commit", "git_dirty", "host"):
        assert key in prov, key
    assert prov["device"] == "cpu"
    import torch
    assert prov["torch"] == torch.__version__


def test_tensorboard_log_has_every_epoch(edst_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(edst_run / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("loss/train")]
    assert steps == [1, 2, 3, 4]
