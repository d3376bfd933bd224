"""metrics.csv, curves.png and the TensorBoard log of a run (sparselearning.run_outputs)."""
from __future__ import annotations

import csv
import math
import struct

import pytest

from sparselearning.core.schedules import Schedule, edst_schedule
from sparselearning.errors import UsageError
from sparselearning.run_outputs import (TensorBoardLog, check_tensorboard, curves_figure, metric_columns,
                                        phases_from_history, plot_curves, write_metrics_csv)


def edst_history(epochs: int = 12, explo: int = 3, model_num: int = 3) -> tuple[list[dict], Schedule]:
    """Rows shaped as Run.end_of_epoch writes them, for an EDST schedule (phases from the schedule itself)."""
    sched = edst_schedule(epochs, explo, model_num, 0.1)
    rows = []
    for e in range(1, epochs + 1):
        rows.append({"epoch": e, "lr": sched.lr(e), "train_loss": 2.0 / e, "train_acc": 0.1 + 0.05 * e,
                     "val_loss": 2.2 / e + 0.01, "val_acc": 0.08 + 0.05 * e, "phase": sched.phase(e),
                     "density": 0.2, "exploration_rate": 0.2 + 0.01 * e, "training_flops": 1.5e12 * e})
    return rows, sched


def read_png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------------------------- metrics.csv
def test_metrics_csv_round_trips_every_value(tmp_path):
    rows, _ = edst_history()
    rows[0]["val_loss"] = None  # e.g. no validation split: an empty cell, not "None"
    rows[1]["lr"] = 0.1 / 3  # a float that str() with few digits would not round-trip
    path = tmp_path / "metrics.csv"
    write_metrics_csv(rows, path)
    with open(path, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == len(rows)
    for got, want in zip(back, rows):
        assert set(got) == set(want)
        for key, value in want.items():
            if value is None:
                assert got[key] == ""
            elif isinstance(value, int):
                assert int(got[key]) == value
            else:
                assert float(got[key]) == value  # exact, not approximate
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary behind


def test_metrics_csv_column_order_is_stable_and_keeps_extra_keys(tmp_path):
    rows = [{"training_flops": 1.0, "zeta": 3, "epoch": 1, "val_top5": 0.5, "lr": 0.1},
            {"epoch": 2, "lr": 0.1, "training_flops": 2.0, "val_top5": 0.6, "extra": "x", "zeta": 4}]
    assert metric_columns(rows) == ["epoch", "lr", "val_top5", "training_flops", "zeta", "extra"]
    path = tmp_path / "m.csv"
    write_metrics_csv(rows, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "epoch,lr,val_top5,training_flops,zeta,extra"
    assert lines[1] == "1,0.1,0.5,1.0,3,"  # the key the first row lacks is an empty cell
    write_metrics_csv(rows[:1], path)  # rewritten whole (as after every epoch): the old rows are gone
    assert len(path.read_text().splitlines()) == 2


def test_metrics_csv_of_an_empty_history_is_empty(tmp_path):
    write_metrics_csv([], tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_text().strip() == ""


# ---------------------------------------------------------------------------------- curves.png
def test_phases_from_history_follow_the_edst_schedule():
    rows, sched = edst_history(12, 3, 3)  # phase length 3: phases 4-6, 7-9, 10-12; re-explorations after 6 and 9
    assert sched.reexplore_epochs == (6, 9)
    assert phases_from_history(rows) == [(4, 6), (7, 9), (10, 12)]
    dst = [dict(r, phase=0) for r in rows]
    assert phases_from_history(dst) == []  # one phase: nothing to mark


def test_curves_figure_draws_the_history(tmp_path):
    rows, sched = edst_history()
    fig = curves_figure(rows, title="EDST - wrn-16-2 on cifar10", reexplore_after=sched.reexplore_epochs)
    assert fig._suptitle.get_text() == "EDST - wrn-16-2 on cifar10"
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() != "reexplore"}
    assert set(lines) == {"train_loss", "val_loss", "train_acc", "val_acc", "lr", "density", "exploration_rate",
                          "training_flops"}
    epochs = [r["epoch"] for r in rows]
    for key, line in lines.items():
        assert list(line.get_xdata()) == epochs
        assert list(line.get_ydata()) == [r[key] for r in rows], key
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Loss", "Accuracy", "Learning rate", "Density", "Exploration rate", "Training FLOPs"]
    assert all(ax.get_xlabel() == "epoch" and ax.get_ylabel() for ax in fig.axes)
    lr_ax = fig.axes[titles.index("Learning rate")]
    assert lr_ax.get_yscale() == "log"  # 0.1 -> 0.01 -> 0.001 steps are readable only on a log scale
    for ax in fig.axes:
        vlines = [ln for ln in ax.get_lines() if ln.get_gid() == "reexplore"]
        assert [ln.get_xdata()[0] for ln in vlines] == [6.5, 9.5]  # between epoch e and e + 1
        spans = sorted((p for p in ax.patches if (p.get_gid() or "").startswith("phase_")), key=lambda p: p.get_gid())
        extents = [(p.get_x(), p.get_x() + p.get_width()) for p in spans]
        assert extents == [(3.5, 6.5), (6.5, 9.5), (9.5, 12.5)]


def test_curves_png_is_a_png_of_the_documented_size(tmp_path):
    rows, sched = edst_history()
    path = tmp_path / "curves.png"
    assert plot_curves(rows, path, title="EDST - wrn-16-2 on cifar10", reexplore_after=sched.reexplore_epochs)
    assert read_png_size(path) == (1500, 800)
    from PIL import Image

    with Image.open(path) as img:  # decodes fully: the file is complete, not just a header
        img.load()
        assert img.size == (1500, 800)
    assert not list(tmp_path.glob(".*.tmp"))


def test_curves_of_a_dense_run_without_validation_and_of_imagenet():
    dense = [{"epoch": e, "lr": 0.1, "train_loss": 1.0 / e, "train_acc": 0.5, "val_loss": None, "val_acc": None,
              "phase": 0, "density": 1.0, "exploration_rate": None, "training_flops": float(e)} for e in (1, 2, 3)]
    fig = curves_figure(dense, title="dense")
    gids = {ln.get_gid() for ax in fig.axes for ln in ax.get_lines()}
    assert "val_loss" not in gids and "exploration_rate" not in gids and "train_loss" in gids
    explo_ax = [ax for ax in fig.axes if ax.get_title() == "Exploration rate"][0]
    assert [t.get_text() for t in explo_ax.texts] == ["not recorded for this run"]
    imagenet = [dict(r, val_loss=0.5, val_acc=0.3, val_top5=0.6) for r in dense]
    acc_ax = [ax for ax in curves_figure(imagenet, title="x").axes if ax.get_title() == "Accuracy"][0]
    assert [ln.get_gid() for ln in acc_ax.get_lines()] == ["train_acc", "val_acc", "val_top5"]


def test_mid_run_curves_leave_out_reexplorations_not_run_yet():
    rows, sched = edst_history()
    fig = curves_figure(rows[:8], title="x", reexplore_after=sched.reexplore_epochs)  # after epoch 8: only 6 ran
    assert [ln.get_xdata()[0] for ln in fig.axes[0].get_lines() if ln.get_gid() == "reexplore"] == [6.5]


def test_val_gaps_become_nan_not_zero():
    rows, _ = edst_history(4, 1, 1)
    rows[1]["val_loss"] = None
    fig = curves_figure(rows, title="x")
    line = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == "val_loss"][0]
    assert math.isnan(line.get_ydata()[1]) and line.get_ydata()[0] == rows[0]["val_loss"]


def test_plot_curves_of_no_epoch_writes_nothing(tmp_path):
    assert plot_curves([], tmp_path / "curves.png", title="x") is False
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------- TensorBoard
def test_tensorboard_events_read_back_with_tensorboards_reader(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows, _ = edst_history(5, 1, 2)
    rows[2]["val_loss"] = None
    with TensorBoardLog(tmp_path / "tb") as tb:
        for row in rows:
            tb.log_epoch(row)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "sparsity/density",
            "sparsity/exploration_rate", "phase", "training_flops"} <= tags
    train = acc.Scalars("loss/train")
    assert [s.step for s in train] == [1, 2, 3, 4, 5]
    assert [s.value for s in train] == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)  # float32 in events
    assert [s.step for s in acc.Scalars("loss/val")] == [1, 2, 4, 5]  # None is left out, not logged as 0


def test_tensorboard_missing_is_a_one_line_usage_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard" or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    for attempt in (check_tensorboard, lambda: TensorBoardLog(tmp_path / "tb")):
        with pytest.raises(UsageError) as err:
            attempt()
        msg = str(err.value)
        assert "pip install tensorboard" in msg and "\n" not in msg
    assert not (tmp_path / "tb").exists()


def test_curves_mark_tickets_label_both_phase_colours_and_tick_whole_epochs(tmp_path):
    from sparselearning.run_outputs import density_label

    rows, sched = edst_history()  # phases 4-6, 7-9, 10-12
    fig = curves_figure(rows, title="x", reexplore_after=sched.reexplore_epochs, ticket_epochs=[5, 9, 12, 40])
    fig.canvas.draw()
    for ax in fig.axes:
        assert [ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_gid() == "ticket_saved"] == [5, 9, 12]
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "ticket phases 1, 3" in legend and "ticket phase 2" in legend and "ticket saved" in legend
    assert density_label(1 - 0.8000006005) == "density 0.2" and density_label(None) == "dense"
    assert density_label(0.05) == "density 0.05"
