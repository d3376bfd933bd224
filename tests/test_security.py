"""Security: no checkpoint runs code, and nothing from a checkpoint or a flag writes outside the output folder.

Checkpoints that would run code when unpickled (each payload creates a marker file) are handed to every loading
path, as users run them: evaluation (``ensemble_freetickets.py --resume``), PF (``--pretrained``), training
``--resume FILE`` and plain ``--resume`` from the run folder, and ``ImageNet/main.py --resume`` when that script
exists. Each must refuse with one stderr line, write nothing, and the marker must never appear. A control shows
the payloads are real: ``torch.load(weights_only=False)`` does create the marker. The cases run as processes
forked from one server with torch imported (``helpers.ScriptForks``); one of each kind also as a real subprocess.
"""
from __future__ import annotations

import ast
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from helpers import (REPO, Exec, ScriptForks, Shell, assert_one_line_error, tree_state, write_fashion_mnist,
                     write_imagefolder)
from sparselearning import checkpoint as ckpt
from sparselearning.errors import UsageError
from sparselearning.recipes import main as train_main

pytestmark = pytest.mark.slow  # end-to-end: real training/evaluation processes

IMAGENET = REPO / "ImageNet" / "main.py"
TRAIN = ["--model", "cnn-small", "--data", "fashionmnist", "--batch-size", "32", "--epochs", "1", "--no-progress",
         "--seed", "7"]
RUN_DST = Path("cnn-small/fashionmnist/density_0.05/DST/seed=7")


class OpenFile:
    """Unpickling calls open(marker, 'w')."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("security")
    data = write_fashion_mnist(base / "data", n_train=120, n_test=30)
    out = base / "runs"
    train_main("DST", ["--sparse", *TRAIN, "--data-dir", str(data), "--output-dir", str(out)])
    run = out / RUN_DST
    ticket = ckpt.load_ticket(run / "model.pth")
    resume = ckpt.safe_load(run / "last.pth")
    marker = base / "PWNED"  # one marker for every payload: it must never exist
    evil = base / "evil"
    evil.mkdir()
    files = {
        # a real ticket with one metadata value replaced by a payload (torch's zip format)
        "ticket_open.pth": lambda p: torch.save({**ticket, "args": OpenFile(marker)}, p),
        # a real resume checkpoint carrying a payload in its history
        "last_shell.pth": lambda p: torch.save({**resume, "history": [Shell(marker)]}, p),
        # the payload alone, torch.save'd
        "plain_exec.pth": lambda p: torch.save(Exec(marker), p),
        # a raw pickle (torch's legacy, non-zip format), protocol 2
        "raw_shell.pth": lambda p: p.write_bytes(pickle.dumps({"state_dict": Shell(marker)}, protocol=2)),
    }
    for name, make in files.items():
        make(evil / name)
    w = {"base": base, "data": data, "run": run, "evil": evil, "marker": marker, "ticket": ticket}
    if IMAGENET.exists():
        w["img"] = write_imagefolder(base / "imagenet")
    return w


def test_the_payloads_are_real(world, tmp_path):
    """Control: loaded without weights_only, each file does run its payload (into a marker of its own)."""
    made = []
    for i, cls in enumerate((OpenFile, Shell, Exec)):
        m = tmp_path / f"control{i}"
        torch.save({"x": cls(m)}, tmp_path / "c.pth")
        obj = torch.load(tmp_path / "c.pth", weights_only=False)
        if cls is OpenFile:
            obj["x"].close()
        made.append(m.exists())
    assert made == [True, True, True]


def test_safe_load_refuses_every_payload_in_process(world):
    for f in sorted(world["evil"].iterdir()):
        with pytest.raises(UsageError, match="refused: loading it would call"):
            ckpt.safe_load(f)
        with pytest.raises(UsageError):
            ckpt.load_ticket(f)
    assert not world["marker"].exists()


def _cases() -> list[tuple[str, list[str], Path | None, tuple[str, ...]]]:
    """(id, command, run folder to plant an evil last.pth in or None, needles); {box}, {data}, {evil}, {img} are
    filled in when it runs."""
    ev, data = "{evil}", "{data}"
    train = [*TRAIN, "--data-dir", data]
    cases = [
        ("eval-folder-with-evil-ticket", ["ensemble_freetickets.py", "--mode", "predict", "--resume", "{box}/runs",
                                          "--data-dir", data, "--no-download", "--output-dir", "{box}/eval"],
         None, ("seed=2/model.pth was refused", "could run code")),
        ("eval-evil-file", ["ensemble_freetickets.py", "--mode", "predict", "--resume", f"{ev}/raw_shell.pth",
                            "--data-dir", data, "--no-download", "--output-dir", "{box}/eval"],
         None, ("raw_shell.pth was refused", "posix.system")),
        ("pf-pretrained-evil-ticket", ["main_PF.py", "--sparse", "--pretrained", f"{ev}/ticket_open.pth", *train,
                                       "--output-dir", "{box}/out"], None, ("ticket_open.pth was refused",)),
        ("pf-pretrained-evil-exec", ["main_PF.py", "--sparse", "--pretrained", f"{ev}/plain_exec.pth", *train,
                                     "--output-dir", "{box}/out"], None, ("plain_exec.pth was refused", "exec")),
        ("dst-resume-evil-file", ["main_DST.py", "--sparse", *train, "--output-dir", "{box}/out", "--resume",
                                  f"{ev}/last_shell.pth"], None, ("last_shell.pth was refused",)),
        ("dst-resume-evil-last-in-run-folder", ["main_DST.py", "--sparse", *train, "--output-dir", "{box}/out",
                                                "--resume"], RUN_DST, ("last.pth was refused",)),
        ("individual-resume-evil-raw", ["main_individual.py", *train, "--output-dir", "{box}/out", "--resume",
                                        f"{ev}/raw_shell.pth"], None, ("raw_shell.pth was refused",)),
        ("edst-resume-evil-exec", ["main_EDST.py", "--sparse", *train, "--epochs", "3", "--epochs-explo", "1",
                                   "--model-num", "2", "--output-dir", "{box}/out", "--resume",
                                   f"{ev}/plain_exec.pth"], None, ("plain_exec.pth was refused",)),
    ]
    if IMAGENET.exists():
        cases.append(("imagenet-resume-evil", ["ImageNet/main.py", "-a", "resnet18", "--image-size", "32", "-b", "2",
                                               "-j", "0", "--epochs", "2", "--reexplore-epochs", "1", "--lr-steps", "",
                                               "--warmup", "0", "--output-dir", "{box}/out", "--resume",
                                               f"{ev}/last_shell.pth", "{img}"],
                      None, ("last_shell.pth was refused",)))
    return cases


def _traversal_cases() -> list[tuple[str, list[str], tuple[str, ...]]]:
    data = "{data}"
    train = [*TRAIN, "--data-dir", data, "--output-dir", "results"]  # relative: inside the working folder
    return [
        ("dst-model-path", ["main_DST.py", "--sparse", *train, "--model", "../../../evil"], ("unknown model",)),
        ("edst-data-path", ["main_EDST.py", "--sparse", *train, "--epochs", "3", "--epochs-explo", "1", "--model-num",
                            "2", "--data", "../../evil"], ("unknown dataset",)),
        ("pf-model-absolute", ["main_PF.py", "--sparse", "--pretrained", "x.pth", *train, "--model", "/tmp/evil"],
         ("unknown model",)),
        ("eval-ticket-model-path", ["ensemble_freetickets.py", "--mode", "predict", "--resume", "{box}/t_model",
                                    "--data-dir", data, "--no-download"], ("unknown model '../../../evil'",)),
        ("eval-ticket-dataset-path", ["ensemble_freetickets.py", "--mode", "predict", "--resume", "{box}/t_data",
                                      "--data-dir", data, "--no-download"], ("unknown dataset",)),
    ]


@pytest.fixture(scope="module")
def results(world):
    """Every subprocess of this module, two or more at a time, each in a folder of its own."""
    marker = world["marker"]
    shared = [world["data"], world["evil"], world["base"] / "runs", *([world["img"]] if "img" in world else [])]
    shared_before = tree_state(*shared)
    jobs = []
    for cid, cmd, plant, needles in _cases():
        box = world["base"] / "cases" / cid
        (box / "cwd").mkdir(parents=True)
        if "{box}/runs" in cmd:  # an ensemble folder: one good ticket, one with a payload
            for seed, src in ((1, world["run"] / "model.pth"), (2, world["evil"] / "ticket_open.pth")):
                (box / "runs" / f"seed={seed}").mkdir(parents=True)
                shutil.copy(src, box / "runs" / f"seed={seed}" / "model.pth")
        if plant is not None:
            (box / "out" / plant).mkdir(parents=True)
            shutil.copy(world["evil"] / "last_shell.pth", box / "out" / plant / "last.pth")
        jobs.append((cid, box, cmd, needles))
    for cid, cmd, needles in _traversal_cases():
        box = world["base"] / "cases" / cid
        (box / "cwd" / "a" / "b").mkdir(parents=True)
        for sub, key, value in (("t_model", "model", "../../../evil"), ("t_data", "dataset", "../../../evil")):
            (box / sub / "seed=1").mkdir(parents=True)
            ckpt.atomic_save({**world["ticket"], key: value}, box / sub / "seed=1" / "model.pth")
        jobs.append((cid, box, cmd, needles))

    def run(job):
        cid, box, cmd, needles = job
        subs = {"{box}": str(box), "{data}": str(world["data"]), "{evil}": str(world["evil"]),
                "{img}": str(world.get("img", ""))}
        argv = []
        for a in cmd:
            for k, v in subs.items():
                a = a.replace(k, v)
            argv.append(a)
        cwd = box / "cwd" / "a" / "b" if (box / "cwd" / "a" / "b").exists() else box / "cwd"
        before = tree_state(box)
        r = forks.run(REPO / argv[0], argv[1:], cwd=cwd, streams=streams / cid)
        result = {"code": r.returncode, "stderr": r.stderr, "needles": needles, "unchanged": tree_state(box) == before}
        if cid in real_ids:  # also as a real `python SCRIPT ...` (the forked runs must not differ from it)
            real = subprocess.run([sys.executable, str(REPO / argv[0]), *argv[1:]], cwd=cwd, capture_output=True,
                                  text=True, timeout=300)
            result["real"] = {"code": real.returncode, "stderr": real.stderr, "unchanged": tree_state(box) == before}
        return cid, result

    # forked from one server with torch imported (helpers.ScriptForks); one case of each kind also runs for real
    forks, streams = ScriptForks(), world["base"] / "streams"
    streams.mkdir()
    real_ids = {_cases()[0][0], _traversal_cases()[0][0]}
    with ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 2))) as pool:
        done = dict(pool.map(run, jobs))
    return {"cases": done, "marker": marker.exists(), "shared_unchanged": tree_state(*shared) == shared_before}


@pytest.mark.parametrize("case_id", [c[0] for c in _cases()])
def test_every_loading_path_refuses_code_in_checkpoints(case_id, results):
    r = results["cases"][case_id]
    assert_one_line_error(r["code"], r["stderr"], *r["needles"])
    assert r["unchanged"], "files were written or changed"
    assert not results["marker"], "a payload ran"


@pytest.mark.parametrize("case_id", [c[0] for c in _traversal_cases()])
def test_paths_from_flags_and_tickets_are_refused(case_id, results):
    """A --model/--data with path parts, or a ticket whose model/dataset holds one: one line, nothing written."""
    r = results["cases"][case_id]
    assert_one_line_error(r["code"], r["stderr"], *r["needles"])
    assert r["unchanged"], "files were written or changed (outside or inside the output folder)"


def test_forked_runs_are_what_a_real_process_does(results):
    real = {cid: r for cid, r in results["cases"].items() if "real" in r}
    assert len(real) == 2
    for cid, r in real.items():
        assert (r["real"]["code"], r["real"]["stderr"], r["real"]["unchanged"]) == (r["code"], r["stderr"], True), cid


def test_shared_inputs_untouched(results):
    assert results["shared_unchanged"] and not results["marker"]


def test_outputs_stay_in_the_chosen_folders(world, tmp_path):
    """Tickets whose metadata strings are paths ('../../..'): PF training and evaluation succeed and write only
    under --output-dir; the working folder and the input folders are untouched."""
    box = tmp_path / "box"
    cwd = box / "cwd" / "a" / "b"
    cwd.mkdir(parents=True)
    hostile = {**world["ticket"], "dataset": "fashionmnist", "kind": "../../../kind", "role": "../../role",
               "seed": "../../../seed", "args": {"output_dir": "../../../../escape", "model": "../../x"}}
    pre = box / "pretrained" / "model.pth"
    ckpt.atomic_save({**hostile, "dataset": "../../../../escape"}, pre)  # PF does not use the ticket's dataset
    tickets = box / "tickets" / "seed=1"
    ckpt.atomic_save(hostile, tickets / "model.pth")
    before = tree_state(box)
    r = subprocess.run([sys.executable, str(REPO / "main_PF.py"), "--sparse", "--pretrained", str(pre), *TRAIN,
                        "--data-dir", str(world["data"]), "--output-dir", str(box / "pf_out")], cwd=cwd,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, str(REPO / "ensemble_freetickets.py"), "--mode", "predict,calibration",
                        "--resume", str(box / "tickets"), "--data-dir", str(world["data"]), "--no-download",
                        "--output-dir", str(box / "eval_out")], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    after = tree_state(box)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    outside = sorted(p for p in changed if not (p.startswith(str(box / "pf_out")) or
                                                 p.startswith(str(box / "eval_out"))))
    assert outside == [], outside
    assert any("results_latest.json" in p for p in changed) and any(p.endswith("model.pth") and "pf_out" in p
                                                                  for p in changed)
    assert not list(Path(tmp_path).parent.glob("escape*")) and not (box / "escape").exists()


def test_every_torch_load_in_the_project_is_weights_only():
    """Static check of the sources: torch.load(..., weights_only=True) everywhere; pickle only for CIFAR data."""
    offenders, pickle_uses, sources = [], [], []
    for folder, dirs, names in os.walk(REPO):
        top = Path(folder) == REPO  # ./data holds datasets; sparselearning/data is code and is checked
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "build", "results")
                   and not (top and d == "data") and not d.endswith(".egg-info")]
        sources += [Path(folder) / n for n in names if n.endswith(".py")]
    assert any(p.name == "checkpoint.py" for p in sources)
    for path in sorted(sources):
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(), filename=rel)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            if owner == "torch" and node.func.attr == "load":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    offenders.append(f"{rel}:{node.lineno}")
            if owner == "pickle" and node.func.attr in ("load", "loads"):
                pickle_uses.append(rel)
    assert offenders == []
    assert any(p.as_posix().endswith("sparselearning/data/formats.py") for p in sources)
    assert pickle_uses == []  # CIFAR batches, pickles by format, are read with a restricted Unpickler


def _poisoned_cifar(root: Path, marker: Path) -> Path:
    """CIFAR-10 and CIFAR-100 folders in the release's format whose data_batch_2 and cifar-100-python/test carry
    payloads."""
    import numpy as np

    rng = np.random.default_rng(0)
    for folder, names, key, classes in (("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] +
                                         ["test_batch"], b"labels", 10),
                                        ("cifar-100-python", ["train", "test"], b"fine_labels", 100)):
        (root / folder).mkdir(parents=True)
        for name in names:
            d = {b"data": rng.integers(0, 256, (40, 3072), dtype=np.uint8), key: rng.integers(0, classes, 40).tolist()}
            if name in ("data_batch_2", "test"):
                d[b"batch_label"] = Shell(marker)
            (root / folder / name).write_bytes(pickle.dumps(d, protocol=2))
    return root


def test_poisoned_cifar_batches_are_refused_in_training_and_evaluation(world, tmp_path):
    """A payload in a CIFAR batch: training (main_DST.py --data cifar10) and evaluation (an OoD set) refuse the file
    with one line, write nothing, and the payload never runs."""
    marker = tmp_path / "PWNED"
    data = _poisoned_cifar(tmp_path / "data", marker)
    shutil.copytree(world["data"] / "FashionMNIST", data / "FashionMNIST")
    (tmp_path / "cwd").mkdir()
    runs = [(["main_DST.py", "--sparse", *TRAIN, "--data", "cifar10", "--data-dir", str(data), "--output-dir",
              str(tmp_path / "out")], "data_batch_2 was refused"),
            (["ensemble_freetickets.py", "--mode", "ood", "--ood-data", "cifar100", "--resume",
              str(world["run"] / "model.pth"), "--data-dir", str(data), "--no-download", "--output-dir",
              str(tmp_path / "eval")], "cifar-100-python/test was refused")]
    before = tree_state(tmp_path)
    for argv, needle in runs:
        r = subprocess.run([sys.executable, str(REPO / argv[0]), *argv[1:]], cwd=tmp_path / "cwd",
                           capture_output=True, text=True, timeout=300)
        assert_one_line_error(r.returncode, r.stderr, needle, "posix.system")
    assert tree_state(tmp_path) == before and not marker.exists()
