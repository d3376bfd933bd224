"""Shared test helpers, imported by the tests directly (conftest.py keeps only fixtures).

- tiny datasets in the real on-disk formats: Fashion-MNIST idx files, CIFAR-10 pickles, an ImageFolder;
- running the scripts as users do (``run_script``), and the checks of a bad-input run (``assert_one_line_error``,
  ``tree_state``);
- ``BOOT`` and ``Proc``: a training script started through a small bootstrap that logs every atomic save and can
  hold the process at an exact point (used by test_faults.py and test_signals.py).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import pickle
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sparselearning import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]


def wrn_shapes(widen: int = 10, blocks: int = 4, classes: int = 10) -> dict[str, tuple]:
    """Conv/Linear weight shapes of a WRN-(6*blocks+4)-widen, written out independently of models/."""
    shapes = {"conv1.weight": (16, 3, 3, 3)}
    chans = [16, 16 * widen, 32 * widen, 64 * widen]
    for b in range(3):
        cin, cout = chans[b], chans[b + 1]
        for i in range(blocks):
            shapes[f"block{b + 1}.layer.{i}.conv1.weight"] = (cout, cin if i == 0 else cout, 3, 3)
            shapes[f"block{b + 1}.layer.{i}.conv2.weight"] = (cout, cout, 3, 3)
            if i == 0:
                shapes[f"block{b + 1}.layer.0.convShortcut.weight"] = (cout, cin, 1, 1)
    shapes["fc.weight"] = (classes, 64 * widen)
    return shapes


def load_module(path: Path, name: str):
    """Import the file at `path` as module `name` (benchmark scripts, which are no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_benchmark(name: str):
    """benchmarks/<name>.py as module bench_<name>."""
    return load_module(REPO / "benchmarks" / f"{name}.py", f"bench_{name}")


def sibling_tests(relpath: str):
    """Another test file's module (its constants and data writers), e.g. "imagenet/test_imagenet.py": the one
    pytest imported, else imported now."""
    name = Path(relpath).stem
    return sys.modules.get(name) or load_module(REPO / "tests" / relpath, name)


def numel(shape):
    return math.prod(shape)


# ------------------------------------------------------------------ tiny datasets in real on-disk formats
def idx_bytes(array: np.ndarray) -> bytes:
    """The idx format of MNIST-like files: magic 0, 0, 0x08 (unsigned byte), ndim; big-endian int32 sizes; bytes."""
    dtype_code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, dtype_code, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist_raw(root: Path, folder: str, splits: dict, gz: bool = True) -> Path:
    """<root>/<folder>/raw/<split>-images-idx3-ubyte[.gz] and -labels-idx1-ubyte[.gz] as torchvision lays them out;
    splits: {"train": (images, labels), "t10k": (images, labels)}."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in splits.items():
        for stem, array in ((f"{split}-images-idx3-ubyte", x), (f"{split}-labels-idx1-ubyte", y)):
            data = idx_bytes(np.asarray(array))
            (raw / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    return root


def _learnable_images(n: int, classes: int, shape: tuple, rng: np.random.Generator):
    """Images whose class is visible (a bright block at a class-specific place) plus noise."""
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 60, (n, *shape)).astype(np.uint8)
    h = shape[-2]
    for i, c in enumerate(labels):
        r = (c * 3) % (h - 6)
        images[i, ..., r:r + 6, 4:12] = 220
    return images, labels


def write_fashion_mnist(root: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> Path:
    """FashionMNIST/raw/*.gz of learnable images."""
    rng = np.random.default_rng(seed)
    return write_mnist_raw(root, "FashionMNIST", {split: _learnable_images(n, 10, (28, 28), rng)
                                                   for split, n in (("train", n_train), ("t10k", n_test))})


def write_pickles(folder: Path, files: dict, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    """One pickle per file name, as the CIFAR releases hold them (cifar-10-batches-py/, cifar-100-python/)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, obj in files.items():
        (folder / name).write_bytes(pickle.dumps(obj, protocol=protocol))
    return folder


def write_cifar10(root: Path, per_batch: int = 60, n_test: int = 60, seed: int = 0) -> Path:
    """cifar-10-batches-py/ pickles (data_batch_1..5, test_batch) of learnable images in the release's format."""
    rng = np.random.default_rng(seed)
    files = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        x, y = _learnable_images(n, 10, (3, 32, 32), rng)
        files[name] = {b"data": x.reshape(n, -1), b"labels": [int(v) for v in y]}
    write_pickles(root / "cifar-10-batches-py", files)
    return root


def run_script(*args, cwd=None, timeout=600):
    """Run a repository script as a user would; returns CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------ reliability checks
def tree_state(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under `roots` -> (kind, size, sha256): compare before/after to prove nothing changed."""
    state = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            state[str(root)] = ("missing",)
            continue
        for p in sorted([root, *root.rglob("*")]):
            if p.is_symlink():
                state[str(p)] = ("link", str(p.readlink()))
            elif p.is_dir():
                state[str(p)] = ("dir",)
            elif not p.is_file():  # a FIFO or socket: reading it would block
                state[str(p)] = ("special", stat.S_IFMT(p.lstat().st_mode))
            else:
                data = p.read_bytes()
                state[str(p)] = ("file", len(data), hashlib.sha256(data).hexdigest())
    return state


def assert_one_line_error(returncode: int, stderr: str, *needles: str) -> str:
    """Exit code 2, exactly one non-empty stderr line containing every needle, no traceback; returns the line."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert returncode == 2, f"exit code {returncode}, stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1, f"{len(lines)} stderr lines:\n{stderr[-3000:]}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    return lines[0]


def write_imagefolder(root: Path, classes=("n01", "n02"), per_class: int = 4, size=(20, 24)) -> Path:
    """A tiny ImageNet-style root: train/<class>/*.png and val/<class>/*.png."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (*size, 3)).astype(np.uint8)).save(folder / f"{i}.png")
    return root


# ------------------------------------------------------------------ observed training processes
BOOT = r"""
import io, os, runpy, sys, time
import torch
from sparselearning import checkpoint as _ck
from sparselearning import train as _tr

_EVENTS, _PAUSE, _RELEASE = os.environ["FT_EVENTS"], os.environ.get("FT_PAUSE", ""), os.environ.get("FT_RELEASE", "")
_counts, _current = {}, [None]
_save, _atomic_save, _train_one_epoch, _build = torch.save, _ck.atomic_save, _tr.train_one_epoch, _tr.Run.build


def _event(text):
    with open(_EVENTS, "a") as fh:
        fh.write(text + "\n")


def _hold():
    deadline = time.time() + 300
    while time.time() < deadline:
        if _RELEASE and os.path.exists(_RELEASE):
            return
        time.sleep(0.02)
    _event("hold timed out")
    os._exit(97)


def _paused_save(obj, f, *args, **kwargs):
    if _current[0] is not None and _PAUSE == "during:" + _current[0]:
        buf = io.BytesIO()
        _save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])  # a half-written temporary file, on disk
        f.flush()
        os.fsync(f.fileno())
        _event("paused during " + _current[0])
        _hold()
        f.write(data[len(data) // 2:])
        return None
    return _save(obj, f, *args, **kwargs)


def _observed_atomic_save(obj, path):
    name = os.path.basename(os.fspath(path))
    _counts[name] = _counts.get(name, 0) + 1
    _current[0] = tag = f"{name}#{_counts[name]}"
    _event("begin " + tag)
    try:
        _atomic_save(obj, path)
    finally:
        _current[0] = None
    _event("end " + tag)
    if _PAUSE == "after:" + tag:
        _event("paused after " + tag)
        _hold()


def _observed_epoch(model, batches, *args, epoch=0, **kwargs):
    if _PAUSE.startswith("step:") and int(_PAUSE.split(":")[1]) == epoch:
        stop = int(_PAUSE.split(":")[2])

        def held(batches=batches):
            for i, batch in enumerate(batches):
                if i + 1 == stop:
                    _event(f"paused at epoch {epoch} step {stop}")
                    _hold()
                yield batch

        batches = held()
    return _train_one_epoch(model, batches, *args, epoch=epoch, **kwargs)


def _observed_build(self):
    if _PAUSE == "build":
        _event("paused in build")
        _hold()
    return _build(self)


torch.save = _paused_save
_ck.atomic_save = _observed_atomic_save
_tr.train_one_epoch = _observed_epoch
_tr.Run.build = _observed_build
sys.argv = sys.argv[1:]
_event("start")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class Proc:
    """A training script started as a user starts it, through BOOT.

    pause: where BOOT holds the process ("during:<file>#<n>", "after:<file>#<n>", "step:<epoch>:<step>",
    "build"); touching `release` lets it go on. stderr goes to the stdout file unless split_stderr.
    """

    def __init__(self, folder: Path, script: str, args: list[str], pause: str = "", tag: str = "p",
                 split_stderr: bool = False):
        self.events = folder / f"events-{tag}.txt"
        self.stdout = folder / f"stdout-{tag}.txt"
        self.stderr = folder / f"stderr-{tag}.txt"
        self.release = folder / f"release-{tag}"
        env = {**os.environ, "FT_EVENTS": str(self.events), "FT_PAUSE": pause, "FT_RELEASE": str(self.release)}
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.p = subprocess.Popen([sys.executable, "-c", BOOT, str(REPO / script), *args], cwd=REPO, env=env,
                                      stdout=out, stderr=err if split_stderr else subprocess.STDOUT)

    def lines(self) -> list[str]:
        return self.events.read_text().splitlines() if self.events.exists() else []

    def wait_for(self, line: str, timeout: float = 240) -> bool:
        """True once `line` is logged; False if the process ended first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if line in self.lines():
                return True
            if self.p.poll() is not None:
                return line in self.lines()
            time.sleep(0.01)
        self.p.kill()
        raise AssertionError(f"timed out waiting for {line!r}; output:\n{self.stdout.read_text()[-3000:]}")

    def output(self) -> str:
        return self.stdout.read_text()


# ------------------------------------------------------------------ comparing runs
def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def timeless(history: list[dict]) -> list[dict]:
    """A run's per-epoch rows without their wall time (the one column two identical runs differ in)."""
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]


def timeless_csv(path: Path) -> list[dict]:
    """metrics.csv's rows without the wall-time column."""
    import csv

    with open(path, newline="") as fh:
        return timeless(list(csv.DictReader(fh)))


def assert_same_run(run_dir: Path, ref_dir: Path) -> None:
    """Tickets, snapshots, the final resume state and the history equal the uninterrupted run's, bit for bit."""
    names = sorted(p.relative_to(ref_dir).as_posix() for p in ref_dir.rglob("*.pth"))
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.pth")) == names
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    for name in names:
        if name == "last.pth":
            a, b = ckpt.safe_load(ref_dir / name), ckpt.safe_load(run_dir / name)
            for key in ("epoch", "model", "optimizer", "masking", "rng", "best", "flops"):
                assert same(a[key], b[key]), (name, key)
            assert same(timeless(a["history"]), timeless(b["history"])), (name, "history")
            continue
        a, b = ckpt.load_ticket(ref_dir / name), ckpt.load_ticket(run_dir / name)
        assert same(ckpt.ticket_state_dict(a), ckpt.ticket_state_dict(b)), name
        assert same(ckpt.ticket_masks(a), ckpt.ticket_masks(b)), name
        assert (a["epoch"], a["val_acc"], a["val_loss"]) == (b["epoch"], b["val_acc"], b["val_loss"]), name
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref_dir, run_dir))
    assert sb["status"] == "finished" and timeless(sa["history"]) == timeless(sb["history"])
    assert sa["tickets"] == sb["tickets"]
    assert timeless_csv(run_dir / "metrics.csv") == timeless_csv(ref_dir / "metrics.csv")


def paper_imagenet_lr(e: int) -> float:
    """Section 6.4, literally: the LR set at the start of 0-based epoch e (warm-up aside)."""
    lr = 0.1
    for epoch in range(e + 1):
        if epoch in (30, 100, 170, 240):
            lr = 0.01
        elif epoch in (60, 130, 200, 270):
            lr = 0.001
        elif epoch in (90, 160, 230, 300):
            lr = 0.0001
        elif epoch == 5:
            lr = 0.1
    return lr


class Shell:
    """Unpickling runs a shell command (os.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class Exec:
    """Unpickling runs arbitrary Python (exec)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def run_cli_captured(main, argv, capsys) -> tuple[int, str, str]:
    """run_cli(main, argv) in this process: (exit code, stdout, stderr)."""
    from sparselearning.errors import run_cli

    code = 0
    try:
        run_cli(main, argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------ many short script runs
# What every entry script imports; a forked child finds them loaded (torch alone takes 2-3 s to import here).
SCRIPT_PRELOAD = ("torch", "torchvision", "matplotlib.pyplot", "sparselearning.recipes", "sparselearning.evaluation.cli",
                  "sparselearning.data.imagenet")


def _script_child(script: str, argv: list[str], cwd: str, out: str, err: str) -> None:
    """The body of ``python SCRIPT ARGV`` in a forked process: its own cwd, stdout/stderr files, exit code."""
    import io
    import runpy
    import traceback

    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), line_buffering=True, errors="backslashreplace")
    sys.argv, sys.path[0] = [script, *argv], str(Path(script).parent)
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:  # what the interpreter does with it
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # the exit code also goes to a file: under load the fork server's status pipe can read as lost (exitcode 255)
    Path(f"{out[:-len('.out')]}.code").write_text(str(code))
    os._exit(code)


class ScriptForks:
    """Run entry scripts as ``python SCRIPT ARGV`` does, each in a process forked from one server that has
    the project's imports loaded: a real process (exit code, stderr, files, no shared state between runs),
    without paying the imports each time. Tests that use it also compare a few runs with real subprocesses."""

    def __init__(self, preload=SCRIPT_PRELOAD):
        import multiprocessing

        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(list(preload))

    def run(self, script: Path, argv: list[str], cwd: Path, streams: Path,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """streams: a path prefix for the .out/.err files (outside any folder a test fingerprints)."""
        out, err = Path(f"{streams}.out"), Path(f"{streams}.err")
        p = self.ctx.Process(target=_script_child, args=(str(script), [str(a) for a in argv], str(cwd), str(out),
                                                         str(err)))
        p.start()
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
            raise subprocess.TimeoutExpired([str(script), *argv], timeout)
        code_file = Path(f"{streams}.code")
        code = int(code_file.read_text()) if code_file.is_file() else p.exitcode
        code_file.unlink(missing_ok=True)
        return subprocess.CompletedProcess([str(script), *argv], code, out.read_text(), err.read_text())
