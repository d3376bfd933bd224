"""Table-driven bad input for every entry script, run as users run them (as processes).

Each case must end with exit code 2 and exactly one stderr line that names the problem and says what to do, no
traceback, and write or change nothing: the case's own folder (its working directory, output folder and inputs)
and the shared inputs (data, checkpoints) are fingerprinted before and after. Cases run two or more at a time;
each one has a folder of its own. ImageNet/main.py cases run when that script exists. The cases run in processes
forked from one server that has torch imported (helpers.ScriptForks: a hundred fresh interpreters cost minutes of
imports); the first case of each script also runs as a real subprocess, and the two must agree.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from helpers import (REPO, ScriptForks, assert_one_line_error, tree_state, write_cifar10, write_fashion_mnist,
                      write_imagefolder)
from models import get_model
from sparselearning import checkpoint as ckpt
from sparselearning.recipes import main as train_main


IMAGENET = REPO / "ImageNet" / "main.py"
TRAIN = ["--model", "cnn-small", "--data", "fashionmnist", "--data-dir", "{data}", "--batch-size", "32", "--epochs",
         "1", "--no-progress", "--output-dir", "{out}", "--seed", "5"]
EVAL = ["--mode", "predict", "--data-dir", "{data}", "--no-download", "--output-dir", "{out}"]
IMNET = ["-a", "resnet18", "--image-size", "32", "-b", "2", "-j", "0", "--epochs", "2", "--reexplore-epochs", "1",
         "--lr-steps", "", "--warmup", "0", "--output-dir", "{out}", "--no-progress"]
# words of a message that tells the user what to do
FIX_WORDS = ("use ", "pass ", "choose", "point ", "give ", "add ", "lower ", "raise ", "re-download", "put ",
             "check ", "drop ", "delete", "see --help", "must be", "must hold", "resume with", "start over",
             "evaluate tickets", "retrain", "wait", "pick ", "start again")


@dataclass
class Case:
    id: str
    script: str
    args: list[str]
    needles: tuple[str, ...]
    setup: Callable[[Path, dict], None] | None = None
    result: dict = field(default_factory=dict)


def _copy(src_key: str, rel: str) -> Callable[[Path, dict], None]:
    def setup(box: Path, w: dict) -> None:
        dst = box / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(w[src_key], dst)
    return setup


def _all(*setups) -> Callable[[Path, dict], None]:
    def setup(box: Path, w: dict) -> None:
        for s in setups:
            s(box, w)
    return setup


def _mkdir(rel: str) -> Callable[[Path, dict], None]:
    return lambda box, w: (box / rel).mkdir(parents=True, exist_ok=True)


def _file(rel: str, data: bytes) -> Callable[[Path, dict], None]:
    def setup(box: Path, w: dict) -> None:
        (box / rel).parent.mkdir(parents=True, exist_ok=True)
        (box / rel).write_bytes(data)
    return setup


def _fifo(rel: str) -> Callable[[Path, dict], None]:
    """A named pipe where a checkpoint is expected (opening it to read would block until a writer comes)."""
    def setup(box: Path, w: dict) -> None:
        (box / rel).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(box / rel)
    return setup


def _damaged_ticket(damage: Callable[[dict], dict]) -> Callable[[Path, dict], None]:
    """runs/seed=1: a good ticket; runs/seed=2: the same ticket, damaged."""
    def setup(box: Path, w: dict) -> None:
        good = ckpt.load_ticket(w["dst_ticket"])
        ckpt.atomic_save(good, box / "runs" / "seed=1" / "model.pth")
        ckpt.atomic_save(damage(good), box / "runs" / "seed=2" / "model.pth")
    return setup


def _short_values(t: dict) -> dict:
    name = next(iter(t["sparse_state"]))
    entry = {**t["sparse_state"][name], "values": t["sparse_state"][name]["values"][:-3]}
    return {**t, "sparse_state": {**t["sparse_state"], name: entry}}


def _nan_weight(t: dict) -> dict:
    name = next(iter(t["dense_state"]))
    bad = t["dense_state"][name].clone()
    bad.view(-1)[0] = math.nan
    return {**t, "dense_state": {**t["dense_state"], name: bad}}


def _mnist_truncated(box: Path, w: dict) -> None:
    raw = box / "bad_data" / "MNIST" / "raw"
    shutil.copytree(w["data"] / "FashionMNIST" / "raw", raw)
    f = raw / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:300])  # a download cut short


def _fmnist_bad_magic(box: Path, w: dict) -> None:
    raw = box / "bad_data" / "FashionMNIST" / "raw"
    shutil.copytree(w["data"] / "FashionMNIST" / "raw", raw)
    (raw / "train-labels-idx1-ubyte.gz").unlink()
    (raw / "train-labels-idx1-ubyte").write_bytes(b"<html>not found</html>")  # a proxy's error page


def _cifar_garbage(box: Path, w: dict) -> None:
    folder = write_cifar10(box / "bad_data", per_batch=4, n_test=4) / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])


def _fmnist_label_200(box: Path, w: dict) -> None:
    import gzip

    raw = box / "bad_data" / "FashionMNIST" / "raw"
    shutil.copytree(w["data"] / "FashionMNIST" / "raw", raw)
    f = raw / "train-labels-idx1-ubyte.gz"
    labels = bytearray(gzip.decompress(f.read_bytes()))
    labels[8 + 7] = 200  # idx header: 4 magic bytes + one 4-byte dimension
    f.write_bytes(gzip.compress(bytes(labels)))


def _cifar_label_minus_1(box: Path, w: dict) -> None:
    import pickle

    folder = write_cifar10(box / "bad_data", per_batch=4, n_test=4) / "cifar-10-batches-py"
    batch = pickle.loads((folder / "test_batch").read_bytes())
    batch[b"labels"][2] = -1
    (folder / "test_batch").write_bytes(pickle.dumps(batch))


def _symlink(rel: str, target_rel: str) -> Callable[[Path, dict], None]:
    """box/rel is a symbolic link to the (new, empty) folder box/target_rel."""
    def setup(box: Path, w: dict) -> None:
        (box / target_rel).mkdir(parents=True, exist_ok=True)
        (box / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(box / target_rel, box / rel)
    return setup


def _damaged_last(damage: Callable[[dict], None]) -> Callable[[Path, dict], None]:
    """The run folder's last.pth: the real one of a DST run, damaged in place by `damage`."""
    def setup(box: Path, w: dict) -> None:
        state = ckpt.safe_load(w["dst_last"])
        damage(state)
        ckpt.atomic_save(state, box / RUN_DST / "last.pth")
    return setup


def _first_mask_reshaped(state: dict) -> None:
    masks, explored = state["masking"]["masks"], state["masking"]["explored"]
    name = next(iter(masks))
    masks[name] = masks[name].flatten()[:-1].clone()
    explored[name] = explored[name].flatten()[:-1].clone()


def _port_taken(port: int) -> Callable[[Path, dict], None]:
    """Something listens on `port` while the case runs (kept open in the shared dict)."""
    def setup(box: Path, w: dict) -> None:
        import socket

        sock = socket.socket()
        try:
            sock.bind(("", port))
            sock.listen()
            w.setdefault("sockets", []).append(sock)
        except OSError:  # taken already: the case expects just that
            sock.close()
    return setup


RUN_DST = "out/cnn-small/fashionmnist/density_0.05/DST/seed=5"  # where TRAIN + --sparse writes
DAMAGED = "written by an older or damaged run: start again without --resume"
HUGE_SEED = "99999999999999999999999"  # beyond 64 bits: torch.manual_seed overflows
EDST = ["--sparse", "--epochs", "3", "--epochs-explo", "1", "--model-num", "2"]

CASES = [
    # ---------------------------------------------------------------- main_individual.py: numbers, names, data
    Case("ind-epochs-zero", "main_individual.py", ["--epochs", "0"], ("--epochs must be at least 1",)),
    Case("ind-lr-inf", "main_individual.py", ["--lr", "inf"], ("--lr must be a finite number",)),
    Case("ind-momentum-nan", "main_individual.py", ["--momentum", "nan"], ("--momentum must be a finite number",)),
    Case("ind-valid-split-one", "main_individual.py", ["--valid_split", "1.0"], ("--valid_split", "[0, 1)")),
    Case("ind-optimizer-unknown", "main_individual.py", ["--optimizer", "rmsprop"], ("--optimizer", "rmsprop")),
    Case("ind-epochs-not-a-number", "main_individual.py", ["--epochs", "ten"], ("--epochs", "'ten'")),
    Case("ind-model-path-like", "main_individual.py", ["--model", "../../x"], ("unknown model '../../x'",)),
    Case("ind-data-ood-only", "main_individual.py", ["--data", "svhn"], ("unknown dataset 'svhn'",)),
    Case("ind-mnist-truncated", "main_individual.py", ["--data", "mnist", "--data-dir", "{box}/bad_data"],
         ("cannot read the MNIST train files", "re-download"), _mnist_truncated),
    Case("edst-fmnist-not-idx", "main_EDST.py", ["--sparse", "--epochs", "3", "--epochs-explo", "1", "--model-num",
                                                 "2", "--data-dir", "{box}/bad_data"],
         ("train-labels-idx1-ubyte", "not an idx file"), _fmnist_bad_magic),
    Case("dst-cifar-batch-truncated", "main_DST.py", ["--sparse", "--data", "cifar10", "--data-dir", "{box}/bad_data"],
         ("data_batch_3: it is damaged or truncated", "re-download"), _cifar_garbage),
    Case("ind-fmnist-label-200", "main_individual.py", ["--data-dir", "{box}/bad_data"],
         ("train-labels-idx1-ubyte.gz holds label 200, outside 0..9", "re-download"), _fmnist_label_200),
    Case("dst-cifar-label-minus-1", "main_DST.py", ["--sparse", "--data", "cifar10", "--data-dir", "{box}/bad_data"],
         ("test_batch holds label -1, outside 0..9", "re-download"), _cifar_label_minus_1),
    Case("dst-data-dir-is-a-file", "main_DST.py", ["--sparse", "--data-dir", "{box}/afile"],
         ("afile is a file, not a folder", "point --data-dir"), _file("afile", b"x")),
    # ---------------------------------------------------------------- main_DST.py: flags, folders, --resume
    Case("dst-output-dir-is-a-file", "main_DST.py", ["--sparse", "--output-dir", "{box}/afile"],
         ("afile is a file", "--output-dir"), _file("afile", b"x")),
    Case("dst-resume-and-overwrite", "main_DST.py", ["--sparse", "--resume", "--overwrite"],
         ("--resume and --overwrite contradict",)),
    Case("dst-update-frequency-zero", "main_DST.py", ["--sparse", "--update-frequency", "0"],
         ("--update-frequency must be at least 1",)),
    Case("dst-sparse-init-unknown", "main_DST.py", ["--sparse", "--sparse-init", "bogus"], ("--sparse-init", "bogus")),
    Case("dst-resume-missing-file", "main_DST.py", ["--sparse", "--resume", "{box}/missing.pth"],
         ("no such checkpoint",)),
    Case("dst-resume-not-a-checkpoint", "main_DST.py", ["--sparse", "--resume", "{w}/garbage.pth"],
         ("garbage.pth is not a", "checkpoint")),
    Case("dst-resume-truncated", "main_DST.py", ["--sparse", "--resume", "{w}/trunc_last.pth"],
         ("trunc_last.pth is not a readable checkpoint", "truncated")),
    Case("dst-resume-a-ticket", "main_DST.py", ["--sparse", "--resume", "{w}/dst_ticket.pth"],
         ("not a resume checkpoint", "last.pth")),
    Case("dst-resume-other-architecture", "main_DST.py", ["--sparse", "--resume", "{w}/lenet_last.pth"],
         ("other settings (differs in: model)", "--overwrite")),
    Case("dst-resume-truncated-in-run-folder", "main_DST.py", ["--sparse", "--resume"],
         ("last.pth is not a readable checkpoint",), _copy("trunc_last", f"{RUN_DST}/last.pth")),
    # ---------------------------------------------------------------- main_EDST.py
    Case("edst-phases-too-short", "main_EDST.py", ["--sparse", "--epochs", "3", "--epochs-explo", "1", "--model-num",
                                                   "5"], ("refinement phases", "raise --epochs")),
    Case("edst-large-death-rate", "main_EDST.py", ["--sparse", "--epochs", "3", "--epochs-explo", "1", "--model-num",
                                                   "2", "--large-death-rate", "1.5"], ("--large-death-rate",)),
    Case("edst-resume-a-dst-run", "main_EDST.py", ["--sparse", "--epochs", "3", "--epochs-explo", "1", "--model-num",
                                                   "2", "--resume", "{w}/dst_last.pth"], ("other settings",)),
    # ---------------------------------------------------------------- main_PF.py: --pretrained
    Case("pf-pretrained-missing", "main_PF.py", ["--sparse", "--pretrained", "{box}/nope.pth"], ("does not exist",)),
    Case("pf-pretrained-folder", "main_PF.py", ["--sparse", "--pretrained", "{box}/ckpts"],
         ("is a folder, not a checkpoint file",), _mkdir("ckpts")),
    Case("pf-pretrained-empty-file", "main_PF.py", ["--sparse", "--pretrained", "{w}/empty.pth"],
         ("empty.pth is not a readable checkpoint",)),
    Case("pf-pretrained-truncated", "main_PF.py", ["--sparse", "--pretrained", "{w}/trunc_ticket.pth"],
         ("trunc_ticket.pth is not a readable checkpoint",)),
    Case("pf-pretrained-other-architecture", "main_PF.py", ["--sparse", "--pretrained", "{w}/lenet_ticket.pth"],
         ("is a lenet5 with 10 classes, not a cnn-small",)),
    Case("pf-pretrained-other-architecture-state-dict", "main_PF.py",
         ["--sparse", "--pretrained", "{w}/lenet_state.pt"], ("does not fit cnn-small",)),
    Case("pf-pretrained-other-class-count", "main_PF.py", ["--sparse", "--pretrained", "{w}/ticket_100.pth"],
         ("with 100 classes",)),
    Case("pf-pretrained-resume-checkpoint", "main_PF.py", ["--sparse", "--pretrained", "{w}/dst_last.pth"],
         ("holds no model weights",)),
    # ---------------------------------------------------------------- ensemble_freetickets.py
    Case("eval-empty-folder", "ensemble_freetickets.py", ["--resume", "{box}/runs"], ("no tickets",), _mkdir("runs")),
    Case("eval-missing-folder", "ensemble_freetickets.py", ["--resume", "{box}/runs"], ("does not exist",)),
    Case("eval-only-resume-checkpoints", "ensemble_freetickets.py", ["--resume", "{box}/runs"], ("no tickets",),
         _copy("dst_last", "runs/seed=1/last.pth")),
    Case("eval-resume-checkpoint-as-ticket", "ensemble_freetickets.py", ["--resume", "{w}/dst_last.pth"],
         ("not a FreeTickets ticket",)),
    Case("eval-mixed-architectures", "ensemble_freetickets.py", ["--resume", "{box}/runs"],
         ("seed=2/model.pth differs from seed=1/model.pth in model",),
         _all(_copy("dst_ticket", "runs/seed=1/model.pth"), _copy("lenet_ticket", "runs/seed=2/model.pth"))),
    Case("eval-mixed-class-counts", "ensemble_freetickets.py", ["--resume", "{box}/runs"],
         ("differs from seed=1/model.pth in class count",),
         _all(_copy("dst_ticket", "runs/seed=1/model.pth"), _copy("ticket_100", "runs/seed=2/model.pth"))),
    Case("eval-truncated-ticket", "ensemble_freetickets.py", ["--resume", "{box}/runs"],
         ("seed=2/model.pth is not a readable checkpoint",),
         _all(_copy("dst_ticket", "runs/seed=1/model.pth"), _copy("trunc_ticket", "runs/seed=2/model.pth"))),
    Case("eval-non-checkpoint-file", "ensemble_freetickets.py", ["--resume", "{box}/runs"],
         ("seed=2/model.pth is not a", "checkpoint"),
         _all(_copy("dst_ticket", "runs/seed=1/model.pth"), _copy("garbage", "runs/seed=2/model.pth"))),
    Case("eval-unknown-mode", "ensemble_freetickets.py", ["--resume", "{w}/dst_ticket.pth", "--mode", "bogus"],
         ("unknown mode 'bogus'",)),
    Case("eval-ece-bins-zero", "ensemble_freetickets.py", ["--resume", "{w}/dst_ticket.pth", "--ece-bins", "0"],
         ("--ece-bins",)),
    Case("eval-ece-bins-huge", "ensemble_freetickets.py", ["--resume", "{w}/dst_ticket.pth", "--ece-bins",
                                                           "100000000"], ("--ece-bins 100000000 is too many",)),
    Case("eval-compare-missing-folder", "ensemble_freetickets.py", ["--compare", "{w}", "{box}/nothere"],
         ("nothere is not a folder",)),
    Case("eval-output-dir-is-a-file", "ensemble_freetickets.py", ["--resume", "{w}/dst_ticket.pth", "--output-dir",
                                                                  "{box}/afile"], ("is a file",), _file("afile", b"x")),
    Case("eval-dataset-missing", "ensemble_freetickets.py", ["--resume", "{w}/mnist_ticket.pth", "--data-dir",
                                                             "{box}/nodata"], ("MNIST", "not found")),
    # ---------------------------------------------------------------- issue 15: what still ended in a traceback
    Case("ind-seed-beyond-64-bits", "main_individual.py", ["--seed", HUGE_SEED], ("--seed must be in [0, 2**63)",)),
    Case("dst-seed-beyond-64-bits", "main_DST.py", ["--sparse", "--seed", HUGE_SEED], ("--seed must be in",)),
    Case("edst-seed-beyond-64-bits", "main_EDST.py", [*EDST, "--seed", HUGE_SEED], ("--seed must be in",)),
    Case("pf-seed-beyond-64-bits", "main_PF.py", ["--sparse", "--pretrained", "{w}/dst_ticket.pth", "--seed",
                                                  HUGE_SEED], ("--seed must be in",)),
    Case("dst-seed-negative", "main_DST.py", ["--sparse", "--seed", "-1"], ("--seed must be in [0, 2**63), got -1",)),
    Case("pf-pretrained-nan", "main_PF.py", ["--sparse", "--pretrained", "{w}/nan_state.pt"],
         ("nan_state.pt holds non-finite weights", "features.0.weight")),
    Case("dst-final-death-rate-5", "main_DST.py", ["--sparse", "--decay-schedule", "cosine", "--final-death-rate",
                                                   "5"], ("--final-death-rate must be in [0, 1)",)),
    Case("dst-erk-power-scale-negative", "main_DST.py", ["--sparse", "--erk-power-scale", "-5"],
         ("--erk-power-scale must be 0 (uniform) or more",)),
    Case("dst-death-threshold-negative", "main_DST.py", ["--sparse", "--death", "threshold", "--death-threshold",
                                                         "-1"], ("--death-threshold", "0 or more")),
    Case("ind-multiplier-huge", "main_individual.py", ["--multiplier", "1000000000"],
         ("--multiplier 1000000000", "lower --epochs or --multiplier")),
    Case("pf-pretrained-fifo", "main_PF.py", ["--sparse", "--pretrained", "{box}/model.pth"],
         ("model.pth is a FIFO, not a regular file",), _fifo("model.pth")),
    Case("dst-resume-fifo", "main_DST.py", ["--sparse", "--resume", "{box}/last.pth"],
         ("last.pth is a FIFO, not a regular file",), _fifo("last.pth")),
    Case("dst-resume-fifo-in-run-folder", "main_DST.py", ["--sparse", "--resume"],
         ("last.pth is a FIFO, not a regular file",), _fifo(f"{RUN_DST}/last.pth")),
    Case("eval-ticket-fifo", "ensemble_freetickets.py", ["--resume", "{box}/runs"],
         ("seed=2/model.pth is a FIFO",), _all(_copy("dst_ticket", "runs/seed=1/model.pth"),
                                               _fifo("runs/seed=2/model.pth"))),
    Case("edst-fix", "main_EDST.py", [*EDST, "--fix"], ("main_EDST.py --fix", "use main_DST.py --sparse --fix")),
    Case("ind-fix-without-sparse", "main_individual.py", ["--fix"], ("--fix", "add --sparse", "drop --fix")),
    # ---------------------------------------------------------------- moved here from test_train.py
    Case("dst-density-above-one", "main_DST.py", ["--sparse", "--density", "1.5"], ("--density",)),
    Case("dst-density-zero", "main_DST.py", ["--sparse", "--density", "0"], ("--density",)),
    Case("dst-death-rate-one", "main_DST.py", ["--sparse", "--death-rate", "1.0"], ("--death-rate",)),
    Case("edst-epochs-explo-all", "main_EDST.py", ["--sparse", "--epochs", "5", "--epochs-explo", "5"],
         ("--epochs-explo",)),
    Case("edst-model-num-zero", "main_EDST.py", ["--sparse", "--model-num", "0"], ("--model-num",)),
    Case("dst-model-unknown", "main_DST.py", ["--sparse", "--model", "resnet9000"], ("unknown model",)),
    Case("dst-data-unknown", "main_DST.py", ["--sparse", "--data", "imagenet21k"], ("unknown dataset",)),
    Case("pf-no-pretrained", "main_PF.py", ["--sparse", "--fix"], ("--pretrained",)),
    Case("dst-without-sparse", "main_DST.py", ["--density", "0.2"], ("--sparse",)),
    Case("dst-growth-unknown", "main_DST.py", ["--sparse", "--growth", "bogus"], ("--growth",)),
    Case("dst-dataset-missing", "main_DST.py", ["--sparse", "--data", "cifar100", "--data-dir", "{box}/no_cifar"],
         ("CIFAR-100",), _mkdir("no_cifar")),
    # ---------------------------------------------------------------- moved here from test_evaluation_*.py
    Case("eval-compare-empty-folder", "ensemble_freetickets.py", ["--compare", "{box}/runs", "{box}/empty"],
         ("empty holds no tickets",), _all(_copy("dst_ticket", "runs/seed=1/model.pth"), _mkdir("empty"))),
    Case("eval-neither-resume-nor-compare", "ensemble_freetickets.py", [], ("--resume", "--compare")),
    Case("eval-ticket-values-shorter-than-mask", "ensemble_freetickets.py", ["--resume", "{box}/runs"],
         ("seed=2/model.pth", "values for a mask of"), _damaged_ticket(_short_values)),
    Case("eval-ticket-image-size-zero", "ensemble_freetickets.py", ["--resume", "{box}/runs"],
         ("seed=2/model.pth", "image_size 0"), _damaged_ticket(lambda t: {**t, "image_size": 0})),
    Case("eval-ticket-nan-weight", "ensemble_freetickets.py", ["--resume", "{box}/runs"],
         ("seed=2/model.pth", "non-finite weights"), _damaged_ticket(_nan_weight)),
    Case("eval-ticket-std-zero", "ensemble_freetickets.py", ["--resume", "{box}/runs"],
         ("seed=2/model.pth", "normalisation std"),
         _damaged_ticket(lambda t: {**t, "normalization": {"mean": [0.286], "std": [0.0]}})),
    Case("eval-ticket-image-size-beyond-memory", "ensemble_freetickets.py", ["--resume", "{box}/runs/seed=2"],
         ("seed=2/model.pth", "at image size 1000000 needs at least", "GiB", "use a ticket written by these scripts"),
         _damaged_ticket(lambda t: {**t, "image_size": 1000000})),
    Case("eval-ticket-std-negative", "ensemble_freetickets.py", ["--resume", "{box}/runs"],
         ("seed=2/model.pth", "normalisation std"),
         _damaged_ticket(lambda t: {**t, "normalization": {"mean": [0.286], "std": [-1.0]}})),
    # ---------------------------------------------------------------- reliability round 3
    # resume is about one run folder: another folder's last.pth into this --output-dir is refused, not half-copied
    Case("dst-resume-into-another-output-dir", "main_DST.py", ["--sparse", "--resume", f"{{box}}/other/{RUN_DST}/"
                                                               "last.pth"],
         ("belongs to another run folder", "plain --resume"), _copy("dst_last", f"other/{RUN_DST}/last.pth")),
    # paths: empty, blank, too long, folders below --output-dir that are links
    Case("dst-output-dir-empty", "main_DST.py", ["--sparse", "--output-dir", ""], ("--output-dir is empty",)),
    Case("dst-output-dir-blank", "main_DST.py", ["--sparse", "--output-dir", "  "], ("--output-dir is empty",)),
    Case("dst-output-dir-name-too-long", "main_DST.py", ["--sparse", "--output-dir", "{box}/" + "x" * 300],
         ("--output-dir is too long", "300 bytes", "pass a shorter path")),
    Case("ind-data-dir-name-too-long", "main_individual.py", ["--data-dir", "{box}/" + "d" * 300],
         ("--data-dir is too long",)),
    Case("dst-run-folder-through-a-link", "main_DST.py", ["--sparse"], ("is a symbolic link", "use a real folder"),
         _symlink("out/cnn-small", "elsewhere")),
    Case("eval-plots-folder-a-link", "ensemble_freetickets.py", ["--resume", "{w}/dst_ticket.pth"],
         ("plots is a symbolic link",), _symlink("out/plots", "elsewhere")),
    Case("eval-output-dir-empty", "ensemble_freetickets.py", ["--resume", "{w}/dst_ticket.pth", "--output-dir", ""],
         ("--output-dir is empty",)),
    Case("eval-resume-blank", "ensemble_freetickets.py", ["--resume", " "], ("--resume is empty",)),
    # last.pth of an older or damaged run: keys, types, ranges, sizes, shapes
    Case("dst-resume-negative-epoch", "main_DST.py", ["--sparse", "--resume"], (DAMAGED, "epoch -1"),
         _damaged_last(lambda s: s.update(epoch=-1))),
    Case("dst-resume-fractional-epoch", "main_DST.py", ["--sparse", "--resume"], (DAMAGED, "epoch 0.5"),
         _damaged_last(lambda s: s.update(epoch=0.5))),
    Case("dst-resume-missing-keys", "main_DST.py", ["--sparse", "--resume"], (DAMAGED, "missing rng, history"),
         _damaged_last(lambda s: [s.pop("rng"), s.pop("history")])),
    Case("dst-resume-rng-wrong-size", "main_DST.py", ["--sparse", "--resume"], (DAMAGED, "random-number states"),
         _damaged_last(lambda s: s["rng"].update(torch=s["rng"]["torch"][:100].clone()))),
    Case("dst-resume-mask-wrong-shape", "main_DST.py", ["--sparse", "--resume"], (DAMAGED, "mask for"),
         _damaged_last(_first_mask_reshaped)),
    # numbers that cannot work, refused up front
    Case("dst-lr-overflows-float32", "main_DST.py", ["--sparse", "--lr", "1e308"], ("--lr 1e+308 overflows",)),
    Case("dst-density-leaves-a-layer-empty", "main_DST.py", ["--sparse", "--density", "1e-308"],
         ("leaves layer features.0.weight", "no active weight", "raise --density")),
    Case("ind-batch-beyond-memory", "main_individual.py", ["--batch-size", "100000000"],
         ("GiB to train", "more than", "lower the batch size")),
]
IMAGENET_CASES = [
    Case("imagenet-arch-unknown", "ImageNet/main.py", ["-a", "resnet9", "{img}"], ("resnet9",)),
    Case("imagenet-density-zero", "ImageNet/main.py", ["--density", "0", "{img}"], ("--density",)),
    Case("imagenet-no-val-folder", "ImageNet/main.py", ["{box}/img"], ("val/",),
         lambda box, w: shutil.copytree(w["img"] / "train", box / "img" / "train")),
    Case("imagenet-resume-not-a-checkpoint", "ImageNet/main.py", ["--resume", "{w}/garbage.pth", "{img}"],
         ("garbage.pth is not a", "checkpoint")),
    Case("imagenet-resume-a-cifar-run", "ImageNet/main.py", ["--resume", "{w}/dst_last.pth", "{img}"],
         ("other settings",)),
    Case("imagenet-seed-beyond-64-bits", "ImageNet/main.py", ["--seed", HUGE_SEED, "{img}"], ("--seed must be in",)),
    Case("imagenet-final-death-rate-5", "ImageNet/main.py", ["--final-death-rate", "5", "{img}"],
         ("--final-death-rate must be in [0, 1)",)),
    Case("imagenet-erk-power-scale-negative", "ImageNet/main.py", ["--erk-power-scale", "-5", "{img}"],
         ("--erk-power-scale",)),
    Case("imagenet-death-threshold-negative", "ImageNet/main.py", ["--death-threshold", "-1", "{img}"],
         ("--death-threshold",)),
    Case("imagenet-multiplier-huge", "ImageNet/main.py", ["--multiplier", "1000000000", "{img}"],
         ("--multiplier 1000000000",)),
    Case("imagenet-dense-fix", "ImageNet/main.py", ["--dense", "--fix", "{img}"], ("--fix", "--dense")),
    Case("imagenet-fix-reexplore", "ImageNet/main.py", ["--fix", "{img}"],  # IMNET gives --reexplore-epochs 1
         ("--fix keeps the masks fixed", "--reexplore-epochs 1", "drop --fix")),
    Case("imagenet-resume-fifo", "ImageNet/main.py", ["--resume", "{box}/last.pth", "{img}"],
         ("last.pth is a FIFO",), _fifo("last.pth")),
    # ---------------------------------------------------------------- moved here from test_imagenet.py
    Case("imagenet-reexplore-beyond-epochs", "ImageNet/main.py", ["--epochs", "4", "--reexplore-epochs", "2,5",
                                                                  "{img}"], ("--reexplore-epochs",)),
    Case("imagenet-lr-steps-garbled", "ImageNet/main.py", ["--lr-steps", "x", "{img}"], ("EPOCH:FACTOR",)),
    Case("imagenet-batch-above-images", "ImageNet/main.py", ["-b", "1000", "{img}"], ("fewer than one batch",)),
    Case("imagenet-warmup-whole-run", "ImageNet/main.py", ["--epochs", "4", "--warmup", "4", "{img}"], ("--warmup",)),
    Case("imagenet-data-missing", "ImageNet/main.py", ["{box}/nowhere"], ("train/ and val/",)),
    Case("imagenet-train-without-val", "ImageNet/main.py", ["{box}/partial"], ("no val/ folder",),
         _mkdir("partial/train")),
    Case("imagenet-image-size-beyond-memory", "ImageNet/main.py", ["--image-size", "100000", "{img}"],
         ("--image-size 100000", "GiB to train", "lower the batch size or the image size")),
    Case("multiproc-nproc-zero", "ImageNet/multiproc.py", ["--nproc_per_node", "0", "main.py", "{img}"],
         ("--nproc_per_node must be at least 1",)),
    Case("multiproc-port-out-of-range", "ImageNet/multiproc.py", ["--nproc_per_node", "1", "main.py",
                                                                  "--master_port", "70000", "{img}"],
         ("--master_port must be in 1..65535, got 70000",)),
    Case("multiproc-nnodes-garbled", "ImageNet/multiproc.py", ["--nnodes", "two", "main.py", "{img}"],
         ("--nnodes 'two' is not a whole number",)),
    Case("multiproc-port-in-use", "ImageNet/multiproc.py", ["--nproc_per_node", "1", "--master_port", "45871",
                                                            "main.py", "{img}"],
         ("--master_port 45871 is in use", "pick another port"), _port_taken(45871)),
]
if IMAGENET.exists():
    CASES += IMAGENET_CASES


def _argv(case: Case) -> list[str]:
    base = {"main_individual.py": TRAIN, "main_DST.py": TRAIN, "main_EDST.py": TRAIN, "main_PF.py": TRAIN,
            "ensemble_freetickets.py": EVAL, "ImageNet/main.py": IMNET, "ImageNet/multiproc.py": []}[case.script]
    return [*base, *case.args]  # argparse: a repeated flag's later value wins


def _nan_state() -> dict:
    """A cnn-small state_dict of a run that diverged: its first conv weights are NaN."""
    state = get_model("cnn-small", 10, 1, 28).state_dict()
    first = next(k for k in state if k.endswith("weight"))
    state[first] = torch.full_like(state[first], math.nan)
    return state


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shared inputs: data, real checkpoints of two architectures, and damaged files made from them."""
    base = tmp_path_factory.mktemp("bad_inputs")
    w = {"base": base, "data": write_fashion_mnist(base / "data", n_train=120, n_test=30)}
    for model in ("cnn-small", "lenet5"):
        out = base / "runs" / model
        train_main("DST", ["--sparse", *[a.replace("{data}", str(w["data"])).replace("{out}", str(out))
                                         for a in TRAIN], "--model", model])
        run = out / model / "fashionmnist" / "density_0.05" / "DST" / "seed=5"
        key = "dst" if model == "cnn-small" else "lenet"
        w[f"{key}_last"], w[f"{key}_ticket"] = run / "last.pth", run / "model.pth"
    files = base / "files"
    files.mkdir()
    ticket = ckpt.load_ticket(w["dst_ticket"])
    for name, make in {
        "dst_last.pth": lambda p: shutil.copy(w["dst_last"], p),
        "dst_ticket.pth": lambda p: shutil.copy(w["dst_ticket"], p),
        "lenet_last.pth": lambda p: shutil.copy(w["lenet_last"], p),
        "lenet_ticket.pth": lambda p: shutil.copy(w["lenet_ticket"], p),
        "lenet_state.pt": lambda p: torch.save(get_model("lenet5", 10, 1, 28).state_dict(), p),
        "ticket_100.pth": lambda p: ckpt.atomic_save({**ticket, "num_classes": 100}, p),
        "mnist_ticket.pth": lambda p: ckpt.atomic_save({**ticket, "dataset": "mnist"}, p),
        "nan_state.pt": lambda p: torch.save(_nan_state(), p),
        "garbage.pth": lambda p: p.write_bytes(b"this is not a checkpoint\n" * 10),
        "empty.pth": lambda p: p.write_bytes(b""),
        "trunc_last.pth": lambda p: p.write_bytes(w["dst_last"].read_bytes()[:4000]),
        "trunc_ticket.pth": lambda p: p.write_bytes(w["dst_ticket"].read_bytes()[:4000]),
    }.items():
        make(files / name)
        w[name.split(".")[0]] = files / name
    w["w"] = files
    if IMAGENET.exists():
        w["img"] = write_imagefolder(base / "imagenet")
    return w


@pytest.fixture(scope="module")
def results(world):
    """Run every case (two or more at a time), fingerprinting its folder and the shared inputs around it."""
    shared = [world["data"], world["w"], world["base"] / "runs", *([world["img"]] if "img" in world else [])]
    shared_before = tree_state(*shared)

    def run(case: Case) -> Case:
        box = world["base"] / "cases" / case.id
        box.mkdir(parents=True)
        if case.setup:
            case.setup(box, world)
        subs = {"{data}": str(world["data"]), "{out}": str(box / "out"), "{box}": str(box), "{w}": str(world["w"]),
                "{img}": str(world.get("img", ""))}
        argv = []
        for a in _argv(case):
            for k, v in subs.items():
                a = a.replace(k, v)
            argv.append(a)
        before = tree_state(box)
        r = forks.run(REPO / case.script, argv, cwd=box, streams=streams / case.id)
        case.result = {"code": r.returncode, "stderr": r.stderr, "stdout": r.stdout, "before": before,
                       "after": tree_state(box)}
        if case.id in REAL_PROCESS_IDS:  # the same case as a real `python SCRIPT ...`, from a fresh copy of its box
            shutil.rmtree(box)
            box.mkdir()
            if case.setup:
                case.setup(box, world)
            real = subprocess.run([sys.executable, str(REPO / case.script), *argv], cwd=box, capture_output=True,
                                  text=True, timeout=300)
            case.result["real"] = {"code": real.returncode, "stderr": real.stderr, "after": tree_state(box)}
        return case

    forks, streams = ScriptForks(), world["base"] / "streams"
    streams.mkdir()
    workers = max(2, min(4, os.cpu_count() or 2))
    with ThreadPoolExecutor(workers) as pool:
        done = {c.id: c for c in pool.map(run, CASES)}
    return {"cases": done, "shared_unchanged": tree_state(*shared) == shared_before}


# the first case of each script also runs as a real process (the forked runs must not differ from it)
REAL_PROCESS_IDS = {next(c.id for c in CASES if c.script == script) for script in {c.script for c in CASES}}


def test_table_is_large_enough():
    scripts = {c.script for c in CASES}
    assert len(CASES) >= 30
    assert {"main_individual.py", "main_DST.py", "main_EDST.py", "main_PF.py", "ensemble_freetickets.py"} <= scripts


@pytest.mark.slow
@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case_id, results):
    case = results["cases"][case_id]
    r = case.result
    line = assert_one_line_error(r["code"], r["stderr"], *case.needles)
    assert any(word in line for word in FIX_WORDS), f"the message says nothing about a fix: {line}"
    prog = case.script if case.script == "ImageNet/main.py" else Path(case.script).name
    assert line.startswith(f"{prog}: error: "), line
    assert r["after"] == r["before"], "files were written or changed"


@pytest.mark.slow
@pytest.mark.parametrize("case_id", sorted(REAL_PROCESS_IDS))
def test_forked_runs_are_what_a_real_process_does(case_id, results):
    """Same exit code, same stderr byte for byte (the same folder path), nothing written either way."""
    r = results["cases"][case_id].result
    assert (r["real"]["code"], r["real"]["stderr"]) == (r["code"], r["stderr"])
    assert r["real"]["after"] == r["after"] == r["before"]


@pytest.mark.slow
def test_shared_inputs_unchanged(results):
    assert results["shared_unchanged"]


def test_a_missing_data_dir_names_the_files_read_instead(tmp_path, capsys):
    """A --data-dir that does not exist: Debian's Fashion-MNIST stands in, and one note line names its files (the
    folder's own listing is the reference); data_files (what summary.json records) gives the same files."""
    from sparselearning.data import DEBIAN_FASHION_MNIST_DIR, load_split
    from sparselearning.data.sources import data_files

    debian = Path(DEBIAN_FASHION_MNIST_DIR)
    if not (debian / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    typo = tmp_path / "dtaa"
    images, labels = load_split("fashionmnist", "test", str(typo), download=False)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"note: the data folder {typo} does not exist; reading "
                                                   f"Fashion-MNIST from {debian}/"), lines
    named = re.search(r"/\{(.*)\} instead$", lines[0])
    assert named and sorted(named.group(1).split(",")) == sorted(os.listdir(debian))
    assert sorted(data_files("fashionmnist", str(typo))) == sorted(str((debian / n).resolve())
                                                                   for n in os.listdir(debian))
    assert images.shape[0] == labels.shape[0] == 10000 and not typo.exists()
