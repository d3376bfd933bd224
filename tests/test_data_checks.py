"""Data files are checked when loaded: CIFAR pickles cannot run code, labels and image shapes are
in range, and a --data-dir that is a file is refused (no silent fallback to another copy)."""
from __future__ import annotations

import gzip
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import Exec, Shell
from sparselearning import data as D
from sparselearning.errors import UsageError

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(autouse=True)
def _fresh_cache():
    D.clear_cache()
    yield
    D.clear_cache()




def _batch(n, seed, label_key=b"labels", classes=10):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"training batch 1 of 5", label_key: rng.integers(0, classes, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"a_%d.png" % i for i in range(n)]}


def write_cifar10(root: Path, n=6, protocol=2, test=None, **replace) -> list[dict]:
    """cifar-10-batches-py as released; replace={'data_batch_3': obj} puts obj in that file instead."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        d = replace.get(name, _batch(n, i))
        out.append(d)
        (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
    return out


def write_cifar100(root: Path, n=6, **replace):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("train", "test")):
        d = replace.get(name, _batch(n, 10 + i, b"fine_labels", 100))
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">i", d) for d in arr.shape) + arr.tobytes()


def write_fmnist(root: Path, labels=None, size=28, n=5):
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        y = np.asarray(labels if labels is not None else rng.integers(0, 10, n), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(x)))
        (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(y)))


# =========================================================================== the real format loads
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_load(tmp_path, protocol):
    written = write_cifar10(tmp_path, protocol=protocol)
    x, y = D.load_split("cifar10", "train", str(tmp_path), download=False)
    want_x = np.concatenate([d[b"data"] for d in written[:5]]).reshape(-1, 3, 32, 32)
    assert np.array_equal(x.numpy(), want_x) and y.tolist() == sum((d[b"labels"] for d in written[:5]), [])


def test_the_release_files_numpy1_module_name_loads(tmp_path):
    """The released batches (Python 2 cPickle, numpy 1) name numpy.core.multiarray._reconstruct."""
    written = write_cifar10(tmp_path)
    f = tmp_path / "cifar-10-batches-py" / "test_batch"
    raw = f.read_bytes()
    assert b"cnumpy._core.multiarray\n_reconstruct\n" in raw  # protocol 2 GLOBAL opcode, as in the release
    f.write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    x, y = D.load_split("cifar10", "test", str(tmp_path), download=False)
    assert np.array_equal(x.numpy().reshape(-1, 3072), written[5][b"data"]) and y.tolist() == written[5][b"labels"]


# =========================================================================== payloads are refused everywhere
def _payloads(marker):
    return {"shell": {b"data": Shell(marker), b"labels": [0]}, "exec": Exec(marker),
            "object-array": {b"data": np.array([Shell(marker)], dtype=object), b"labels": [0]}}


def test_control_plain_pickle_runs_the_payload(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Exec(marker), protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["shell", "exec", "object-array"])
@pytest.mark.parametrize("dataset,split,file", [("cifar10", "train", "data_batch_3"), ("cifar10", "test", "test_batch"),
                                                ("cifar100", "test", "test"), ("cifar100", "train", "train")])
def test_poisoned_cifar_file_is_refused_and_never_runs(tmp_path, kind, dataset, split, file):
    marker = tmp_path / "PWNED"
    payload = _payloads(marker)[kind]
    (write_cifar10 if dataset == "cifar10" else write_cifar100)(tmp_path / "d", **{file: payload})
    folder = "cifar-10-batches-py" if dataset == "cifar10" else "cifar-100-python"
    with pytest.raises(UsageError) as err:
        D.load_split(dataset, split, str(tmp_path / "d"), download=False)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "d" / folder / file) in msg and "refused" in msg
    if split == "test":  # the same file as an OoD set for another dataset
        with pytest.raises(UsageError, match="refused"):
            D.ood_images(dataset, D.get_spec("fashionmnist"), 3, str(tmp_path / "d"), None, download=False)
    if dataset == "cifar10" and split == "train":
        with pytest.raises(UsageError, match="refused"):
            D.make_loaders("cifar10", str(tmp_path / "d"), 4, 4, 0.0, "cpu", torch.Generator(), download=False)
    assert not marker.exists()


# =========================================================================== labels and shapes
@pytest.mark.parametrize("dataset,file,bad", [("cifar10", "data_batch_2", -1), ("cifar10", "test_batch", 10),
                                              ("cifar100", "test", 100)])
def test_cifar_labels_out_of_range(tmp_path, dataset, file, bad):
    key, classes = (b"labels", 10) if dataset == "cifar10" else (b"fine_labels", 100)
    d = _batch(6, 3, key, classes)
    d[key][4] = bad
    (write_cifar10 if dataset == "cifar10" else write_cifar100)(tmp_path, **{file: d})
    split = "train" if file.startswith("data_batch") else "test"
    with pytest.raises(UsageError) as err:
        D.load_split(dataset, split, str(tmp_path), download=False)
    msg = str(err.value)
    assert "\n" not in msg and str(file) in msg and f"label {bad}" in msg and f"0..{classes - 1}" in msg


def test_cifar_images_of_the_wrong_shape(tmp_path):
    d = _batch(6, 0)
    d[b"data"] = d[b"data"][:, :1024]  # one channel only
    write_cifar10(tmp_path, data_batch_1=d)
    with pytest.raises(UsageError, match=r"data_batch_1 holds an array of shape \(6, 1024\), expected \(N, 3072\)"):
        D.load_split("cifar10", "train", str(tmp_path), download=False)
    d = _batch(6, 0)
    d[b"labels"] = d[b"labels"][:5]
    write_cifar10(tmp_path, data_batch_1=d)
    with pytest.raises(UsageError, match="labels"):
        D.load_split("cifar10", "train", str(tmp_path), download=False)


def test_fashion_mnist_labels_out_of_range(tmp_path):
    write_fmnist(tmp_path, labels=[1, 2, 200, 3, 4])
    with pytest.raises(UsageError) as err:
        D.load_split("fashionmnist", "train", str(tmp_path), download=False)
    msg = str(err.value)
    assert "\n" not in msg and "train-labels-idx1-ubyte.gz" in msg and "label 200" in msg and "0..9" in msg


def test_mnist_images_of_the_wrong_size(tmp_path):
    write_fmnist(tmp_path, size=32)
    with pytest.raises(UsageError, match="train-images-idx3-ubyte.gz holds uint8 images of 32x32 pixels"):
        D.load_split("fashionmnist", "train", str(tmp_path), download=False)


# =========================================================================== --data-dir is a file
def test_data_dir_that_is_a_file_is_refused(tmp_path, monkeypatch):
    """Else Fashion-MNIST would come from another copy (Debian's) without a word."""
    from sparselearning.data import sources

    other = tmp_path / "debian"
    write_fmnist(other)
    shutil.move(other / "FashionMNIST" / "raw", other / "fm")
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(other / "fm"))
    assert D.load_split("fashionmnist", "test", str(tmp_path / "empty"), download=False)[0].shape[0] == 5
    afile = tmp_path / "afile"
    afile.write_text("x")
    for name in ("fashionmnist", "cifar10"):
        with pytest.raises(UsageError) as err:
            D.load_split(name, "test", str(afile), download=True)
        assert "\n" not in str(err.value) and f"{afile} is a file" in str(err.value)


# =========================================================================== what torchvision accepts
def test_cifar_batches_with_str_keys_load_as_torchvision_reads_them(tmp_path):
    """A batch written by Python 3 with str keys ({'data': ..., 'labels': ...}) is what torchvision's CIFAR10
    reads too; it loads the same images and labels as the release's bytes keys."""
    import torchvision

    released = write_cifar10(tmp_path / "bytes")
    str_keyed = [{k.decode(): v for k, v in d.items()} for d in released]
    write_cifar10(tmp_path / "str", **{name: d for name, d in zip(
        [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"], str_keyed)})
    x, y = D.load_split("cifar10", "test", str(tmp_path / "str"), download=False)

    class UncheckedCIFAR10(torchvision.datasets.CIFAR10):  # torchvision checks md5 sums of the real release
        def _check_integrity(self):
            return True

        def _load_meta(self):  # batches.meta (class names) is not part of the test
            pass

    ref = UncheckedCIFAR10(str(tmp_path / "str"), train=False, download=False)
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), ref.data) and y.tolist() == list(ref.targets)
    xb, yb = D.load_split("cifar10", "test", str(tmp_path / "bytes"), download=False)
    assert torch.equal(x, xb) and torch.equal(y, yb)


def test_a_pickle_that_is_not_a_cifar_batch_says_what_it_holds(tmp_path):
    write_cifar10(tmp_path, test_batch={"images": np.zeros((2, 3072), np.uint8), "targets": [0, 1]})
    with pytest.raises(UsageError) as err:
        D.load_split("cifar10", "test", str(tmp_path), download=False)
    msg = str(err.value)
    assert "\n" not in msg and "test_batch is not a CIFAR batch" in msg and "'images', 'targets'" in msg
    assert "'data' and 'labels'" in msg and "re-download" not in msg
    write_cifar100(tmp_path, test={b"data": np.zeros((2, 3072), np.uint8), b"coarse_labels": [0, 1]})
    with pytest.raises(UsageError, match="'data' and 'fine_labels'"):
        D.load_split("cifar100", "test", str(tmp_path), download=False)


@pytest.mark.parametrize("data", [np.zeros((6, 3072), np.float32), np.zeros((6, 3072), np.int16)])
def test_cifar_batch_data_must_be_uint8(tmp_path, data):
    d = _batch(6, 0)
    d[b"data"] = data
    write_cifar10(tmp_path, test_batch=d)
    with pytest.raises(UsageError, match=f"test_batch holds {data.dtype} values in \\[0, 0\\], expected uint8"):
        D.load_split("cifar10", "test", str(tmp_path), download=False)
