"""Data layer: on-disk formats, splits, the batch loader, augmentation, OoD sets, CIFAR-C."""
from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import write_mnist_raw, write_pickles
from sparselearning import data as D
from sparselearning.data import augment, sources
from sparselearning.data.normalization import channel_stats, normalize_uint8
from sparselearning.errors import UsageError

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# =========================================================================== writers of the real formats
def _rng(seed=0):
    return np.random.default_rng(seed)


def write_cifar10(root: Path, per_batch=20, n_test=10, seed=0):
    rng = _rng(seed)
    files, xs, ys = {}, [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        files[f"data_batch_{i}"] = {b"batch_label": b"training batch", b"labels": y, b"data": x,
                                    b"filenames": [b"f"] * per_batch}
        xs.append(x)
        ys += y
    xt = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    yt = rng.integers(0, 10, n_test).tolist()
    files["test_batch"] = {b"batch_label": b"testing batch", b"labels": yt, b"data": xt}
    write_pickles(root / "cifar-10-batches-py", files, protocol=2)
    return (np.concatenate(xs).reshape(-1, 3, 32, 32), np.array(ys)), (xt.reshape(-1, 3, 32, 32), np.array(yt))


def write_cifar100(root: Path, n_train=30, n_test=12, seed=1):
    rng = _rng(seed)
    files, out = {}, []
    for name, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        files[name] = {b"data": x, b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine]}
        out.append((x.reshape(-1, 3, 32, 32), np.array(fine)))
    write_pickles(root / "cifar-100-python", files, protocol=2)
    return out


def write_mnist_like(root: Path, folder_name: str, n_train=24, n_test=8, gz=True, seed=2):
    rng = _rng(seed)
    splits = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        splits[prefix] = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8))
    write_mnist_raw(root, folder_name, splits, gz)
    return [(x[:, None], y.astype(np.int64)) for x, y in splits.values()]


def write_svhn(root: Path, n=15, seed=3):
    import scipy.io

    rng = _rng(seed)
    x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(1, 11, n)  # SVHN labels are 1..10, 10 meaning the digit 0
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(root / "test_32x32.mat"), {"X": np.transpose(x, (2, 3, 1, 0)), "y": y.reshape(-1, 1)})
    return x, np.where(y == 10, 0, y)


@pytest.fixture(autouse=True)
def _fresh_cache():
    D.clear_cache()
    yield
    D.clear_cache()


@pytest.fixture
def no_network(monkeypatch):
    """Any name lookup or connection fails loudly, as on an offline machine."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise socket.gaierror(socket.EAI_NONAME, "network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a, **k: refuse(*a))
    return calls


# =========================================================================== specs
def test_specs_and_get_spec():
    assert set(D.SPECS) == {"cifar10", "cifar100", "fashionmnist", "mnist"}
    c10 = D.get_spec("cifar10")
    assert c10.mean == (0.4914, 0.4822, 0.4465) and c10.std == (0.2023, 0.1994, 0.2010)
    assert (c10.crop_padding, c10.pad_mode, c10.hflip, c10.train_size) == (4, "reflect", True, 50000)
    c100 = D.get_spec("CIFAR100")
    assert (c100.num_classes, c100.pad_mode, c100.crop_padding) == (100, "constant", 4)
    fm = D.get_spec("fashionmnist")
    assert (fm.in_channels, fm.image_size, fm.crop_padding, fm.pad_mode, fm.hflip) == (1, 28, 2, "constant", True)
    assert fm.mean == (0.2860,) and fm.std == (0.3530,) and fm.train_size == 60000
    mn = D.get_spec("mnist")
    assert (mn.crop_padding, mn.hflip, mn.mean, mn.std) == (0, False, (0.1307,), (0.3081,))
    with pytest.raises(UsageError) as err:
        D.get_spec("imagenet")
    assert "cifar10" in str(err.value) and "fashionmnist" in str(err.value) and "\n" not in str(err.value)


# =========================================================================== readers
def test_cifar10_roundtrip(tmp_path):
    (xtr, ytr), (xte, yte) = write_cifar10(tmp_path)
    x, y = D.load_split("cifar10", "train", str(tmp_path), download=False)
    assert x.dtype == torch.uint8 and y.dtype == torch.int64
    assert x.shape == (100, 3, 32, 32) and y.shape == (100,)
    assert np.array_equal(x.numpy(), xtr) and np.array_equal(y.numpy(), ytr)
    x, y = D.load_split("cifar10", "test", str(tmp_path), download=False)
    assert x.shape == (10, 3, 32, 32)
    assert np.array_equal(x.numpy(), xte) and np.array_equal(y.numpy(), yte)


def test_cifar100_roundtrip(tmp_path):
    (xtr, ytr), (xte, yte) = write_cifar100(tmp_path)
    x, y = D.load_split("cifar100", "train", str(tmp_path), download=False)
    assert x.shape == (30, 3, 32, 32) and np.array_equal(x.numpy(), xtr) and np.array_equal(y.numpy(), ytr)
    x, y = D.load_split("cifar100", "test", str(tmp_path), download=False)
    assert y.dtype == torch.int64 and np.array_equal(x.numpy(), xte) and np.array_equal(y.numpy(), yte)


@pytest.mark.parametrize("name,folder,gz", [("mnist", "MNIST", True), ("fashionmnist", "FashionMNIST", False),
                                            ("fashionmnist", "FashionMNIST", True)])
def test_idx_roundtrip(tmp_path, name, folder, gz):
    (xtr, ytr), (xte, yte) = write_mnist_like(tmp_path, folder, gz=gz)
    x, y = D.load_split(name, "train", str(tmp_path), download=False)  # data_dir wins over Debian's copy
    assert x.dtype == torch.uint8 and x.shape == (24, 1, 28, 28) and y.dtype == torch.int64
    assert np.array_equal(x.numpy(), xtr) and np.array_equal(y.numpy(), ytr)
    x, y = D.load_split(name, "test", str(tmp_path), download=False)
    assert x.shape == (8, 1, 28, 28) and np.array_equal(x.numpy(), xte) and np.array_equal(y.numpy(), yte)


def test_svhn_roundtrip(tmp_path):
    xs, ys = write_svhn(tmp_path)
    x, y = D.load_split("svhn", "test", str(tmp_path), download=False)
    assert x.dtype == torch.uint8 and x.shape == (15, 3, 32, 32) and y.dtype == torch.int64
    assert np.array_equal(x.numpy(), xs) and np.array_equal(y.numpy(), ys)
    assert int(y.max()) <= 9


def test_cache_hits_and_notices_changed_files(tmp_path):
    write_cifar100(tmp_path)
    a = D.load_split("cifar100", "test", str(tmp_path), download=False)
    b = D.load_split("cifar100", "test", str(tmp_path), download=False)
    assert a[0] is b[0] and a[1] is b[1]
    # Rewrite the file with other content: the cache key (size, mtime) changes, so it is re-read.
    f = tmp_path / "cifar-100-python" / "test"
    with open(f, "wb") as fh:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"fine_labels": [1, 2, 3]}, fh)
    os.utime(f, ns=(1, 1))
    c = D.load_split("cifar100", "test", str(tmp_path), download=False)
    assert c[0].shape == (3, 3, 32, 32) and c[1].tolist() == [1, 2, 3]


def test_download_false_never_touches_network(tmp_path, no_network, monkeypatch):
    called = []
    monkeypatch.setattr(sources, "_download", lambda *a: called.append(a))
    for name in ("cifar10", "cifar100", "mnist", "svhn"):
        with pytest.raises(UsageError) as err:
            D.load_split(name, "test", str(tmp_path / "empty"), download=False)
        msg = str(err.value)
        assert "\n" not in msg and str(tmp_path / "empty") in msg and "download" in msg
    assert called == [] and no_network == []


def test_missing_dataset_message_names_where_it_looked(tmp_path):
    with pytest.raises(UsageError) as err:
        D.load_split("cifar10", "train", str(tmp_path), download=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "cifar-10-batches-py") in msg and "CIFAR-10" in msg


def test_fashionmnist_message_mentions_debian(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(UsageError) as err:
        D.load_split("fashionmnist", "test", str(tmp_path), download=False)
    msg = str(err.value)
    assert "\n" not in msg and "dataset-fashion-mnist" in msg and str(tmp_path / "nowhere") in msg


def test_offline_download_fails_fast_with_one_line(tmp_path, no_network):
    """download=True on an offline machine: torchvision's download fails, we turn it into one line."""
    import time

    t0 = time.time()
    with pytest.raises(UsageError) as err:
        D.load_split("mnist", "test", str(tmp_path), download=True)
    msg = str(err.value)
    assert "\n" not in msg and "download failed" in msg and str(tmp_path / "MNIST" / "raw") in msg
    assert time.time() - t0 < 30


def test_bad_name_and_split():
    with pytest.raises(UsageError):
        D.load_split("imagenet", "train", download=False)
    with pytest.raises(UsageError):
        D.load_split("cifar10", "valid", download=False)


def test_corrupt_idx_is_a_usage_error(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / stem).write_bytes(b"\x12\x34\x08\x01garbage")
    with pytest.raises(UsageError):
        D.load_split("mnist", "test", str(tmp_path), download=False)


# =========================================================================== split
def test_train_val_split_takes_the_tail():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    y = torch.arange(100)
    (xt, yt), (xv, yv) = D.train_val_split(x, y, 0.1)
    assert yt.tolist() == list(range(90)) and yv.tolist() == list(range(90, 100))
    assert xv.view(-1).tolist() == list(range(90, 100))
    (xt, yt), (xv, yv) = D.train_val_split(x, y, 0.0)
    assert yt.shape == (100,) and xv.shape == (0, 1, 1, 1) and yv.shape == (0,)
    # CIFAR: 50000 with 0.1 -> validation = indices 45000..49999
    big = torch.arange(50000)
    (_, yt), (_, yv) = D.train_val_split(torch.zeros(50000, 1, 1, 1, dtype=torch.uint8), big, 0.1)
    assert yt.shape == (45000,) and int(yv[0]) == 45000 and int(yv[-1]) == 49999
    for bad in (-0.1, 1.0, 1.5, "x"):
        with pytest.raises(UsageError):
            D.train_val_split(x, y, bad)


# =========================================================================== loader
def _images(n, c=3, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, s, s), generator=g, dtype=torch.uint8)


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_covers_every_sample_once():
    spec = D.get_spec("cifar10")
    x = _images(103)
    y = torch.arange(103)
    loader = D.BatchLoader(x, y, 10, shuffle=True, augment=True, spec=spec,
                           generator=torch.Generator().manual_seed(0))
    assert len(loader) == 11 and loader.num_samples == 103
    for _ in range(2):
        batches = _epoch(loader)
        assert len(batches) == 11 and [len(b[1]) for b in batches] == [10] * 10 + [3]
        seen = torch.cat([b[1] for b in batches])
        assert sorted(seen.tolist()) == list(range(103))
        assert not torch.equal(seen, torch.arange(103))  # shuffled
        for xb, yb in batches:
            assert xb.dtype == torch.float32 and yb.dtype == torch.int64 and xb.shape[1:] == (3, 32, 32)
    dl = D.BatchLoader(x, y, 10, shuffle=True, augment=False, spec=spec, drop_last=True,
                       generator=torch.Generator().manual_seed(0))
    assert len(dl) == 10 and sum(len(b[1]) for b in dl) == 100


def test_loader_without_augmentation_serves_the_right_images():
    spec = D.get_spec("cifar100")
    x = _images(37)
    y = torch.arange(37)
    loader = D.BatchLoader(x, y, 8, shuffle=True, augment=False, spec=spec,
                           generator=torch.Generator().manual_seed(3))
    for xb, yb in loader:
        assert torch.equal(xb, normalized(x[yb], spec))


def test_same_seed_same_batches_and_exact_resume():
    spec = D.get_spec("cifar10")
    x, y = _images(50), torch.arange(50)

    def make(seed):
        return D.BatchLoader(x, y, 16, shuffle=True, augment=True, spec=spec,
                             generator=torch.Generator().manual_seed(seed))

    a, b = make(7), make(7)
    for _ in range(2):
        for (xa, ya), (xb, yb) in zip(_epoch(a), _epoch(b)):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = make(8)
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(_epoch(make(7)), _epoch(c)))

    # Save the generator state after an epoch, run the next epoch, restore, and run it again.
    loader = make(11)
    _epoch(loader)
    state = loader.generator.get_state()
    second = _epoch(loader)
    loader.generator.set_state(state)
    again = _epoch(loader)
    # A brand-new loader given a generator restored to that state does the same (process restart).
    g = torch.Generator()
    g.set_state(state)
    fresh = _epoch(D.BatchLoader(x, y, 16, shuffle=True, augment=True, spec=spec, generator=g))
    for (x1, y1), (x2, y2), (x3, y3) in zip(second, again, fresh):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(x1, x3) and torch.equal(y1, y3)


def test_loader_rejects_bad_input():
    spec = D.get_spec("cifar10")
    with pytest.raises(UsageError):
        D.BatchLoader(_images(4, c=1), torch.arange(4), 2, shuffle=False, augment=False, spec=spec)
    with pytest.raises(UsageError):
        D.BatchLoader(_images(4).float(), torch.arange(4), 2, shuffle=False, augment=False, spec=spec)
    with pytest.raises(UsageError):
        D.BatchLoader(_images(4), torch.arange(5), 2, shuffle=False, augment=False, spec=spec)
    with pytest.raises(UsageError):
        D.BatchLoader(_images(4), torch.arange(4), 0, shuffle=False, augment=False, spec=spec)


def test_make_loaders_val_and_test_not_augmented(tmp_path):
    (xtr, ytr), (xte, yte) = write_cifar10(tmp_path)
    spec = D.get_spec("cifar10")
    g = torch.Generator().manual_seed(0)
    train, val, test, got_spec = D.make_loaders("cifar10", str(tmp_path), 16, 4, 0.1, "cpu", g, download=False)
    assert got_spec == spec
    assert train.num_samples == 90 and val.num_samples == 10 and test.num_samples == 10
    assert train.augment and train.shuffle and train.generator is g
    xtr_t, xte_t = torch.from_numpy(xtr), torch.from_numpy(xte)
    xv = torch.cat([xb for xb, _ in val])
    yv = torch.cat([yb for _, yb in val])
    assert torch.equal(xv, normalized(xtr_t[90:], spec))
    assert yv.tolist() == ytr[90:].tolist()
    xt = torch.cat([xb for xb, _ in test])
    assert torch.equal(xt, normalized(xte_t, spec))
    # The training loader does augment: some served image differs from its plain normalisation.
    diffs = [not torch.equal(xb, normalized(xtr_t[yb_idx], spec))
             for xb, yb_idx in _train_batches_with_index(train, xtr_t)]
    assert any(diffs)
    _, val0, _, _ = D.make_loaders("cifar10", str(tmp_path), 16, 4, 0.0, "cpu", g, download=False)
    assert val0 is None


def _train_batches_with_index(loader, x_all):
    """Recover the source indices of a training epoch by replaying the permutation draw."""
    state = loader.generator.get_state()
    perm = torch.randperm(loader.num_samples, generator=loader.generator)
    loader.generator.set_state(state)
    out = []
    for k, (xb, _) in enumerate(loader):
        out.append((xb, perm[k * loader.batch_size:(k + 1) * loader.batch_size]))
    return out


# =========================================================================== augmentation
def _reference_crop(img: torch.Tensor, spec, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """Explicit per-image padding and slicing, as a transform pipeline would do it."""
    p = spec.crop_padding
    s = img.shape[-1]
    padded = F.pad(img[None].float(), (p, p, p, p), mode=spec.pad_mode)[0] if p else img.float()
    crop = padded[:, dy:dy + s, dx:dx + s]
    return crop.flip(-1) if flip else crop


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashionmnist"])
def test_augment_batch_matches_explicit_slicing(name):
    spec = D.get_spec(name)
    x = _images(64, c=spec.in_channels, s=spec.image_size, seed=5)
    g = torch.Generator().manual_seed(123)
    replay = torch.Generator()
    replay.set_state(g.get_state())
    out = D.augment_batch(x, spec, g)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    dy, dx, flip = augment.split_augment_table(augment.draw_augment_table(64, spec, replay), spec)
    assert torch.equal(g.get_state(), replay.get_state())  # the draws are exactly these
    for i in range(64):
        ref = _reference_crop(x[i], spec, int(dy[i]), int(dx[i]), bool(flip[i]))
        assert torch.equal(out[i].float(), ref), i
    # Per-sample choices really differ.
    choices = {(int(a), int(b), bool(c)) for a, b, c in zip(dy, dx, flip)}
    assert len(choices) > 20
    assert bool(flip.any()) and not bool(flip.all())


def test_augment_batch_outputs_are_valid_crops_by_search():
    """Independent of the draw order: every output equals one of the (2p+1)^2 x 2 crops of its padded input."""
    spec = D.get_spec("cifar10")
    x = _images(16, seed=9)
    out = D.augment_batch(x, spec, torch.Generator().manual_seed(0))
    p = spec.crop_padding
    padded = F.pad(x.float(), (p, p, p, p), mode=spec.pad_mode)
    crops = padded.unfold(2, 32, 1).unfold(3, 32, 1)  # (16, 3, 2p+1, 2p+1, 32, 32): every crop
    o = out.float()[:, :, None, None]
    same = (crops == o).flatten(4).all(-1).all(1)  # (16, 2p+1, 2p+1)
    same_flipped = (crops == o.flip(-1)).flatten(4).all(-1).all(1)
    assert (same.flatten(1).sum(1) + same_flipped.flatten(1).sum(1)).tolist() == [1] * 16


def test_augment_batch_float_equals_uint8_and_mnist_is_identity():
    spec = D.get_spec("cifar100")
    x = _images(8)
    a = D.augment_batch(x, spec, torch.Generator().manual_seed(4))
    b = D.augment_batch(x.float() / 255, spec, torch.Generator().manual_seed(4))
    assert b.dtype == torch.float32 and torch.equal(a.float() / 255, b)
    mn = D.get_spec("mnist")
    g = torch.Generator().manual_seed(1)
    before = g.get_state()
    xm = _images(4, c=1, s=28)
    assert torch.equal(D.augment_batch(xm, mn, g), xm) and torch.equal(g.get_state(), before)


def normalized(x: torch.Tensor, spec) -> torch.Tensor:
    """The reference: uint8 images -> (x / 255 - mean) / std per channel, in float32 and in this order."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
    return (x.float() / 255 - mean) / std


def test_normalize_matches_formula():
    for name in ("cifar10", "cifar100", "fashionmnist", "mnist"):
        spec = D.get_spec(name)
        x = _images(3, c=spec.in_channels, s=spec.image_size)
        got = normalize_uint8(x, *channel_stats(spec.mean, spec.std))
        assert torch.equal(got, normalized(x, spec))
        for c in range(spec.in_channels):
            want = (x[:, c].double() / 255 - spec.mean[c]) / spec.std[c]
            assert torch.allclose(got[:, c].double(), want, atol=1e-5)


# =========================================================================== OoD
def test_ood_noise_sets():
    like = D.get_spec("fashionmnist")
    g = D.ood_images("gaussian", like, 200, None, torch.Generator().manual_seed(0))
    assert g.dtype == torch.uint8 and g.shape == (200, 1, 28, 28)
    assert abs(g.float().mean().item() / 255 - 0.5) < 0.02
    assert abs(g.float().std().item() / 255 - 0.25) < 0.02
    g2 = D.ood_images("gaussian", like, 200, None, torch.Generator().manual_seed(0))
    assert torch.equal(g, g2)
    u = D.ood_images("uniform", D.get_spec("cifar10"), 50, None, torch.Generator().manual_seed(0))
    assert u.dtype == torch.uint8 and u.shape == (50, 3, 32, 32) and int(u.max()) > 240 and int(u.min()) < 15
    assert D.ood_images("uniform", like, None, None, torch.Generator().manual_seed(0)).shape[0] == 10000


def test_ood_real_sets_convert_channels_and_size(tmp_path):
    write_svhn(tmp_path)
    (_, _), (xm, _) = write_mnist_like(tmp_path, "MNIST")
    # SVHN (RGB 32) as OoD for Fashion-MNIST (gray 28): luma + resize.
    s = D.ood_images("svhn", D.get_spec("fashionmnist"), 5, str(tmp_path), None)
    assert s.dtype == torch.uint8 and s.shape == (5, 1, 28, 28)
    assert D.ood_images("svhn", D.get_spec("fashionmnist"), None, str(tmp_path), None).shape == (15, 1, 28, 28)
    # MNIST (gray 28) as OoD for CIFAR-10 (RGB 32): repeated channels, centre-padded with zeros.
    m = D.ood_images("mnist", D.get_spec("cifar10"), 8, str(tmp_path), None)
    assert m.shape == (8, 3, 32, 32)
    xm_t = torch.from_numpy(xm)
    for c in range(3):
        assert torch.equal(m[:, c, 2:30, 2:30], xm_t[:, 0])
    assert int(m[:, :, :2].sum()) == 0 and int(m[:, :, :, 30:].sum()) == 0
    # Channel conversion of flat colours: gray = round(0.299 r + 0.587 g + 0.114 b), size change keeps flat.
    flat = torch.tensor([200, 100, 50], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 32, 32)
    gray = D.to_size(D.to_channels(flat, 1), 28)
    assert gray.shape == (2, 1, 28, 28) and bool((gray == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)).all())
    with pytest.raises(UsageError):
        D.ood_images("svhn", D.get_spec("cifar10"), 1000, str(tmp_path), None)
    with pytest.raises(UsageError):
        D.ood_images("places365", D.get_spec("cifar10"), 10, str(tmp_path), None)
    with pytest.raises(UsageError):  # missing set, downloads off
        D.ood_images("cifar100", D.get_spec("fashionmnist"), 10, str(tmp_path), None, download=False)


# =========================================================================== CIFAR-C
def test_cifar_c_loader(tmp_path):
    rng = _rng(4)
    k = 4
    arrays = {}
    for name in ("gaussian_noise", "fog"):
        arrays[name] = rng.integers(0, 256, (5 * k, 32, 32, 3), dtype=np.uint8)
        np.save(tmp_path / f"{name}.npy", arrays[name])
    labels = rng.integers(0, 10, k)
    np.save(tmp_path / "labels.npy", np.tile(labels, 5))
    assert D.list_cifar_c(str(tmp_path)) == ["fog", "gaussian_noise"]
    x, y, sev = D.load_cifar_c(str(tmp_path), "fog")
    assert x.dtype == torch.uint8 and x.shape == (5 * k, 3, 32, 32)
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), arrays["fog"])
    assert y.dtype == torch.int64 and y.tolist() == np.tile(labels, 5).tolist()
    assert sev.dtype == torch.int64 and sev.tolist() == [s for s in range(1, 6) for _ in range(k)]
    # labels.npy with one block of labels (N/5) is repeated for every severity
    np.save(tmp_path / "labels.npy", labels)
    _, y2, _ = D.load_cifar_c(str(tmp_path), "gaussian_noise")
    assert y2.tolist() == np.tile(labels, 5).tolist()
    with pytest.raises(UsageError) as err:
        D.load_cifar_c(str(tmp_path), "snow")
    assert "fog" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError):
        D.list_cifar_c(str(tmp_path / "missing"))


def test_cifar_c_name_lists():
    assert len(D.CIFAR_C_STANDARD) == 15 and len(D.CIFAR_C_EXTRA) == 4
    assert not set(D.CIFAR_C_STANDARD) & set(D.CIFAR_C_EXTRA)
    assert set(D.CIFAR_C_EXTRA) == {"gaussian_blur", "saturate", "spatter", "speckle_noise"}
    assert {"gaussian_noise", "jpeg_compression", "elastic_transform", "glass_blur"} <= set(D.CIFAR_C_STANDARD)


# =========================================================================== the real Fashion-MNIST
@pytest.mark.skipif(not Path(D.DEBIAN_FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_debian_fashion_mnist(tmp_path):
    x, y = D.load_split("fashionmnist", "train", str(tmp_path), download=False)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8 and y.shape == (60000,)
    assert torch.bincount(y, minlength=10).tolist() == [6000] * 10
    spec = D.get_spec("fashionmnist")
    assert abs(x.float().mean().item() / 255 - spec.mean[0]) < 0.001
    assert abs((x.float() / 255).std().item() - spec.std[0]) < 0.001
    xt, yt = D.load_split("fashionmnist", "test", str(tmp_path), download=False)
    assert xt.shape == (10000, 1, 28, 28) and torch.bincount(yt, minlength=10).tolist() == [1000] * 10


def _numpy_pad_crop_flip(imgs: np.ndarray, p: int, mode: str, dy, dx, flip) -> np.ndarray:
    """Per-image np.pad, slice and mirror: the textbook augmentation."""
    s_h, s_w = imgs.shape[2:]
    out = np.empty_like(imgs)
    for i, img in enumerate(imgs):
        padded = np.pad(img, ((0, 0), (p, p), (p, p)), mode=mode) if p else img
        crop = padded[:, int(dy[i]):int(dy[i]) + s_h, int(dx[i]):int(dx[i]) + s_w] if p else img
        out[i] = crop[:, :, ::-1] if flip is not None and bool(flip[i]) else crop
    return out


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashionmnist", "mnist"])
def test_loader_epochs_equal_a_numpy_reference(name):
    """Two epochs of the training loader, bit for bit: the permutation, then per batch three torch.randint draws
    (row offsets, column offsets, flips) from the one CPU generator, numpy pad-crop-flip, (x/255 - mean)/std in
    float32; and the generator ends in the same state."""
    spec = D.get_spec(name)
    x = _images(37, c=spec.in_channels, s=spec.image_size, seed=3)
    g = torch.Generator().manual_seed(21)
    replay = torch.Generator()
    replay.set_state(g.get_state())
    loader = D.BatchLoader(x, torch.arange(37), 8, shuffle=True, augment=True, spec=spec, generator=g)
    p = spec.crop_padding
    mean = np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
    for _ in range(2):
        perm = torch.randperm(37, generator=replay)
        for k, (xb, yb) in enumerate(_epoch(loader)):
            idx = perm[8 * k:8 * (k + 1)]
            n = len(idx)
            dy = dx = flip = None
            if p:
                dy = torch.randint(0, 2 * p + 1, (n,), generator=replay)
                dx = torch.randint(0, 2 * p + 1, (n,), generator=replay)
            if spec.hflip:
                flip = torch.randint(0, 2, (n,), generator=replay)
            mode = "reflect" if spec.pad_mode == "reflect" else "constant"
            crops = _numpy_pad_crop_flip(x[idx].numpy(), p, mode, dy, dx, flip)
            want = (crops.astype(np.float32) / np.float32(255) - mean) / std
            assert yb.tolist() == idx.tolist()
            assert np.array_equal(xb.numpy(), want), (name, k)
    assert torch.equal(g.get_state(), replay.get_state())
