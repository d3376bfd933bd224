import math

import pytest
import torch


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


@pytest.fixture
def wrn28_10_shapes():
    return wrn_shapes()


@pytest.fixture(scope="module")
def single_torch_thread():
    """For modules of many tiny tensor ops: on a small, busy machine torch's intra-op threads only add
    contention (10x slower), so such modules run on one thread (restored afterwards). Use with
    ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def numel(shape):
    return math.prod(shape)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------ tiny datasets in real on-disk formats
import gzip
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _idx_bytes(array: np.ndarray) -> bytes:
    dtype_code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, dtype_code, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


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
    """FashionMNIST/raw/*.gz as torchvision lays them out."""
    rng = np.random.default_rng(seed)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        x, y = _learnable_images(n, 10, (28, 28), rng)
        (raw / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(x)))
        (raw / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(y)))
    return root


def write_cifar10(root: Path, per_batch: int = 60, n_test: int = 60, seed: int = 0) -> Path:
    """cifar-10-batches-py/ pickles (data_batch_1..5, test_batch) in the release's format."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        x, y = _learnable_images(n, 10, (3, 32, 32), rng)
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": x.reshape(n, -1), b"labels": [int(v) for v in y]}, fh)
    return root


@pytest.fixture
def fmnist_dir(tmp_path):
    return write_fashion_mnist(tmp_path / "data")


def run_script(*args, cwd=None, timeout=600):
    """Run a repository script as a user would; returns CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------ reliability helpers (test_faults, test_bad_inputs,
# test_security)
import hashlib


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
