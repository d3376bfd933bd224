"""ImageNet/: the section-6.4 schedule, flags, launcher, and two-process gloo runs on a tiny ImageFolder.

The distributed runs start real torchrun jobs (2 CPU processes, gloo) on a 3-class ImageFolder of
40x48 images written here: masks identical on both ranks after every topology update, tickets and
summary written once by rank 0, a killed run resumed bit-identically, the paper's launch line through
multiproc.py, and a forced mask mismatch stopping the run.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import load_module, paper_imagenet_lr, timeless
from models import get_model
from models.imagenet_resnet import imagenet_resnet
from sparselearning import checkpoint as ckpt
from sparselearning.cli import normalise_spellings
from sparselearning.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, imagenet_val_batches


REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "ImageNet" / "main.py"
CLASSES = ("n01440764", "n01443537", "n01484850")


imain = load_module(MAIN, "imagenet_main")
multiproc = load_module(REPO / "ImageNet" / "multiproc.py", "imagenet_multiproc")


def write_image_folder(root: Path, train_per_class: int = 16, val_per_class: int = 6, seed: int = 0) -> Path:
    """train/ and val/ ImageFolders; each class brightens one colour channel (learnable), JPEG and PNG mixed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per in (("train", train_per_class), ("val", val_per_class)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per):
                img = rng.integers(0, 80, (40, 48, 3)).astype(np.uint8)
                img[..., c] = np.clip(img[..., c].astype(int) + 150, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"img{i}.{'png' if i % 2 else 'JPEG'}")
    return root


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imagenet") / "data")


# Observes from outside the production code: after the initial masks and after every topology update each rank
# appends its mask checksum to FT_CHECKSUMS/rank<r>.jsonl (a Masking update hook, registered first); with
# FT_DESYNC_AT=n the last rank flips one mask bit at update n, before the run's own cross-rank check sees it.
BOOT = r"""
import json, os, runpy, sys
sys.path.insert(0, {repo!r})
from sparselearning.core import masking as _masking
from sparselearning.core.distributed import mask_checksum

_folder, _desync = os.environ["FT_CHECKSUMS"], os.environ.get("FT_DESYNC_AT")
_rank, _world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
_add_module = _masking.Masking.add_module


def _record(masking, event):
    with open(os.path.join(_folder, f"rank{{_rank}}.jsonl"), "a") as fh:
        fh.write(json.dumps({{"update": masking.num_updates, "event": event,
                             "checksum": mask_checksum(masking.masks).tolist()}}) + "\n")


def _after_update(masking, event):
    if _desync is not None and masking.num_updates == int(_desync) and _rank == _world - 1:
        flat = masking.masks[masking.updatable[0]].view(-1)
        flat[int((~flat).nonzero()[0])] = True
    _record(masking, event)


def _observed_add_module(self, *args, **kwargs):
    _add_module(self, *args, **kwargs)
    _record(self, "initial masks")
    self.add_update_hook(_after_update)


_masking.Masking.add_module = _observed_add_module
os.makedirs(_folder, exist_ok=True)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def torchrun(*args, timeout=300, checksums=None, desync_at=None, **popen):
    """torchrun with 2 CPU processes; with `checksums` (a folder) through BOOT."""
    script = [str(MAIN)]
    env = dict(os.environ)
    if checksums is not None:
        boot = Path(checksums).parent / "boot.py"
        boot.write_text(BOOT.format(repo=str(REPO)))
        script = [str(boot), str(MAIN)]
        env["FT_CHECKSUMS"] = str(checksums)
        if desync_at is not None:
            env["FT_DESYNC_AT"] = str(desync_at)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *script,
           *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=env, **popen)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return "gone"


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts each rank in a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def checksums(folder: Path) -> dict[int, list[tuple[int, tuple]]]:
    out = {}
    for rank in (0, 1):
        rows = [json.loads(line) for line in (folder / f"rank{rank}.jsonl").read_text().splitlines()]
        out[rank] = [(r["update"], tuple(r["checksum"])) for r in rows]
    return out


# ------------------------------------------------------------------------------------------ schedule


def test_default_schedule_is_the_papers(capsys):
    args, sched, _ = imain.parse(["/data"])
    assert capsys.readouterr().out == ""  # the paper's own length: nothing derived to report
    assert sched.epochs == 310 and sched.warmup == 5 and sched.num_tickets == 4 and sched.restart_death_rate
    assert sched.reexplore_epochs == (100, 170, 240)
    for e in range(5, 310):  # 0-based epoch e is 1-based epoch e + 1
        assert sched.lr(e + 1) == pytest.approx(paper_imagenet_lr(e), rel=1e-12), e
    assert [sched.phase(e + 1) for e in (0, 99, 100, 169, 170, 239, 240, 309)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [sched.phase_bounds(k) for k in range(4)] == [(0, 100), (100, 170), (170, 240), (240, 310)]
    # the paper's ImageNet sparse defaults
    assert (args.density, args.sparse_init, args.update_frequency, args.large_death_rate, args.death_rate,
            args.decay_schedule, args.sparse, args.model) == (0.2, "ERK", 4000, 0.8, 0.5, "cosine", True,
                                                              "imagenet-resnet50")


def test_other_lengths_scale_the_papers_schedule_unless_given(capsys):
    args, sched, _ = imain.parse(["/d", "--epochs", "90"])
    note = capsys.readouterr().out
    assert "scaled to --epochs 90" in note and "--reexplore-epochs 29,49,70" in note and "--warmup 1" in note
    assert sched.reexplore_epochs == (29, 49, 70) and sched.warmup == 1
    assert [sched.lr(e) for e in (9, 10, 29, 30)] == pytest.approx([0.1, 0.01, 1e-4, 0.01])
    # given flags win; the others are still derived
    args, sched, _ = imain.parse(["/d", "--epochs", "90", "--reexplore-epochs", "45", "--warmup", "2"])
    assert sched.reexplore_epochs == (45,) and sched.warmup == 2 and sched.lr(10) == pytest.approx(0.01)


def test_fixed_masks_get_one_ticket_and_no_reexploration(capsys):
    """--fix: nothing to re-explore, so the default schedule has no re-exploration epochs (one static ticket)."""
    args, sched, _ = imain.parse(["/d", "--fix"])
    assert sched.reexplore_epochs == () and sched.num_tickets == 1 and args.fix
    assert "--reexplore-epochs ''" in capsys.readouterr().out  # said, as every derived flag is
    args, sched, _ = imain.parse(["/d", "--fix", "--reexplore-epochs", ""])
    assert sched.num_tickets == 1


def test_multiplier_stretches_the_schedule():
    args, sched, _ = imain.parse(["/d", "--epochs", "10", "--warmup", "1", "--reexplore-epochs", "4,7",
                                  "--lr-steps", "2:0.1,4:0.5", "--multiplier", "2"])
    assert (sched.epochs, sched.warmup, sched.reexplore_epochs) == (20, 2, (8, 14))
    assert [sched.lr(e) for e in (4, 5, 8, 9)] == pytest.approx([0.1, 0.01, 0.01, 0.05])


def test_paper_launch_line_flags_parse():
    """The README's flags after main.py (underscore spellings included) parse to the intended values."""
    line = ("--sparse_init ERK --multiplier 1 --growth gradient --seed 17 --master_port 4545 -j5 -p 500 "
            "--arch resnet50 -c fanin --update_frequency 4000 --label-smoothing 0.1 -b 64 --lr 0.1 --warmup 5 "
            "--epochs 310 --density 0.2 ../data/").split()
    parser = imain.imagenet_flags()
    args = parser.parse_args(normalise_spellings(parser, line))
    assert (args.sparse_init, args.growth, args.seed, args.master_port, args.workers, args.print_freq) == \
        ("ERK", "gradient", 17, 4545, 5, 500)
    assert (args.arch, args.model_config, args.update_frequency, args.label_smoothing, args.batch_size) == \
        ("resnet50", "fanin", 4000, 0.1, 64)
    assert (args.lr, args.warmup, args.epochs, args.density, args.data) == (0.1, 5, 310, 0.2, "../data/")
    more = parser.parse_args(normalise_spellings(parser, [
        "--death_rate=0.3", "--large_death_rate", "0.7", "--local-rank=1", "--prune-rate", "0.4", "--wd", "5e-5",
        "--fp16", "x"]))
    assert (more.death_rate, more.large_death_rate, more.local_rank, more.weight_decay, more.amp) == \
        (0.4, 0.7, 1, 5e-5, True)
    resumed = parser.parse_args(normalise_spellings(parser, ["--resume", "../data/"]))
    assert resumed.resume is True and resumed.data == "../data/"


def test_multiproc_forwards_to_torchrun():
    cmd = multiproc.torchrun_command(["--nproc_per_node", "2", "main.py", "--seed", "17", "--master_port", "4545",
                                      "-j5", "../data/"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:7] == ["--nproc_per_node", "2", "--master-port", "4545"]
    assert cmd[7] == str(REPO / "ImageNet" / "main.py") or cmd[7] == "main.py"
    assert cmd[8:] == ["--seed", "17", "--master_port", "4545", "-j5", "../data/"]
    # a launcher port wins; the script keeps its flags untouched
    cmd = multiproc.torchrun_command(["--nnodes", "2", "--master_port=5000", "main.py", "--master_port", "4545"])
    assert "--master-port" not in cmd and "--master_port=5000" in cmd
    with pytest.raises(ValueError):
        multiproc.torchrun_command(["--nproc_per_node", "2"])


# ------------------------------------------------------------------------------------------ model and data
@pytest.mark.slow
def test_imagenet_resnets_registered_and_initialised():
    model = get_model("imagenet-resnet50", num_classes=1000, in_channels=3, image_size=224)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's ResNet-50
    assert get_model("imagenet-resnet18", 3, 3, 32)(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    torch.manual_seed(0)
    fanin = imagenet_resnet("resnet50", 10, init="fanin")
    torch.manual_seed(0)
    classic = imagenet_resnet("resnet50", 10, init="classic")
    w_in, w_out = fanin.layer4[0].conv1.weight, classic.layer4[0].conv1.weight  # 1x1 conv 1024 -> 512
    assert w_in.std().item() == pytest.approx((2 / 1024) ** 0.5, rel=0.05)  # fan_in = 1024
    assert w_out.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.05)  # fan_out = 512
    bns = [m for m in fanin.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


@pytest.mark.slow
def test_val_batches_for_the_evaluator(image_root):
    batches, spec = imagenet_val_batches(image_root, image_size=32, batch_size=5, device="cpu", workers=0)
    assert spec.num_classes == 3 and spec.image_size == 32 and spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD
    xs, ys = zip(*batches)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (18, 3, 32, 32) and x.dtype == torch.float32 and y.tolist() == sorted(y.tolist())
    assert -3 < float(x.min()) < 0 < float(x.max()) < 3  # normalised


@pytest.mark.slow
def test_worker_processes_start_from_a_fork_server(image_root):
    """Same batches with 2 workers as in-process; the workers are not forks of this (threaded) process."""
    import multiprocessing

    serial, _ = imagenet_val_batches(image_root, image_size=32, batch_size=5, device="cpu", workers=0)
    parallel, _ = imagenet_val_batches(image_root, image_size=32, batch_size=5, device="cpu", workers=2)
    assert serial.loader.multiprocessing_context is None
    if "forkserver" in multiprocessing.get_all_start_methods():
        assert parallel.loader.multiprocessing_context.get_start_method() == "forkserver"
    for (xa, ya), (xb, yb) in zip(serial, parallel, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X", "")


@pytest.mark.slow
def test_a_worker_ends_when_its_trainer_is_gone():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists
    code = (f"import time; from sparselearning.data.imagenet import exit_with_trainer; "
            f"exit_with_trainer({dead.pid}, 0, interval=0.1); time.sleep(60)")
    start = time.time()
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60)
    assert r.returncode == 0 and time.time() - start < 30


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_killed_trainer_leaves_no_worker(image_root):
    code = (f"import sys, time; from sparselearning.data.imagenet import imagenet_val_batches\n"
            f"b, _ = imagenet_val_batches({str(image_root)!r}, image_size=32, batch_size=2, device='cpu', workers=2)\n"
            f"it = iter(b.loader); next(it)\n"
            f"print(*[w.pid for w in it._workers], flush=True); time.sleep(120)")
    trainer = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = trainer.stdout.readline()
    while line and not line.split()[0].isdigit():  # the scan's "<split>: N images in K classes" line comes first
        line = trainer.stdout.readline()
    workers = [int(p) for p in line.split()]
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    trainer.kill()
    trainer.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers)


@pytest.mark.slow
def test_multiproc_checks_flags_and_data_once_before_torchrun(tmp_path):
    """Bad input through the paper's launcher: one line and exit 2 from multiproc.py itself, no worker started."""
    for extra, needle in ((["--density", "0", str(tmp_path)], "--density must be in (0, 1]"),
                          ([str(tmp_path / "nowhere")], "train/ and val/"),
                          (["--epochs", "4", "--reexplore-epochs", "2,5", str(tmp_path)], "--reexplore-epochs")):
        r = subprocess.run([sys.executable, "multiproc.py", "--nproc_per_node", "2", "main.py", *extra],
                           cwd=REPO / "ImageNet", capture_output=True, text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
        assert lines[0].startswith("ImageNet/main.py: error: ") and "Traceback" not in r.stderr


@pytest.mark.slow
def test_bad_input_is_printed_by_local_rank_0_only(monkeypatch, capsys):
    from sparselearning.errors import run_cli

    for local_rank, printed in (("0", True), ("1", False)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        for argv in (["--density", "0", "/d"], ["--arch", "resnet9", "/d"]):  # our check; argparse's
            with pytest.raises(SystemExit) as exc:
                run_cli(imain.main, argv, prog=imain.PROG)
            err = capsys.readouterr().err
            assert exc.value.code == 2 and (err.count("\n") == 1 if printed else err == ""), err


# ------------------------------------------------------------------------------------------ two ranks
COMMON = ["-a", "resnet18", "--image-size", "32", "-b", "4", "-j", "1", "--epochs", "3", "--warmup", "1",
          "--reexplore-epochs", "2", "--lr-steps", "1:0.5", "--lr", "0.02", "--update-frequency", "3", "-p", "2",
          "--density", "0.2"]
RUN_DIR = "imagenet-resnet18/imagenet/density_0.2/EDST/M=2/seed=17"


@pytest.mark.slow
def test_two_ranks_masks_in_sync_tickets_once_and_resume(image_root, tmp_path):
    # 1. an uninterrupted reference run
    ref = tmp_path / "ref"
    r = torchrun(*COMMON, "--output-dir", ref, image_root, checksums=tmp_path / "ck_ref")
    assert r.returncode == 0, r.stderr[-3000:]
    ref_dir = ref / RUN_DIR
    # masks identical on both ranks at init, after every periodic update and after the re-exploration
    ck = checksums(tmp_path / "ck_ref")
    assert ck[0] == ck[1]
    updates = [u for u, _ in ck[0]]
    assert updates == list(range(0, 8))  # init, 2 updates in each of 3 epochs, 1 re-exploration
    assert len({c for _, c in ck[0]}) == len(ck[0])  # the topology changed at every update
    # rank 0 alone wrote: two tickets, summary, last.pth, the curves, and each log line once
    assert sorted(p.name for p in ref_dir.iterdir() if not p.name.startswith(".")) == \
        ["curves.png", "last.pth", "metrics.csv", "model_0.pth", "model_1.pth", "summary.json", "train.log"]
    log = (ref_dir / "train.log").read_text()
    for e in (1, 2, 3):
        assert log.count(f"epoch {e}/3 lr") == 1
    assert log.count("started") == 1 and log.count("re-exploration q=0.8") == 1
    summary = json.loads((ref_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["distributed"]["world_size"] == 2
    assert summary["distributed"]["backend"] == "gloo"
    assert [t["file"] for t in summary["tickets"]] == ["model_0.pth", "model_1.pth"]
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert summary["schedule"]["phases"] == [[0, 2], [2, 3]]
    assert all(h["val_top5"] == 1.0 for h in summary["history"])  # 3 classes: top-5 is trivially right
    assert summary["dataset"]["val_images"] == 18
    for k, ticket_file in enumerate(("model_0.pth", "model_1.pth")):
        ticket = ckpt.load_ticket(ref_dir / ticket_file)
        assert (ticket["model"], ticket["dataset"], ticket["num_classes"], ticket["image_size"]) == \
            ("imagenet-resnet18", "imagenet", 3, 32)
        assert ticket["normalization"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        assert ticket["ticket_index"] == k and ticket["class_names"] == list(CLASSES)
        assert 0.19 < ticket["density"] < 0.21
        model = ckpt.ticket_model(ticket)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)

    # the tickets evaluate with the one evaluation script, streaming ImageNet's val split
    r = subprocess.run([sys.executable, str(REPO / "ensemble_freetickets.py"), "--mode", "predict,calibration",
                        "--resume", str(ref_dir), "--data", "imagenet", "--data-dir", str(image_root),
                        "--test-batch-size", "8", "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads((ref_dir / "eval" / "results_latest.json").read_text())
    assert results["n_test"] == 18 and results["forward_passes"] == 2
    acc = {row["member"]: row["value"] for row in results["rows"]
           if row["mode"] == "predict" and row["metric"] == "acc"}
    val_acc = {f"model_{k}.pth": json.loads((ref_dir / "summary.json").read_text())["tickets"][k]["val_acc"]
               for k in (0, 1)}
    for name, value in val_acc.items():  # the same val images, the same model: the training run's figure
        assert acc[name] == pytest.approx(value, abs=1e-6)

    # 2. the same run killed during epoch 2 and resumed
    out = tmp_path / "killed"
    run_dir = out / RUN_DIR
    proc = torchrun(*COMMON, "--output-dir", out, image_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if len(json.loads((run_dir / "summary.json").read_text())["history"]) >= 1:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    victims = [proc.pid, *_descendants(proc.pid)]  # torchrun, both ranks (own sessions), their data workers
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in victims):
        time.sleep(0.05)  # until they are gone (rank 0 held the run folder's lock)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    r = torchrun(*COMMON, "--output-dir", out, "--resume", image_root, checksums=tmp_path / "ck_resumed")
    assert r.returncode == 0, "\n".join(line for line in r.stderr.splitlines() if "rror" in line)
    assert "resumed" in r.stdout
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["status"] == "finished"
    assert timeless(resumed["history"]) == timeless(summary["history"])
    ck2 = checksums(tmp_path / "ck_resumed")
    assert ck2[0] == ck2[1] and set(ck2[0]) <= set(ck[0])  # the same topologies as the uninterrupted run
    for name in ("model_0.pth", "model_1.pth"):
        a, b = ckpt.load_ticket(ref_dir / name), ckpt.load_ticket(run_dir / name)
        sa, sb = ckpt.ticket_state_dict(a), ckpt.ticket_state_dict(b)
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    # an existing run is not overwritten without --resume/--overwrite
    r = subprocess.run([sys.executable, str(MAIN), *COMMON, "--output-dir", str(out), str(image_root)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--resume" in r.stderr and "--overwrite" in r.stderr


@pytest.mark.slow
def test_paper_launch_line_through_multiproc(image_root, tmp_path):
    """The README line, with the epochs, warm-up, batch and image size made tiny and a free port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = (f"--nproc_per_node 2 main.py --sparse_init ERK --multiplier 1 --growth gradient --seed 17 "
            f"--master_port {port} -j5 -p 500 --arch resnet50 -c fanin --update_frequency 4000 "
            f"--label-smoothing 0.1 -b 4 --lr 0.1 --warmup 1 --epochs 2 --density 0.2").split()
    line += ["--reexplore-epochs", "1", "--image-size", "32", "--output-dir", str(tmp_path / "out"), f"{image_root}/"]
    r = subprocess.run([sys.executable, "multiproc.py", *line], cwd=REPO / "ImageNet", capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tmp_path / "out" / "imagenet-resnet50/imagenet/density_0.2/EDST/M=2/seed=17"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["distributed"]["world_size"] == 2
    assert summary["flags"]["model_config"] == "fanin" and summary["flags"]["sparse_init"] == "ERK"
    assert summary["flags"]["update_frequency"] == 4000
    assert [t["file"] for t in summary["tickets"]] == ["model_0.pth", "model_1.pth"]
    assert "initial masks: masks identical on 2 rank(s)" in (run_dir / "train.log").read_text()
    assert ckpt.load_ticket(run_dir / "model_1.pth")["model"] == "imagenet-resnet50"


@pytest.mark.slow
def test_forced_mask_mismatch_stops_the_run(image_root, tmp_path):
    out = tmp_path / "out"
    r = torchrun(*COMMON, "--output-dir", out, image_root, checksums=tmp_path / "ck", desync_at=1)
    assert r.returncode != 0
    assert "masks differ between ranks" in r.stderr and "detected at topology update 1" in r.stderr
    ck = checksums(tmp_path / "ck")
    assert ck[0][0] == ck[1][0]  # the initial masks agreed
    assert ck[0][1][0] == ck[1][1][0] == 1 and ck[0][1][1] != ck[1][1][1]  # update 1 differed: detected there
    summary = json.loads((out / RUN_DIR / "summary.json").read_text())
    assert summary["status"] == "failed: masks differ between ranks"
    assert not list((out / RUN_DIR).glob("model_*.pth"))  # stopped within the first epoch
