"""End-to-end tests of the evaluation engine and ``ensemble_freetickets.py`` on tiny tickets.

Tickets are real registry models ('cnn-small') trained for a few SGD steps with fixed random masks on
tiny fake Fashion-MNIST idx files written under a temporary data folder, saved with the ticket format
in the training engine's layouts (DST ``seed=*/model.pth`` with ``snapshots/``, EDST ``model_<k>.pth``).
"""
from __future__ import annotations

import csv
import gzip
import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import get_model
from sparselearning import evaluation as E
from sparselearning.evaluation import logits as L
from sparselearning.checkpoint import atomic_save, build_ticket
from sparselearning.errors import run_cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "ensemble_freetickets.py"
N_TEST = 60
FMNIST_NORM = {"mean": [0.2860], "std": [0.3530]}
GEN_CORRUPTIONS = ("gaussian_noise", "contrast", "pixelate")  # a subset keeps the test fast

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# =========================================================================== fixtures
def _write_idx(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">i", d) for d in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def _fake_images(n: int, seed: int, vertical: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """28x28 noisy images whose brightness encodes the class (learnable in a few steps); OoD ones get bars."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    x = rng.integers(0, 50, size=(n, 28, 28)) + 20 * labels.astype(np.int64)[:, None, None]
    if vertical:
        x[:, :, 6:10] = 255
        x[:, :, 18:22] = 0
    return x.clip(0, 255).astype(np.uint8), labels


def _write_mnist_like(root: Path, folder: str, n_train: int, n_test: int, seed: int, vertical: bool) -> None:
    raw = root / folder / "raw"
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        x, y = _fake_images(n, s, vertical)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", y)


def _meta(kind: str, seed: int, epoch: int, index: int, role: str = "ticket", model: str = "cnn-small",
          dataset: str = "fashionmnist", in_channels: int = 1, image_size: int = 28, density: float = 0.5,
          normalization=None) -> dict:
    return {"model": model, "num_classes": 10, "in_channels": in_channels, "image_size": image_size,
            "dataset": dataset, "normalization": normalization or FMNIST_NORM,
            "args": {"density": density, "seed": seed}, "kind": kind, "seed": seed, "epoch": epoch,
            "ticket_index": index, "val_acc": 0.5, "val_loss": 1.0, "density": density, "role": role}


def _train(seed: int, x: torch.Tensor, y: torch.Tensor, steps: int, density: float = 0.5,
           snapshot_cb=None) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    model = get_model("cnn-small", 10, 1, 28)
    masks = {n: torch.rand(p.shape) < density for n, p in model.named_parameters() if p.dim() > 1}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, x.shape[0], (50,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n, m in masks.items():
                params[n].mul_(m)
        if snapshot_cb is not None:
            snapshot_cb(step, model, masks)
    model.eval()
    return model, masks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data folder + DST-like and EDST-like result folders with tiny trained tickets."""
    base = tmp_path_factory.mktemp("eval")
    data = base / "data"
    _write_mnist_like(data, "FashionMNIST", 300, N_TEST, 0, vertical=False)
    _write_mnist_like(data, "MNIST", 100, 40, 10, vertical=True)
    xr, yr = _fake_images(300, 0)
    x = (torch.from_numpy(xr).float().div(255).unsqueeze(1) - 0.2860) / 0.3530
    y = torch.from_numpy(yr).long()

    dst = base / "results" / "cnn-small" / "fashionmnist" / "density_0.5" / "DST"
    for seed in (1, 2, 10):
        run = dst / f"seed={seed}"

        def snap(step, model, masks, run=run, seed=seed):
            if seed in (1, 2) and step % 4 == 0:
                atomic_save(build_ticket(model, masks, _meta("DST", seed, step // 4, 0, role="snapshot")),
                            run / "snapshots" / f"epoch_{step // 4}.pth")

        model, masks = _train(seed, x, y, steps=12, snapshot_cb=snap)
        atomic_save(build_ticket(model, masks, _meta("DST", seed, 3, 0)), run / "model.pth")
        atomic_save({"format": "freetickets-resume", "epoch": 3, "model": model.state_dict()}, run / "last.pth")
        (run / "train.log").write_text("log\n")
        (run / "summary.json").write_text("{}\n")
        (run / ".model.pth.abc123.tmp").write_bytes(b"partial")  # an interrupted atomic write
    edst = base / "results" / "cnn-small" / "fashionmnist" / "density_0.5" / "EDST" / "M=3" / "seed=17"
    for k in range(3):
        model, masks = _train(100 + k, x, y, steps=6 + 3 * k)
        atomic_save(build_ticket(model, masks, _meta("EDST", 17, 5 + 5 * k, k)), edst / f"model_{k}.pth")
    return {"base": base, "data": data, "dst": dst, "edst": edst}


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("eval"))
    return dst


def _run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process through run_cli; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        run_cli(E.main, argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _sections(stdout: str) -> dict[str, str]:
    """Printed tables keyed by mode (the word after '== ')."""
    out: dict[str, str] = {}
    for block in stdout.split("\n== ")[1:]:
        mode = block.split(":", 1)[0].strip()
        out[mode] = out.get(mode, "") + block
    return out


def _assert_printed(section: str, member: str, value: float, first: str | None = None) -> None:
    """``value`` (4 decimals) is printed on a table line of ``member`` (whose first cell is ``first``)."""
    want = f"{value:.4f}"
    lines = [ln.split() for ln in section.splitlines() if ln.split()]
    lines = [c for c in lines if (c[0] == first and member in c) if first] if first else \
        [c for c in lines if c[0].endswith(member)]
    assert any(want in c for c in lines), f"{member}: {want} not printed in\n{section}"


# =========================================================================== discovery
def test_discovery_natural_sort_skips_resume_snapshots_and_temporaries(world):
    found = E.discover_tickets(world["dst"])
    rel = [p.relative_to(world["dst"]).as_posix() for p in found]
    assert rel == ["seed=1/model.pth", "seed=2/model.pth", "seed=10/model.pth"]
    runs = E.discover_snapshot_runs(world["dst"])
    assert [r.name for r, _ in runs] == ["seed=1", "seed=2"]
    assert [f.name for f in runs[0][1]] == ["epoch_1.pth", "epoch_2.pth", "epoch_3.pth"]
    assert E.natural_key("model_2.pth") < E.natural_key("model_10.pth")
    assert E.parse_modes("predict_calibration") == (["predict", "calibration"], True)
    assert E.parse_modes("kd,Predict") == (["predict", "KD"], True)
    assert E.parse_modes("all")[0] == list(E.MODES) and E.parse_modes("all")[1] is False


# =========================================================================== all modes
@pytest.fixture(scope="module")
def all_run(world, tmp_path_factory):
    """One `--mode all` run on the DST folder (3 tickets with snapshots), output captured."""
    import contextlib
    import io

    out_dir = tmp_path_factory.mktemp("allrun") / "eval"
    argv = ["--mode", "all", "--resume", str(world["dst"]) + "/", "--data-dir", str(world["data"]),
            "--output-dir", str(out_dir), "--ood-data", "mnist,gaussian,uniform", "--ood-score", "all",
            "--tsne-samples", "30", "--no-download", "--seed", "18",
            "--corruptions", ",".join(GEN_CORRUPTIONS)]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = E.main(argv)
    return {"argv": argv, "out_dir": out_dir, "result": result, "stdout": buf.getvalue()}


@pytest.mark.slow
def test_all_modes_write_every_output(all_run):
    out_dir, result = all_run["out_dir"], all_run["result"]
    rid = result["run_id"]
    assert result["modes_run"] == list(E.MODES) and result["skipped"] == {}
    for name in (f"results_{rid}.json", f"results_{rid}.csv", "results_latest.json", "results_latest.csv"):
        assert (out_dir / name).is_file(), name
    for plot in ("disagreement", "reliability", "kl", "ood", "corruption", "tsne"):
        p = out_dir / "plots" / f"{rid}_{plot}.png"
        assert p.is_file() and p.read_bytes()[:4] == b"\x89PNG", plot
    # one forward pass per ticket and input set: test + 3 OoD sets + 3 x 5 generated cells; snapshots on the subset
    n_snap = 6
    assert result["forward_passes"] == 3 * (1 + 3 + 5 * len(GEN_CORRUPTIONS)) + n_snap
    cache = list((out_dir / "cache").rglob("*.npy"))
    assert len(cache) == result["forward_passes"]
    # nothing written outside the output folder by the run (the tickets' folder holds no eval/)
    assert not (Path(all_run["argv"][3]) / "eval").exists()


@pytest.mark.slow
def test_json_csv_and_printed_tables_agree(all_run):
    out_dir, result = all_run["out_dir"], all_run["result"]
    rid = result["run_id"]
    rows = _read_csv(out_dir / f"results_{rid}.csv")
    assert list(rows[0]) == list(E.RESULT_COLUMNS)
    js = json.loads((out_dir / f"results_{rid}.json").read_text())
    assert js == json.loads((out_dir / "results_latest.json").read_text())
    assert len(js["rows"]) == len(rows)
    for a, b in zip(js["rows"], rows):
        assert float(b["value"]) == a["value"] and b["metric"] == a["metric"] and b["member"] == a["member"]
    names = [m["name"] for m in js["members"]]
    assert names == ["seed=1/model.pth", "seed=2/model.pth", "seed=10/model.pth"]

    sections = _sections(all_run["stdout"])

    def value(mode, member, metric, **kw):
        hits = [r for r in rows if r["mode"] == mode and r["member"] == member and r["metric"] == metric
                and all(r[k] == str(v) for k, v in kw.items())]
        assert len(hits) == 1, (mode, member, metric, kw, len(hits))
        return float(hits[0]["value"])

    for member in names + ["members_mean", "members_std", "ensemble", "ensemble_first_1", "ensemble_first_3"]:
        for metric in ("acc", "nll"):
            _assert_printed(sections["predict"], member, value("predict", member, metric))
    assert value("predict", "ensemble_first_3", "acc") == value("predict", "ensemble", "acc")
    assert value("predict", "ensemble_first_1", "nll") == pytest.approx(value("predict", names[0], "nll"))
    for member in names + ["ensemble"]:
        for metric in ("acc", "ece15", "ece_ft14", "nll", "brier"):
            _assert_printed(sections["calibration"], member, value("calibration", member, metric))
    assert value("calibration", "ensemble", "nll") == pytest.approx(value("predict", "ensemble", "nll"))
    # disagreement: matrix symmetric, mean over pairs printed, no offset
    d = np.array(js["extras"]["disagreement"]["disagreement"])
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    mean_d = value("disagreement", "pairs_mean", "disagreement")
    assert mean_d == pytest.approx(d[np.triu_indices(3, 1)].mean())
    assert f"{mean_d:.4f}" in sections["disagreement"]
    jac = np.array(js["extras"]["disagreement"]["mask_jaccard"])
    assert np.all((jac > 0) & (jac <= 1)) and np.allclose(np.diag(jac), 1)
    assert value("disagreement", "pairs_mean", "mask_jaccard") == pytest.approx(jac[np.triu_indices(3, 1)].mean())
    # KD: every ordered pair of 3 members
    kl = np.array(js["extras"]["KD"]["kl"])
    assert kl.shape == (3, 3) and np.all(np.diag(kl) == 0)
    assert value("KD", "pairs_mean", "kl") == pytest.approx(kl[~np.eye(3, dtype=bool)].mean())
    assert value("KD", f"{names[1]}||{names[0]}", "kl") == pytest.approx(kl[0, 1])
    assert f"{value('KD', 'pairs_mean', 'kl'):.4f}" in sections["KD"]
    # OoD: every set, every score, positive class named
    for s in ("mnist", "gaussian", "uniform"):
        for score in ("msp", "entropy", "mi", "energy"):
            for metric in ("auroc", "aupr_in", "aupr_out", "fpr95_oodpos", "fpr95_idpos"):
                v = value("ood", "ensemble", f"{score}_{metric}", split=f"ood:{s}")
                assert 0.0 <= v <= 1.0
        v = value("ood", "ensemble", "msp_auroc", split=f"ood:{s}")
        assert any(f"{v:.4f}" in ln for ln in sections["ood"].splitlines() if ln.startswith(s) and "ensemble" in ln)
    # corruption: per cell, per severity and both aggregates
    for c in GEN_CORRUPTIONS:
        for sev in range(1, 6):
            assert 0 <= value("corruption", "ensemble", "acc", corruption=c, severity=sev) <= 1
    pooled = value("corruption", "ensemble", "acc", corruption="pooled_all", severity="all")
    mean = value("corruption", "ensemble", "acc", corruption="mean_all", severity="all")
    assert pooled == pytest.approx(mean)  # equal cell sizes
    assert value("corruption", "ensemble", "ece15", corruption="pooled_all", severity="all") <= \
        value("corruption", "ensemble", "ece15", corruption="mean_all", severity="all") + 1e-12
    _assert_printed(sections["corruption"], "ensemble", pooled, first="pooled_all")
    _assert_printed(sections["corruption"], "ensemble", mean, first="mean_all")
    assert value("predict", "ensemble", "acc") > 0.3  # the tiny tickets learnt something
    # t-SNE: 6 snapshots on 2 trajectories + 3 tickets
    pts = js["extras"]["tsne"]["points"]
    assert len(pts) == 9 and js["extras"]["tsne"]["runs"] == ["seed=1", "seed=2"]
    assert sum(p["kind"] == "ticket" for p in pts) == 3


@pytest.mark.slow
def test_second_run_uses_cache_and_keeps_earlier_results(all_run, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("forward pass despite a warm cache")

    monkeypatch.setattr(L, "forward_logits", boom)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        again = E.main(all_run["argv"])
    first = all_run["result"]
    assert again["forward_passes"] == 0 and again["cache_hits"] > 0
    assert again["run_id"] != first["run_id"]
    out_dir = all_run["out_dir"]
    assert (out_dir / f"results_{first['run_id']}.json").is_file()
    old = json.loads((out_dir / f"results_{first['run_id']}.json").read_text())
    new = json.loads((out_dir / "results_latest.json").read_text())
    assert new["run_id"] == again["run_id"]
    strip = lambda rows: [(r["mode"], r["split"], r["corruption"], r["severity"], r["member"], r["metric"],  # noqa
                           r["value"]) for r in rows]
    assert strip(old["rows"]) == strip(new["rows"])


def test_edst_layout_predict_kd_and_first_k(world, tmp_path, capsys):
    code, out, err = _run_main(["--mode", "predict,KD,disagreement", "--resume", str(world["edst"]),
                                "--data-dir", str(world["data"]), "--output-dir", str(tmp_path / "ev")], capsys)
    assert code == 0, err
    js = json.loads((tmp_path / "ev" / "results_latest.json").read_text())
    assert [m["name"] for m in js["members"]] == ["model_0.pth", "model_1.pth", "model_2.pth"]
    assert js["forward_passes"] == 3
    members = {r["member"] for r in js["rows"] if r["mode"] == "predict"}
    assert {"ensemble_first_1", "ensemble_first_2", "ensemble_first_3"} <= members
    kl_rows = [r for r in js["rows"] if r["mode"] == "KD" and r["metric"] == "kl" and "||" in r["member"]]
    assert len(kl_rows) == 6
    assert "== predict" in out and "== KD" in out


def test_forward_pass_batching_and_normalisation(world):
    """Logits do not depend on the batch size, and use the ticket's normalisation (not the spec's)."""
    from sparselearning.checkpoint import load_ticket, ticket_model
    from sparselearning.data import get_spec, load_split

    ticket = load_ticket(world["dst"] / "seed=1" / "model.pth")
    model = ticket_model(ticket)
    x, _ = load_split("fashionmnist", "test", str(world["data"]), download=False)
    spec = get_spec("fashionmnist")
    a = L.forward_logits(model, x, spec, 7, torch.device("cpu"))
    b = L.forward_logits(model, x, spec, 128, torch.device("cpu"))
    assert a.shape == (N_TEST, 10) and torch.allclose(a, b, atol=1e-5)
    with torch.no_grad():
        ref = model((x.float() / 255 - 0.2860) / 0.3530)
    assert torch.allclose(a, ref, atol=1e-5)


@pytest.mark.slow
def test_cli_as_printed_in_the_readme(world, tmp_path):
    """The original command line (trailing slash, --dataset/--model/--seed, ignored flags) runs as a script."""
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--mode", "predict", "--resume", str(world["dst"]) + "/", "--dataset",
         "fashionmnist", "--model", "cnn-small", "--seed", "18", "--test-batch-size", "128", "--data-dir",
         str(world["data"]), "--output-dir", str(tmp_path / "ev"), "--density", "0.2", "--sparse",
         "--batch-size", "128", "--print_freq", "50", "--no-download"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "== predict" in res.stdout and "ensemble" in res.stdout
    assert (tmp_path / "ev" / "results_latest.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"]  # nothing written in the working folder


def test_cifar_c_files_both_conventions(tmp_path, capsys):
    """CIFAR-10 tickets, a fake CIFAR-10 test batch and fake CIFAR-10-C files (2 standard + 1 extra)."""
    n = 20
    rng = np.random.default_rng(5)
    data = tmp_path / "data" / "cifar-10-batches-py"
    data.mkdir(parents=True)
    labels = [int(v) for v in np.arange(n) % 10]
    with open(data / "test_batch", "wb") as fh:
        pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": labels}, fh)
    cfc = tmp_path / "CIFAR-10-C"
    cfc.mkdir()
    for name in ("gaussian_noise", "contrast", "speckle_noise"):
        np.save(cfc / f"{name}.npy", rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8))
    np.save(cfc / "labels.npy", np.tile(np.array(labels, dtype=np.int64), 5))
    runs = tmp_path / "runs"
    norm = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010]}
    for seed in (1, 2):
        torch.manual_seed(seed)
        m = get_model("cnn-small", 10, 3, 32)
        atomic_save(build_ticket(m, None, _meta("dense", seed, 1, 0, dataset="cifar10", in_channels=3,
                                                image_size=32, density=1.0, normalization=norm)),
                    runs / f"seed={seed}" / "model.pth")
    code, out, err = _run_main(["--mode", "corruption", "--resume", str(runs), "--data-dir", str(tmp_path / "data"),
                                "--cf_c_path", str(cfc), "--no-download"], capsys)
    assert code == 0, err
    js = json.loads((runs / "eval" / "results_latest.json").read_text())
    assert js["extras"]["corruption"]["corruptions"] == ["contrast", "gaussian_noise", "speckle_noise"]
    assert js["forward_passes"] == 2 * 3  # one pass per ticket per corruption file (5 severities each)
    rows = js["rows"]

    def v(member, metric, corruption, severity):
        hit = [r["value"] for r in rows if r["member"] == member and r["metric"] == metric
               and r["corruption"] == corruption and r["severity"] == severity]
        assert len(hit) == 1
        return hit[0]

    cells = [v("ensemble", "acc", c, s) for c in ("contrast", "gaussian_noise", "speckle_noise") for s in range(1, 6)]
    assert v("ensemble", "acc", "pooled_all", "all") == pytest.approx(np.mean(cells))
    std_cells = [v("ensemble", "acc", c, s) for c in ("contrast", "gaussian_noise") for s in range(1, 6)]
    assert v("ensemble", "acc", "mean_standard15", "all") == pytest.approx(np.mean(std_cells))
    assert v("ensemble", "ece15", "pooled_all", "all") <= v("ensemble", "ece15", "mean_all", "all") + 1e-12
    assert "only 2 of the 15 standard corruptions" in out
    # --corruptions standard leaves the extra file out
    code, out, err = _run_main(["--mode", "corruption", "--resume", str(runs), "--data-dir", str(tmp_path / "data"),
                                "--cf_c_path", str(cfc), "--corruptions", "standard", "--no-download"], capsys)
    assert code == 0, err
    js = json.loads((runs / "eval" / "results_latest.json").read_text())
    assert js["extras"]["corruption"]["corruptions"] == ["gaussian_noise", "contrast"]
    assert js["forward_passes"] == 0  # cached from the first run


# =========================================================================== bad inputs
class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _bad_folder(world, tmp_path, extra: dict[str, object]) -> Path:
    """A copy of one DST run plus extra files {relative path: ticket dict | bytes | callable(path)}."""
    root = tmp_path / "bad"
    _copy_tree(world["dst"] / "seed=1", root / "seed=1")
    for rel, content in extra.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        elif callable(content):
            content(p)
        else:
            atomic_save(content, p)
    return root


def _args(root: Path, world, *more: str) -> list[str]:
    return ["--mode", "predict", "--resume", str(root), "--data-dir", str(world["data"]), "--no-download", *more]


def test_bad_inputs_in_process(world, tmp_path, capsys):
    good = torch.load(world["dst"] / "seed=1" / "model.pth", weights_only=True)
    lenet = get_model("lenet5", 10, 1, 28)
    cases = [
        ("empty", {}, ["no tickets"], True),
        ("mixed_arch", {"seed=2/model.pth": build_ticket(lenet, None, _meta("DST", 2, 1, 0, model="lenet5"))},
         ["seed=2/model.pth", "model"], False),
        ("mixed_dataset", {"seed=2/model.pth": {**good, "dataset": "mnist"}}, ["seed=2/model.pth", "dataset"], False),
        ("mixed_classes", {"seed=2/model.pth": {**good, "num_classes": 5}}, ["seed=2/model.pth", "class count"],
         False),
        ("truncated", {"seed=2/model.pth": lambda p: p.write_bytes((world["dst"] / "seed=2" / "model.pth")
                                                                   .read_bytes()[:300])},
         ["seed=2/model.pth"], False),
        ("garbage", {"seed=2/model.pth": b"this is not a checkpoint"}, ["seed=2/model.pth"], False),
        ("foreign", {"seed=2/model.pth": lenet.state_dict()}, ["seed=2/model.pth", "not a FreeTickets ticket"], False),
    ]
    for name, extra, needles, empty in cases:
        root = tmp_path / name
        if empty:
            root.mkdir()
        else:
            root = _bad_folder(world, tmp_path / name, extra)
        code, out, err = _run_main(_args(root, world), capsys)
        _one_line_error(code, err, *needles)
        assert not (root / "eval").exists(), name  # nothing written

    root = _bad_folder(world, tmp_path / "flags", {})
    flag_cases = [
        (["--model", "wrn-28-10"], ["--model wrn-28-10"]),
        (["--dataset", "cifar10"], ["--dataset cifar10"]),
        (["--ece-bins", "0"], ["--ece-bins"]),
        (["--device", "tpu"], ["--device"]),
        (["--ood-score", "banana"], ["banana"]),
    ]
    for more, needles in flag_cases:
        code, out, err = _run_main(_args(root, world, *more), capsys)
        _one_line_error(code, err, *needles)
    mode_cases = [
        (["--mode", "banana"], ["unknown mode"]),
        (["--mode", "disagreement"], ["at least 2 tickets"]),
        (["--mode", "KD"], ["at least 2 tickets"]),
        (["--mode", "tsne"], ["snapshots"]),
        (["--mode", "corruption", "--corruptions", "standard"], ["--cf_c_path"]),
        (["--mode", "ood", "--ood-data", "cifar10"], ["CIFAR-10"]),
        (["--mode", "ood", "--ood-data", "fashionmnist"], ["in-distribution"]),
    ]
    import shutil

    shutil.rmtree(root / "seed=1" / "snapshots")
    for more, needles in mode_cases:
        argv = _args(root, world) + more  # the later --mode wins
        code, out, err = _run_main(argv, capsys)
        _one_line_error(code, err, *needles)
    code, out, err = _run_main(["--mode", "predict"], capsys)  # --resume missing: argparse, one line
    _one_line_error(code, err, "--resume")
    code, out, err = _run_main(_args(tmp_path / "does-not-exist", world), capsys)
    _one_line_error(code, err, "does not exist")
    assert not (root / "eval").exists()


def test_missing_dataset_is_one_line(world, tmp_path, capsys):
    good = torch.load(world["dst"] / "seed=1" / "model.pth", weights_only=True)
    root = tmp_path / "mnist_runs"
    atomic_save({**good, "dataset": "mnist"}, root / "seed=1" / "model.pth")
    code, out, err = _run_main(["--mode", "predict", "--resume", str(root), "--data-dir", str(tmp_path / "nodata"),
                                "--no-download"], capsys)
    _one_line_error(code, err, "MNIST", "not found")
    assert not (tmp_path / "nodata").exists() and not (root / "eval").exists()


def test_all_mode_skips_what_it_cannot_do(world, tmp_path, capsys):
    """`all` on one dense-like ticket without snapshots: pairwise modes and tsne are skipped with notes."""
    root = tmp_path / "one"
    _copy_tree(world["dst"] / "seed=10", root / "seed=10")
    code, out, err = _run_main(["--mode", "all", "--resume", str(root), "--data-dir", str(world["data"]),
                                "--no-download", "--ood-data", "gaussian", "--corruptions", "contrast"], capsys)
    assert code == 0, err
    js = json.loads((root / "eval" / "results_latest.json").read_text())
    assert set(js["skipped"]) == {"disagreement", "KD", "tsne"}
    assert js["modes_run"] == ["predict", "calibration", "ood", "corruption"]


@pytest.mark.slow
def test_cli_subprocess_bad_inputs(world, tmp_path):
    """Run as a script: a pickle that would run code, and an empty folder: exit 2, one stderr line."""
    marker = tmp_path / "pwned"
    root = _bad_folder(world, tmp_path / "evil", {"seed=2/model.pth": lambda p: torch.save(_Evil(marker), p)})
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, needle in ((root, "refused"), (empty, "no tickets")):
        res = subprocess.run([sys.executable, str(SCRIPT), "--mode", "predict", "--resume", str(folder),
                              "--data-dir", str(world["data"]), "--no-download"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=300)
        _one_line_error(res.returncode, res.stderr, needle)
        assert res.stderr.startswith("ensemble_freetickets.py: error:")
    assert not marker.exists()


@pytest.mark.slow
def test_tickets_from_the_training_engine(tmp_path, capsys):
    """An EDST run of the real training engine (M=2, snapshots every epoch), evaluated in its own layout."""
    from helpers import write_fashion_mnist
    from sparselearning.recipes import main as train_main

    data = write_fashion_mnist(tmp_path / "data")
    train_main("EDST", ["--sparse", "--nolrsche", "--epochs", "3", "--epochs-explo", "1", "--model-num", "2",
                        "--density", "0.2", "--update-frequency", "3", "--save-every", "1", "--model", "cnn-small",
                        "--data", "fashionmnist", "--data-dir", str(data), "--batch-size", "32",
                        "--test-batch-size", "64", "--output-dir", str(tmp_path / "results"), "--no-progress",
                        "--seed", "1"])
    capsys.readouterr()
    folder = tmp_path / "results" / "cnn-small" / "fashionmnist" / "density_0.2" / "EDST" / "M=2"
    code, out, err = _run_main(["--mode", "all", "--resume", str(folder) + "/", "--data-dir", str(data),
                                "--no-download", "--ood-data", "gaussian", "--corruptions", "contrast",
                                "--tsne-samples", "20"], capsys)
    assert code == 0, err
    js = json.loads((folder / "eval" / "results_latest.json").read_text())
    assert js["modes_run"] == list(E.MODES)
    assert [m["name"] for m in js["members"]] == ["seed=1/model_0.pth", "seed=1/model_1.pth"]
    assert all(m["kind"] == "EDST" and m["density"] == pytest.approx(0.2, abs=0.01) for m in js["members"])
    assert js["extras"]["tsne"]["runs"] == ["seed=1"] and len(js["extras"]["tsne"]["points"]) == 3 + 2
    jac = js["extras"]["disagreement"]["mask_jaccard"]
    assert 0 < jac[0][1] < 1  # re-exploration changed the mask between the two tickets
