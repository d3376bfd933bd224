"""No silent no-ops: the periodic topology updates a schedule makes, the warning when a phase has too few,
and the updates a real run records per epoch."""
import csv
import json

import pytest

from sparselearning.core.schedules import (PAPER_UPDATES, count_update_steps, edst_schedule, step_schedule,
                                           suggested_update_frequency, too_few_updates, updates_per_phase)
from sparselearning.recipes import main
from helpers import REPO, load_module


def test_count_update_steps_by_hand():
    assert count_update_steps(1, 20, 4) == 5  # steps 4, 8, 12, 16, 20
    assert count_update_steps(9, 20, 4) == 3  # 12, 16, 20
    assert count_update_steps(1, 20, 4, ((15, 20),)) == 3  # 16 and 20 fall in the window
    assert count_update_steps(1, 999, 1000) == 0
    assert count_update_steps(1, 20, None) == 0  # a fixed mask


def test_the_papers_cifar_run_has_97_updates_and_a_shortened_one_almost_none():
    assert PAPER_UPDATES == 97  # 250 x 391 = 97,750 steps, one update every 1,000
    assert updates_per_phase(step_schedule(250, 0.1), 1000, 391) == [{"phase": 0, "epochs": [1, 250], "updates": 97}]
    short = updates_per_phase(step_schedule(2, 0.1), 1000, 391)  # 782 steps
    assert short == [{"phase": 0, "epochs": [1, 2], "updates": 0}]
    # 782 steps x 1,000 / 97,750 = 8.0: an update every 8 steps gives 97 updates in 782 steps
    assert suggested_update_frequency(782) == 8 and 782 // 8 == 97
    warning = too_few_updates(short, 1000, 391)
    assert warning.startswith("warning:") and "\n" not in warning
    assert "--update-frequency 8 gives about the paper's 97 updates" in warning
    assert too_few_updates(short, None, 391) is None  # a static mask updates nothing on purpose


def test_edst_phases_counted_separately():
    # 25 epochs: 15 exploration, phases of 10/3 epochs starting after epochs 15, 19 (ceil 18.33), 22 (ceil 21.67)
    phases = updates_per_phase(edst_schedule(25, 15, 3, 0.1), 1000, 391)
    assert [p["epochs"] for p in phases] == [[1, 15], [16, 19], [20, 22], [23, 25]]
    # steps 1-5865: 5 updates; 5866-7429: 6000, 7000; 7430-8602: 8000; 8603-9775: 9000
    assert [p["updates"] for p in phases] == [5, 2, 1, 1]
    assert "phase 2 (epochs 20-22): 1; phase 3 (epochs 23-25): 1" in too_few_updates(phases, 1000, 391)


def common(data_dir, out, *extra):
    return ["--model", "cnn-small", "--data", "fashionmnist", "--data-dir", str(data_dir), "--batch-size", "32",
            "--test-batch-size", "64", "--output-dir", str(out), "--no-progress", "--seed", "1", *map(str, extra)]


@pytest.mark.slow
@pytest.mark.parametrize("frequency,per_epoch", [(1000, [0, 0]), (5, [1, 2])])
def test_a_run_warns_of_no_updates_and_records_the_updates_per_epoch(fmnist_dir, tmp_path, capsys, frequency,
                                                                    per_epoch):
    out = tmp_path / "results"
    main("DST", ["--sparse", "--density", "0.2", "--epochs", "2", "--update-frequency", str(frequency),
                 *common(fmnist_dir, out)])
    run_dir = out / "cnn-small/fashionmnist/density_0.2/DST/seed=1"
    summary = json.loads((run_dir / "summary.json").read_text())
    # 270 training images (30 held out for validation) in batches of 32: 9 steps per epoch (the last one
    # partial); updates at the multiples of 5: step 5 in epoch 1 (steps 1-9), 10 and 15 in epoch 2 (10-18)
    assert [r["topology_updates"] for r in summary["history"]] == per_epoch
    assert summary["topology_updates"]["done"] == sum(per_epoch)
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["topology_updates"]) for r in rows] == per_epoch
    assert all(float(r["epoch_seconds"]) > 0 for r in rows)
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning: few topology updates")]
    log = (run_dir / "train.log").read_text()
    if frequency == 1000:
        assert len(warnings) == 1 and "--update-frequency 1000" in warnings[0]
        assert warnings[0] in log
    else:
        assert warnings == []
    assert "sparse Conv2d.weight" in log  # the Masking's table of sparse layers


def test_a_shortened_imagenet_run_says_which_reexplorations_are_left_out(capsys):
    imain = load_module(REPO / "ImageNet" / "main.py", "imagenet_main")
    # 2 epochs: the paper's re-explorations after 100, 170 and 240 of 310 scale to 1, 1 and 2: only one fits
    _, sched, _ = imain.parse(["/d", "--epochs", "2"])
    out = capsys.readouterr().out
    assert sched.reexplore_epochs == (1,)
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "only 1 of the paper's 3 re-explorations fit in --epochs 2" in warnings[0]
    assert "2 tickets, not 4" in warnings[0]
    imain.parse(["/d", "--epochs", "90"])  # all three fit: no warning
    assert "warning" not in capsys.readouterr().out
