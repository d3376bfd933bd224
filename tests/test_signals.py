"""Preemption: SIGTERM (what SLURM and Kubernetes send before they kill a job) and SIGINT stop a run cleanly.

Real training processes (main_DST.py on tiny Fashion-MNIST, through the bootstrap of helpers.BOOT, which holds a
process at an exact point) get the signal in the middle of an epoch or in the middle of writing a checkpoint. Each
must exit with 128 + the signal's number (143, 130) and one stderr line saying how to resume, no traceback; the
checkpoint being written when the signal came is completed first (a second signal does not wait; the previous
version is intact); ``--resume`` then finishes the run with tickets bit-identical to an uninterrupted run's.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, Proc, assert_same_run, write_fashion_mnist
from sparselearning import checkpoint as ckpt
from sparselearning import errors
from sparselearning.recipes import main as train_main

pytestmark = pytest.mark.slow  # end-to-end: real training/evaluation processes

FLAGS = ["--sparse", "--density", "0.2", "--epochs", "4", "--update-frequency", "3", "--model", "cnn-small",
         "--data", "fashionmnist", "--batch-size", "32", "--test-batch-size", "64", "--no-progress", "--seed", "3"]
RUN = Path("cnn-small/fashionmnist/density_0.2/DST/seed=3")
RESUME_LINE = "resume with the same command plus --resume"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("signals")
    data = write_fashion_mnist(base / "data", n_train=200, n_test=40)  # 6 steps per epoch
    ref = base / "ref"
    train_main("DST", [*FLAGS, "--data-dir", str(data), "--output-dir", str(ref)])  # uninterrupted, in-process
    return {"data": data, "ref": ref / RUN}


def argv(env, out: Path) -> list[str]:
    return [*FLAGS, "--data-dir", str(env["data"]), "--output-dir", str(out)]


def stopped_cleanly(proc: Proc, signum: int) -> str:
    """Exit code 128 + signum, one stderr line naming the signal and --resume, no traceback; returns the line."""
    code = proc.p.wait(timeout=120)
    err = proc.stderr.read_text()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 128 + signum, (code, err[-3000:])
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("main_DST.py: ") and signal.Signals(signum).name in lines[0], lines[0]
    assert RESUME_LINE in lines[0], lines[0]
    return lines[0]


def temporaries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def resume_to_the_end(env, out: Path, after_epoch: int) -> None:
    r = subprocess.run([sys.executable, str(REPO / "main_DST.py"), *argv(env, out), "--resume"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed {out / RUN} after epoch {after_epoch}" in r.stdout
    assert_same_run(out / RUN, env["ref"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_mid_epoch_stops_with_one_line_then_resume_is_bit_identical(env, tmp_path, signum):
    out = tmp_path / "out"
    proc = Proc(tmp_path, "main_DST.py", argv(env, out), pause="step:3:4", tag="stopped", split_stderr=True)
    assert proc.wait_for("paused at epoch 3 step 4")
    proc.p.send_signal(signum)
    stopped_cleanly(proc, signum)
    run_dir = out / RUN
    assert int(ckpt.safe_load(run_dir / "last.pth")["epoch"]) == 2  # loads (weights_only) and is complete
    ckpt.load_ticket(run_dir / "model.pth")
    assert not temporaries(run_dir)
    status = json.loads((run_dir / "summary.json").read_text())["status"]
    assert status.startswith(f"stopped ({signal.Signals(signum).name})") and "--resume" in status
    resume_to_the_end(env, out, after_epoch=2)


def test_sigterm_inside_a_checkpoint_write_waits_for_the_write(env, tmp_path):
    """SIGTERM while the epoch-2 last.pth is half written: the process finishes that write, then stops (143)."""
    out = tmp_path / "out"
    proc = Proc(tmp_path, "main_DST.py", argv(env, out), pause="during:last.pth#2", tag="in-write",
                split_stderr=True)
    assert proc.wait_for("paused during last.pth#2")
    proc.p.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert proc.p.poll() is None, "the signal did not wait for the checkpoint being written"
    proc.release.touch()
    stopped_cleanly(proc, signal.SIGTERM)
    run_dir = out / RUN
    assert int(ckpt.safe_load(run_dir / "last.pth")["epoch"]) == 2  # the write in progress was completed
    assert not temporaries(run_dir)


def test_a_second_signal_does_not_wait_and_keeps_the_previous_checkpoint(env, tmp_path):
    """A second SIGTERM during a held write stops at once: the write is dropped, the epoch-1 last.pth is intact."""
    out = tmp_path / "out"
    proc = Proc(tmp_path, "main_DST.py", argv(env, out), pause="during:last.pth#2", tag="twice", split_stderr=True)
    assert proc.wait_for("paused during last.pth#2")
    proc.p.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.p.send_signal(signal.SIGTERM)
    stopped_cleanly(proc, signal.SIGTERM)
    run_dir = out / RUN
    assert int(ckpt.safe_load(run_dir / "last.pth")["epoch"]) == 1
    assert not temporaries(run_dir)  # the half-written temporary was removed


def test_run_cli_handles_sigterm_and_restores_the_handlers(capsys):
    def unhandled(signum, frame):  # what the test sees if run_cli leaves SIGTERM alone (instead of dying)
        raise AssertionError("run_cli did not handle SIGTERM")

    def stopped(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM did not stop the entry point")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        before = {s: signal.getsignal(s) for s in errors.STOP_SIGNALS}
        with pytest.raises(SystemExit) as exc:
            errors.run_cli(stopped, [], prog="prog")
        assert exc.value.code == 143
        assert capsys.readouterr().err.strip().endswith(RESUME_LINE)
        assert {s: signal.getsignal(s) for s in errors.STOP_SIGNALS} == before
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_evaluation_says_what_it_keeps_when_stopped(capsys):
    """ensemble_freetickets.py has no --resume to continue with: its stop line points at the logit cache."""
    import runpy

    def interrupted(argv):
        raise KeyboardInterrupt

    from sparselearning import evaluation

    original = evaluation.main
    evaluation.main = interrupted
    try:
        with pytest.raises(SystemExit) as exc:
            runpy.run_path(str(REPO / "ensemble_freetickets.py"), run_name="__main__")
    finally:
        evaluation.main = original
    assert exc.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err.endswith("stopped by SIGINT; the logit cache keeps every finished forward pass - run the same "
                        "command again to go on") and RESUME_LINE not in err
