"""Fault injection on the training engine: no run loses work.

- SIGKILL at many moments of DST, EDST and PF runs (in the middle of an epoch, right after a checkpoint, in the
  middle of writing a checkpoint, a ticket or a snapshot, and at seeded random moments), each followed by
  ``--resume``: no file a loader would pick up is ever truncated, the run continues from its last complete
  checkpoint, and the final tickets equal an uninterrupted run's bit for bit (CPU).
- Two runs at once into one folder (the lock); a finished run is never overwritten by a new run.
- A non-finite loss stops the run naming the epoch and step; checkpoints and tickets stay intact.
- A full disk or an unwritable run folder while saving: one stderr line naming the path, the previous
  checkpoint intact, and ``--resume`` finishes the run as if nothing happened.

The killed runs are real processes started as users start them, through a small bootstrap (``BOOT`` in helpers.py,
passed with ``python -c``) that only observes and pauses: it logs every atomic save to an events file and, when
asked, holds the process in the middle of one save (half the bytes written to the temporary file), right after one,
before one training step, or while it builds data and model, so that the kill (or a second run) lands exactly there.
Nothing in the production code knows about it.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, Proc, assert_one_line_error, assert_same_run, tree_state, write_fashion_mnist
from models import get_model
from sparselearning import checkpoint as ckpt
from sparselearning import recipes as T  # main() lives in recipes since Run(plan)
from sparselearning.errors import run_cli
from sparselearning.evaluation import discover_tickets

pytestmark = pytest.mark.slow  # end-to-end: real training/evaluation processes


SEED = 3
CONFIGS = {  # script, flags, run folder under <output-dir>/cnn-small/fashionmnist/
    "DST": ("main_DST.py", ["--sparse", "--density", "0.2", "--epochs", "4", "--update-frequency", "3"],
            "density_0.2/DST/seed=3"),
    "EDST": ("main_EDST.py", ["--sparse", "--nolrsche", "--epochs", "5", "--epochs-explo", "1", "--model-num", "2",
                              "--density", "0.2", "--update-frequency", "3", "--save-every", "2"],
             "density_0.2/EDST/M=2/seed=3"),
    "PF": ("main_PF.py", ["--sparse", "--fix", "--PF-rate", "0.8", "--epochs", "3", "--lr", "0.01",
                          "--pretrained", "{pretrained}"], "density_0.2/PF/seed=3"),
}

# Kill plans: one entry per process of a chain (each process after the first runs with --resume); a last process
# without a kill runs to the end. ("during", save) / ("after", save): the n-th atomic save of that file name in
# that process; ("step", epoch, step): before that training step; ("random", lo, hi): a seeded random delay
# (seconds after the interpreter is up; if the process finishes first, that kill point is not counted).
PLANS = {
    "DST": [("during", "model.pth#1"),  # the first ticket, before any last.pth exists
            ("after", "last.pth#1"),  # right after the epoch-1 checkpoint
            ("step", 3, 4),  # resumed from epoch 1: epoch 2 done, in the middle of epoch 3
            ("during", "last.pth#1"),  # resumed from epoch 2: writing the epoch-3 checkpoint
            ("random", 0.2, 2.0)],
    "EDST": [("after", "model_0.pth#1"),  # the phase-0 ticket of epoch 2 is newer than last.pth (epoch 1)
             ("during", "epoch_2.pth#1"),  # writing the epoch-2 snapshot (--save-every 2)
             ("after", "last.pth#2"),  # right after the epoch-3 checkpoint (re-exploration done)
             ("step", 4, 2),  # the first steps after the re-exploration
             ("during", "model_1.pth#1"),  # writing the first phase-1 ticket
             ("random", 0.2, 2.0)],
    "PF": [("after", "model.pth#1"),
           ("during", "last.pth#2"),
           ("step", 3, 5),
           ("random", 0.2, 1.2)],
}
KILLS: list[dict] = []  # the figures, printed at the end of the module (pytest -s)


def common(data: Path, out: Path) -> list[str]:
    return ["--model", "cnn-small", "--data", "fashionmnist", "--data-dir", str(data), "--batch-size", "32",
            "--test-batch-size", "64", "--output-dir", str(out), "--no-progress", "--seed", str(SEED)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    data = write_fashion_mnist(base / "data", n_train=200, n_test=40)  # 6 steps per epoch
    torch.manual_seed(11)
    pretrained = base / "dense.pt"  # PF's dense start: a plain state_dict
    torch.save(get_model("cnn-small", 10, 1, 28).state_dict(), pretrained)
    refs: dict[str, Path] = {}

    def args_for(name: str, out: Path) -> list[str]:
        flags = [f.replace("{pretrained}", str(pretrained)) for f in CONFIGS[name][1]]
        return flags + common(data, out)

    def run_dir(name: str, out: Path) -> Path:
        return out / "cnn-small" / "fashionmnist" / CONFIGS[name][2]

    def reference(name: str) -> Path:
        """One uninterrupted run per configuration, shared by the tests (in-process: no start-up cost)."""
        if name not in refs:
            out = base / "ref" / name
            T.main(CONFIGS[name][0].removeprefix("main_").removesuffix(".py"), args_for(name, out))
            refs[name] = run_dir(name, out)
        return refs[name]

    yield {"base": base, "data": data, "pretrained": pretrained, "args_for": args_for, "run_dir": run_dir,
           "reference": reference}
    if KILLS:
        print(f"\nkill points: {len(KILLS)} tried, {sum(k['survived'] for k in KILLS)} survived, files lost: 0")
        for k in KILLS:
            print(f"  {k['config']:5s} #{k['index']}: {k['where']:55s} last complete checkpoint: epoch "
                  f"{k['last_epoch']}, temporaries left: {k['leftovers']}")


# ----------------------------------------------------------------------------------------------- helpers
def kill_at(proc: Proc, step: tuple, rng: random.Random) -> str | None:
    """SIGKILL the process at `step`; where it landed, or None if the process ended before."""
    kind = step[0]
    if kind in ("during", "after"):
        proc.wait_for(f"paused {kind} {step[1]}")
    elif kind == "step":
        proc.wait_for(f"paused at epoch {step[1]} step {step[2]}")
    else:  # a random moment after the interpreter is up (imports done): start-up, restore, training or saving
        proc.wait_for("start")
        time.sleep(rng.uniform(step[1], step[2]))
    if proc.p.poll() is not None:
        return None
    proc.p.send_signal(signal.SIGKILL)
    proc.p.wait()
    events = proc.lines()
    last = events[-1] if events else ""
    if last.startswith("paused during "):
        return f"in the middle of writing {last.split()[-1]}"
    if last.startswith("paused after "):
        return f"right after writing {last.split()[-1]}"
    if last.startswith("paused at epoch"):
        return "in the middle of " + last.removeprefix("paused at ")
    if last.startswith("begin "):
        return f"random: while writing {last.split()[-1]}"
    if last.startswith("end "):
        return f"random: after {last.split()[-1]} (training/validating)"
    return "random: during start-up, before any checkpoint"


def check_files_after_kill(run_dir: Path) -> tuple[int | None, list[str]]:
    """Every file a loader would pick up loads (weights_only); returns (last.pth epoch, hidden temporaries)."""
    leftovers = []
    if not run_dir.exists():
        return None, leftovers
    for p in sorted(run_dir.rglob("*")):
        if p.is_dir() or p.name in (".lock", "train.log"):
            continue
        if p.name.endswith(".tmp"):
            assert p.name.startswith("."), p  # a temporary is hidden: no loader lists it
            leftovers.append(p.relative_to(run_dir).as_posix())
        elif p.name == "last.pth":
            assert ckpt.safe_load(p)["format"] == ckpt.RESUME_FORMAT
        elif p.suffix == ".pth":
            ckpt.load_ticket(p)
        elif p.name == "summary.json":
            assert json.loads(p.read_text())["status"] in ("running", "finished")
        elif p.name == "metrics.csv":  # written atomically: always whole rows under the header
            rows = list(csv.DictReader(io.StringIO(p.read_text())))
            assert rows and all(r["epoch"].isdigit() for r in rows), p
        elif p.name == "curves.png":
            from PIL import Image

            with Image.open(p) as im:
                im.load()  # a complete PNG
        else:
            raise AssertionError(f"unexpected file {p}")
    for t in discover_tickets(run_dir):  # what ensemble_freetickets.py --resume would evaluate
        assert not t.name.startswith("."), t
        ckpt.load_ticket(t)
    last = run_dir / "last.pth"
    return (int(ckpt.safe_load(last)["epoch"]) if last.exists() else None), leftovers


def in_process(script: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run an entry point in this process through run_cli (exit code, stdout, stderr), as its script would."""
    capsys.readouterr()
    try:
        run_cli(lambda a: T.main(script, a), argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def pth_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*.pth")}


# ----------------------------------------------------------------------------------------------- SIGKILL
@pytest.mark.parametrize("name", ["DST", "EDST", "PF"])
def test_sigkill_anywhere_then_resume_is_bit_identical(name, env, tmp_path):
    ref_dir = env["reference"](name)
    out = tmp_path / "out"
    args = env["args_for"](name, out)
    run_dir = env["run_dir"](name, out)
    script = CONFIGS[name][0]
    rng = random.Random(f"freetickets-{name}")
    plan = PLANS[name]
    last_epoch, kills = None, []
    for i, step in enumerate([*plan, None]):
        extra = ["--resume"] if i else []
        pause = {"during": lambda s: f"during:{s[1]}", "after": lambda s: f"after:{s[1]}",
                 "step": lambda s: f"step:{s[1]}:{s[2]}"}.get(step[0], lambda s: "")(step) if step else ""
        proc = Proc(tmp_path, script, args + extra, pause=pause, tag=str(i))
        if step is None:
            assert proc.p.wait(timeout=300) == 0, proc.output()[-3000:]
            where = None
        else:
            where = kill_at(proc, step, rng)
            if where is None:  # a random delay longer than the rest of the run: it finished
                assert step[0] == "random" and proc.p.returncode == 0, proc.output()[-3000:]
        if i and any(line.startswith("begin ") for line in proc.lines()):  # it got past restoring
            fresh = f"note: {run_dir} holds no last.pth yet" if name == "PF" else f"note: nothing to resume in {run_dir}"
            expected = f"resumed {run_dir} after epoch {last_epoch}" if last_epoch is not None else fresh
            assert expected in proc.output(), (expected, proc.output()[-2000:])
        if where is None:
            break
        last_epoch, leftovers = check_files_after_kill(run_dir)
        assert len(leftovers) <= 1  # only the write this kill interrupted: earlier ones were cleaned up
        kills.append({"config": name, "index": i + 1, "where": where, "last_epoch": last_epoch,
                      "leftovers": len(leftovers), "survived": False})
    assert sum(not k["where"].startswith("random") for k in kills) == sum(s[0] != "random" for s in plan)
    assert_same_run(run_dir, ref_dir)
    KILLS.extend({**k, "survived": True} for k in kills)


# ----------------------------------------------------------------------------------------------- the lock
def test_two_runs_at_once_into_one_folder(env, tmp_path):
    """A second run (plain, --overwrite or --resume) into a folder a running run holds stops with one line."""
    out = tmp_path / "out"
    args = env["args_for"]("DST", out)
    run_dir = env["run_dir"]("DST", out)
    first = Proc(tmp_path, "main_DST.py", args, pause="after:model.pth#1", tag="first")
    assert first.wait_for("paused after model.pth#1")  # it holds the lock, between two of its writes
    before = tree_state(run_dir)
    seconds = [subprocess.Popen([sys.executable, str(REPO / "main_DST.py"), *args, *extra], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for extra in ([], ["--overwrite"], ["--resume"])]
    for p in seconds:
        _, err = p.communicate(timeout=300)
        assert_one_line_error(p.returncode, err, "another run is writing into", str(run_dir))
    assert tree_state(run_dir) == before
    first.release.touch()
    assert first.p.wait(timeout=300) == 0, first.output()[-3000:]
    assert_same_run(run_dir, env["reference"]("DST"))  # the first run completed unharmed


def test_finished_run_is_never_overwritten(env, tmp_path):
    """Runs of another configuration (and of the same one) into a finished run's folder: one line, nothing changes."""
    ref_dir = env["reference"]("DST")
    out = tmp_path / "out"
    run_dir = env["run_dir"]("DST", out)
    shutil.copytree(ref_dir, run_dir)
    before = tree_state(out)
    args = env["args_for"]("DST", out)
    variants = [([], ("already holds a run", "--resume", "--overwrite")),
                (["--lr", "0.05"], ("already holds a run", "--resume", "--overwrite")),
                (["--epochs", "6", "--death-rate", "0.3"], ("already holds a run", "--resume", "--overwrite")),
                (["--lr", "0.05", "--resume"], ("other settings", "lr", "--overwrite"))]
    for extra, needles in variants:  # one after the other: at once, all but one would meet the lock first
        p = subprocess.run([sys.executable, str(REPO / "main_DST.py"), *args, *extra], cwd=REPO, text=True,
                           capture_output=True, timeout=300)
        assert_one_line_error(p.returncode, p.stderr, *needles)
    assert tree_state(out) == before


def test_a_run_started_while_another_builds_is_refused(env, tmp_path):
    """The lock comes before the folder check: a second run started while the first still builds its data and
    model (where both used to find the folder free, and the later one overwrote the other's tickets) is refused."""
    out = tmp_path / "out"
    args = env["args_for"]("DST", out)
    run_dir = env["run_dir"]("DST", out)
    first = Proc(tmp_path, "main_DST.py", args, pause="build", tag="first")
    assert first.wait_for("paused in build")  # checked the folder (empty), holds the lock, builds
    second = subprocess.run([sys.executable, str(REPO / "main_DST.py"), *args], cwd=REPO, text=True,
                            capture_output=True, timeout=300)
    assert_one_line_error(second.returncode, second.stderr, "another run is writing into", str(run_dir))
    first.release.touch()
    assert first.p.wait(timeout=300) == 0, first.output()[-3000:]
    assert_same_run(run_dir, env["reference"]("DST"))


def test_a_run_killed_in_its_first_epoch_leaves_its_flags(env, tmp_path):
    """summary.json (status "running", every flag) is written when the run starts, as its first log line says."""
    out = tmp_path / "out"
    args = env["args_for"]("DST", out)
    run_dir = env["run_dir"]("DST", out)
    proc = Proc(tmp_path, "main_DST.py", args, pause="step:1:3", tag="killed")
    assert kill_at(proc, ("step", 1, 3), random.Random(0)) == "in the middle of epoch 1 step 3"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "running" and summary["history"] == [] and summary["flags"]["density"] == 0.2
    assert "all flags in summary.json" in (run_dir / "train.log").read_text()
    assert not (run_dir / "last.pth").exists()


# ----------------------------------------------------------------------------------------------- NaN / inf
def test_absurd_lr_stops_naming_epoch_and_step(env, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = in_process("DST", env["args_for"]("DST", out) + ["--lr", "1e30"], capsys)
    line = assert_one_line_error(code, err, "the loss became", "at epoch 1, step ", "lower --lr")
    assert "nan" in line or "inf" in line
    run_dir = env["run_dir"]("DST", out)
    assert not list(run_dir.rglob("*.pth"))  # it failed in epoch 1: nothing half-trained was kept
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed: non-finite loss"


def test_nan_loss_keeps_checkpoint_and_tickets_then_resume_finishes(env, tmp_path, monkeypatch, capsys):
    """A NaN at epoch 3, step 2 (the inputs of that batch poisoned): stop, keep every file, resume exactly."""
    out = tmp_path / "out"
    argv = env["args_for"]("DST", out)
    run_dir = env["run_dir"]("DST", out)
    real, seen = T.train_one_epoch, {}

    def poisoned(model, batches, *args, epoch=0, **kwargs):
        if epoch == 3:
            seen["files"] = pth_bytes(run_dir)

            def batches_with_nan(batches=batches):
                for i, (x, y) in enumerate(batches):
                    yield (torch.full_like(x, float("nan")) if i == 1 else x), y

            batches = batches_with_nan()
        return real(model, batches, *args, epoch=epoch, **kwargs)

    monkeypatch.setattr(T, "train_one_epoch", poisoned)
    code, _, err = in_process("DST", argv, capsys)
    assert_one_line_error(code, err, "the loss became nan at epoch 3, step 2", "intact")
    assert seen["files"].keys() >= {"last.pth", "model.pth"}
    assert pth_bytes(run_dir) == seen["files"]  # checkpoint and tickets untouched
    assert int(ckpt.safe_load(run_dir / "last.pth")["epoch"]) == 2
    ckpt.load_ticket(run_dir / "model.pth")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed: non-finite loss" and len(summary["history"]) == 2
    monkeypatch.setattr(T, "train_one_epoch", real)
    code, outtext, err = in_process("DST", argv + ["--resume"], capsys)
    assert code == 0, err
    assert f"resumed {run_dir} after epoch 2" in outtext
    assert_same_run(run_dir, env["reference"]("DST"))


# ----------------------------------------------------------------------------------------------- disk faults
def test_full_disk_while_saving_keeps_previous_checkpoint(env, tmp_path, monkeypatch, capsys):
    """The epoch-3 last.pth goes to /dev/full (a real ENOSPC from the kernel): one line naming the path, epoch 2
    kept, no temporary left; --resume then finishes bit-identically."""
    out = tmp_path / "out"
    argv = env["args_for"]("DST", out)
    run_dir = env["run_dir"]("DST", out)
    real_mkstemp, calls, seen = tempfile.mkstemp, [], {}

    def mkstemp_on_full_disk(*args, **kwargs):
        fd, tmp = real_mkstemp(*args, **kwargs)
        if str(kwargs.get("prefix", "")).startswith(".last.pth."):
            calls.append(tmp)
            if len(calls) == 3:
                seen["files"] = pth_bytes(run_dir)
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
        return fd, tmp

    if not os.path.exists("/dev/full"):  # pragma: no cover - Linux has it
        pytest.skip("/dev/full is missing")
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_on_full_disk)
    code, _, err = in_process("DST", argv, capsys)
    assert_one_line_error(code, err, f"could not write {run_dir / 'last.pth'}", "No space left on device",
                          "--resume")
    assert pth_bytes(run_dir) == seen["files"]
    assert int(ckpt.safe_load(run_dir / "last.pth")["epoch"]) == 2
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)
    code, _, err = in_process("DST", argv + ["--resume"], capsys)
    assert code == 0, err
    assert_same_run(run_dir, env["reference"]("DST"))


def test_unwritable_run_folder_while_saving(env, tmp_path, monkeypatch, capsys):
    """From epoch 2 on the run folder refuses new files (EACCES, as a read-only folder for a non-root user)."""
    out = tmp_path / "out"
    argv = env["args_for"]("DST", out)
    run_dir = env["run_dir"]("DST", out)
    real_mkstemp, real_epoch, seen = tempfile.mkstemp, T.train_one_epoch, {}

    def mkstemp(*args, **kwargs):
        if seen and Path(kwargs.get("dir", "")).resolve() == run_dir.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(kwargs["dir"]))
        return real_mkstemp(*args, **kwargs)

    def epoch_hook(model, batches, *args, epoch=0, **kwargs):
        if epoch == 2:
            seen["files"] = pth_bytes(run_dir)
        return real_epoch(model, batches, *args, epoch=epoch, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(T, "train_one_epoch", epoch_hook)
    code, _, err = in_process("DST", argv, capsys)
    line = assert_one_line_error(code, err, f"could not write {run_dir}", "Permission denied")
    assert "last.pth" in line or "model.pth" in line
    assert pth_bytes(run_dir) == seen["files"]
    assert int(ckpt.safe_load(run_dir / "last.pth")["epoch"]) == 1
    ckpt.load_ticket(run_dir / "model.pth")


def test_log_file_unwritable_is_one_line(env, tmp_path, monkeypatch, capsys):
    """A real OSError outside the atomic writes (train.log turned into a folder mid-run): one line naming it."""
    out = tmp_path / "out"
    argv = env["args_for"]("DST", out)
    run_dir = env["run_dir"]("DST", out)
    real_epoch, seen = T.train_one_epoch, {}

    def epoch_hook(model, batches, *args, epoch=0, **kwargs):
        if epoch == 2:
            (run_dir / "train.log").unlink()
            (run_dir / "train.log").mkdir()
            seen["files"] = pth_bytes(run_dir)
        return real_epoch(model, batches, *args, epoch=epoch, **kwargs)

    monkeypatch.setattr(T, "train_one_epoch", epoch_hook)
    code, _, err = in_process("DST", argv, capsys)
    assert_one_line_error(code, err, f"could not write {run_dir / 'train.log'}", "--resume")
    assert ckpt.safe_load(run_dir / "last.pth")["epoch"] == 1  # the log line comes before epoch 2's checkpoint
    for name in seen["files"]:
        (ckpt.load_ticket if name.startswith("model") else ckpt.safe_load)(run_dir / name)
