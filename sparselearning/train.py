"""The one training engine behind main_individual.py, main_DST.py, main_EDST.py and main_PF.py.

A run is: build data, model, optimizer and (if sparse) Masking; then for every epoch set the
LR from the script's schedule, train, validate, keep the best-validation epoch of the current
phase as a ticket, run EDST's re-exploration when a phase ends, and save an atomic resume
checkpoint plus summary.json. The pieces (train_one_epoch, evaluate_model, save/restore) are
also used by ImageNet/main.py.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models import get_model

from . import checkpoint as ckpt
from .cli import build_parser, validate
from .data import DatasetSpec, get_spec, make_loaders
from .errors import UsageError
from .core.flops import FlopsAccountant, dense_training_flops, profile_model
from .core.masking import Masking
from .core.schedules import EDSTSchedule, step_lr

# flags that may differ between an interrupted run and its --resume
RESUME_FREE_FLAGS = {"resume", "overwrite", "device", "no_cuda", "workers", "log_interval", "data_dir",
                     "output_dir", "no_progress", "amp"}


class NonFiniteLossError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------- small helpers
def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when supported, else fp16 (with a GradScaler); no-op on the CPU."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def _file_id(path: Path) -> tuple | None:
    """Identity of a file's current version (an atomic replace changes it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def fmt_density(d: float) -> str:
    return f"{round(d, 6):g}"


def run_dir_for(script: str, args: argparse.Namespace) -> Path:
    """One consistent layout under --output-dir that ensemble_freetickets.py --resume reads directly."""
    root = Path(args.output_dir) / args.model / args.data
    seed = f"seed={args.seed}"
    if script == "individual":
        return root / "individual" / (f"density_{fmt_density(args.density)}" if args.sparse else "dense") / seed
    if script == "DST":
        return root / f"density_{fmt_density(args.density)}" / ("static" if args.fix else "DST") / seed
    if script == "EDST":
        return root / f"density_{fmt_density(args.density)}" / "EDST" / f"M={args.model_num}" / seed
    return root / f"density_{fmt_density(1 - args.PF_rate)}" / "PF" / seed


class RunLock:
    """An exclusive lock on the run folder: two runs cannot write into one folder at once.

    Once held, it removes the hidden ``.<name>.*.tmp`` files that a killed writer (SIGKILL in the
    middle of an atomic save) left behind: no other process can be writing them.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.fh = None

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a")
        except OSError as err:
            raise UsageError(f"cannot write into the run folder {self.path.parent} ({err.strerror or err}); pass a "
                             f"writable --output-dir") from None
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise UsageError(f"another run is writing into {self.path.parent}; wait for it or use another "
                             f"--output-dir") from None
        for stale in (*self.path.parent.glob(".*.tmp"), *self.path.parent.glob("snapshots/.*.tmp")):
            stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


# ---------------------------------------------------------------------------------- one epoch
def train_one_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer,
                    masking: Masking | None, flops: FlopsAccountant | None, *, autocast=contextlib.nullcontext,
                    scaler=None, criterion: Callable = F.cross_entropy, before_step: Callable[[int], None] | None = None,
                    epoch: int = 0, progress: bool = True, desc: str = "train", total: int | None = None) -> dict:
    """Train over `batches`; returns mean loss/accuracy and the last batch (for dense gradients).

    masking.step() replaces optimizer.step() for sparse models; a non-finite loss stops the run.
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    seen = 0
    last = None
    bar = tqdm(batches, total=total, desc=desc, leave=False, disable=not progress, mininterval=1.0)
    for i, (x, y) in enumerate(bar):
        if before_step is not None:
            before_step(i)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = model(x)
            loss = criterion(out, y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"the loss became {loss.item()} at epoch {epoch}, step {i + 1}; the last "
                                     f"complete checkpoint and the saved tickets are intact - lower --lr")
        (scaler.scale(loss) if scaler is not None else loss).backward()
        step = (lambda: scaler.step(optimizer)) if scaler is not None else optimizer.step
        updated = masking.step(step) if masking is not None else (step() or False)
        if scaler is not None:
            scaler.update()
        if flops is not None:
            if updated:
                flops.add_step(x.shape[0], dense_grad=masking.growth_mode == "gradient")
                flops.set_densities(masking.layer_densities())
            else:
                flops.add_step(x.shape[0])
        loss_sum += loss.detach().double().cpu() * x.shape[0]
        correct += (out.detach().argmax(1) == y).sum().cpu()
        seen += x.shape[0]
        last = (x, y)
    bar.close()
    return {"loss": float(loss_sum) / max(seen, 1), "acc": float(correct) / max(seen, 1), "last_batch": last}


@torch.no_grad()
def evaluate_model(model: nn.Module, batches: Iterable, *, autocast=contextlib.nullcontext,
                   criterion: Callable = F.cross_entropy) -> dict:
    """Mean loss and top-1 accuracy over `batches` (sums, so the last partial batch counts fully)."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in batches:
        with autocast():
            out = model(x)
        loss_sum += float(criterion(out.float(), y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        seen += x.shape[0]
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1)}


def dense_gradients(model: nn.Module, batch, *, autocast=contextlib.nullcontext, criterion=F.cross_entropy) -> None:
    """Fill every .grad with the dense gradient of one batch (for gradient growth at re-exploration)."""
    model.train()
    model.zero_grad(set_to_none=True)
    x, y = batch
    with autocast():
        loss = criterion(model(x), y)
    loss.backward()


# ---------------------------------------------------------------------------------- the run
class Run:
    """State and steps of one training run (built from parsed flags)."""

    def __init__(self, script: str, args: argparse.Namespace):
        self.script, self.args = script, args
        self.run_dir = run_dir_for(script, args)
        self.device = pick_device(args.device)
        self.progress = not args.no_progress
        self.spec: DatasetSpec = get_spec(args.data)
        self.total_epochs = args.epochs * args.multiplier
        self.edst = (EDSTSchedule(self.total_epochs, args.epochs_explo * args.multiplier, args.model_num)
                     if script == "EDST" else None)
        self.flags = {k: v for k, v in vars(args).items()}

    # -- schedule
    def lr_for(self, epoch: int) -> float:
        if self.edst is not None:
            return self.edst.lr(epoch, self.args.lr)
        if self.args.nolrsche:
            return self.args.lr
        return step_lr(epoch, self.total_epochs, self.args.lr)

    def phase_of(self, epoch: int) -> int:
        """Ticket index selected at this epoch (-1: EDST exploration, no ticket)."""
        return self.edst.phase(epoch) if self.edst is not None else 0

    def ticket_name(self, phase: int) -> str:
        return f"model_{phase}.pth" if self.edst is not None else "model.pth"

    @property
    def kind(self) -> str:
        if self.script == "individual":
            return "sparse" if self.args.sparse else "dense"
        if self.script == "DST" and self.args.fix:
            return "static"
        return self.script

    # -- building
    def check_output_folder(self) -> Path | None:
        """Refuse to overwrite another run; return the checkpoint to resume from, if any.

        Nothing is written here; a checkpoint to resume from is loaded and checked now (kept for
        restore), so a bad one fails before the run folder is touched.
        """
        args, last = self.args, self.run_dir / "last.pth"
        for folder in (self.run_dir, *self.run_dir.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise UsageError(f"cannot create the run folder {self.run_dir}: {folder} is a file; pass "
                                     f"another --output-dir")
                break
        if isinstance(args.resume, str):
            path = Path(args.resume)
            if not path.is_file():
                raise UsageError(f"--resume {path}: no such checkpoint; give the run's last.pth or plain --resume")
        elif args.resume:
            if not last.is_file():
                print(f"note: nothing to resume in {self.run_dir}; starting a new run")
                return None
            path = last
        else:
            existing = [p.name for p in (last, self.run_dir / "summary.json") if p.exists()]
            if existing and not args.overwrite:
                raise UsageError(f"{self.run_dir} already holds a run ({', '.join(existing)}); continue it with "
                                 f"--resume, replace it with --overwrite, or choose another --output-dir/--seed")
            return None
        self._resume_cache = (path, _file_id(path), self.load_resume(path))
        return path

    def build(self) -> None:
        args = self.args
        gen = torch.Generator().manual_seed(args.seed)
        self.loader_generator = gen
        self.train_loader, self.val_loader, self.test_loader, _ = make_loaders(
            args.data, args.data_dir, args.batch_size, args.test_batch_size, args.valid_split, self.device, gen)
        torch.manual_seed(args.seed)
        self.model = get_model(args.model, num_classes=self.spec.num_classes, in_channels=self.spec.in_channels,
                               image_size=self.spec.image_size).to(self.device)
        if self.script == "PF":
            self.load_pretrained(args.pretrained)
        if args.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=args.momentum,
                                             weight_decay=args.l2, nesterov=False)
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr, weight_decay=args.l2)
        self.masking = None
        if args.sparse or self.script in ("DST", "EDST", "PF"):
            fixed = args.fix or self.script == "PF"
            self.masking = Masking(self.optimizer, death_rate=args.death_rate, death_mode=args.death,
                                   growth_mode=args.growth, redistribution_mode=args.redistribution,
                                   death_rate_schedule=args.decay_schedule,
                                   total_steps=len(self.train_loader) * self.total_epochs,
                                   final_death_rate=args.final_death_rate,
                                   update_frequency=None if fixed else args.update_frequency,
                                   threshold=args.death_threshold, momentum_beta=args.momentum, seed=args.seed)
            if self.script == "PF":
                self.masking.add_module(self.model, sparse_init="pruning", pf_rate=args.PF_rate)
            else:
                self.masking.add_module(self.model, density=args.density, sparse_init=args.sparse_init,
                                        erk_power_scale=args.erk_power_scale)
        shape = (self.spec.in_channels, self.spec.image_size, self.spec.image_size)
        self.profile = profile_model(self.model, shape, list(self.masking.masks) if self.masking else None)
        self.flops = FlopsAccountant(self.profile, self.masking.layer_densities() if self.masking else {})
        self.autocast, self.scaler = autocast_context(self.device, args.amp)
        if args.amp and self.device.type != "cuda":
            print("note: --amp applies on CUDA only; training in float32 on the CPU")
        self.epoch = 0
        self.best: dict[int, float] = {}
        self.tickets: dict[int, dict] = {}
        self.history: list[dict] = []
        self.elapsed = 0.0

    def load_pretrained(self, path: str) -> None:
        """PF: a dense checkpoint, loaded strictly (the original's strict=False could load nothing)."""
        obj = ckpt.safe_load(path)
        if ckpt.is_ticket(obj):
            if obj["model"] != self.args.model or obj["num_classes"] != self.spec.num_classes:
                raise UsageError(f"--pretrained {path} is a {obj['model']} with {obj['num_classes']} classes, not a "
                                 f"{self.args.model} for {self.args.data}; pass the matching dense checkpoint")
            if obj["sparse_state"]:
                print(f"note: --pretrained {path} is already sparse; pruning it further")
            state = ckpt.ticket_state_dict(obj)
        elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            state = obj["state_dict"]
        elif isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
            state = obj
        else:
            raise UsageError(f"--pretrained {path} holds no model weights; pass a dense checkpoint from "
                             f"main_individual.py")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise UsageError(f"--pretrained {path} does not fit {self.args.model} "
                             f"({str(err).splitlines()[0][:100]}); pass a checkpoint of the same architecture") from None

    # -- persistence
    def fingerprint(self) -> dict:
        return {k: v for k, v in self.flags.items() if k not in RESUME_FREE_FLAGS}

    def resume_state(self) -> dict:
        return {
            "format": ckpt.RESUME_FORMAT, "script": self.script, "flags": self.fingerprint(), "epoch": self.epoch,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "masking": self.masking.state_dict() if self.masking else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": {"torch": torch.get_rng_state(), "loader": self.loader_generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "best": {str(k): v for k, v in self.best.items()},
            "tickets": {str(k): v for k, v in self.tickets.items()},
            "history": self.history, "flops": self.flops.state_dict(), "elapsed": self.elapsed,
        }

    def load_resume(self, path: Path) -> dict:
        """A resume checkpoint, loaded safely and checked to come from this script with these flags."""
        state = ckpt.safe_load(path, map_location="cpu")
        if not isinstance(state, dict) or state.get("format") != ckpt.RESUME_FORMAT:
            raise UsageError(f"{path} is not a resume checkpoint of these scripts; pass the run's last.pth")
        flags = state.get("flags") if isinstance(state.get("flags"), dict) else {}
        if state.get("script") != self.script or flags != self.fingerprint():
            diff = sorted(k for k in set(flags) | set(self.fingerprint()) if flags.get(k) != self.fingerprint().get(k))
            raise UsageError(f"{path} was written by a run with other settings (differs in: "
                             f"{', '.join(diff) or 'script'}); resume with the same flags or start over with "
                             f"--overwrite")
        return state

    def restore(self, path: Path) -> None:
        cached, self._resume_cache = getattr(self, "_resume_cache", None), None
        if cached is not None and cached[0] == path and cached[1] == _file_id(path):
            state = cached[2]  # checked by check_output_folder, and the file is unchanged since
        else:
            state = self.load_resume(path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.masking:
                self.masking.load_state_dict(state["masking"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise UsageError(f"{path} does not match this model ({str(err).splitlines()[0][:100]}); "
                             f"use --overwrite to start over") from None
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.loader_generator.set_state(state["rng"]["loader"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch = int(state["epoch"])
        self.best = {int(k): v for k, v in state["best"].items()}
        self.tickets = {int(k): v for k, v in state["tickets"].items()}
        self.history = list(state["history"])
        self.flops.load_state_dict(state["flops"])
        self.elapsed = float(state["elapsed"])
        print(f"resumed {self.run_dir} after epoch {self.epoch}")

    def ticket_meta(self, phase: int, val: dict, role: str = "ticket") -> dict:
        return {
            "model": self.args.model, "num_classes": self.spec.num_classes, "in_channels": self.spec.in_channels,
            "image_size": self.spec.image_size, "dataset": self.args.data,
            "normalization": {"mean": list(self.spec.mean), "std": list(self.spec.std)},
            "args": {k: v for k, v in self.flags.items() if isinstance(v, (str, int, float, bool, type(None)))},
            "kind": self.kind, "seed": self.args.seed, "epoch": self.epoch, "ticket_index": phase, "role": role,
            "val_acc": val.get("acc"), "val_loss": val.get("loss"),
            "density": self.masking.density() if self.masking else 1.0,
        }

    def save_ticket(self, phase: int, val: dict) -> None:
        name = self.ticket_name(phase)
        ticket = ckpt.build_ticket(self.model, self.masking.masks if self.masking else None,
                                   self.ticket_meta(phase, val))
        ckpt.atomic_save(ticket, self.run_dir / name)
        self.tickets[phase] = {"file": name, "ticket_index": phase, "epoch": self.epoch, "val_acc": val.get("acc"),
                               "val_loss": val.get("loss"),
                               "active_weights": self.masking.num_active() if self.masking else self.num_params(),
                               "density": self.masking.density() if self.masking else 1.0}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def summary(self, status: str) -> dict:
        dense_ref = dense_training_flops(self.profile, self.train_loader.num_samples)
        n_all = self.num_params()
        n_sparse_total = self.masking.num_total() if self.masking else 0
        active = (n_all - n_sparse_total + self.masking.num_active()) if self.masking else n_all
        return {
            "script": f"main_{self.script}.py", "kind": self.kind, "status": status, "flags": self.flags,
            "run_dir": str(self.run_dir), "device": str(self.device), "epochs_done": self.epoch,
            "epochs_total": self.total_epochs,
            "schedule": ({"reexplore_after": list(self.edst.reexplore_epochs),
                          "lr_drop_after": list(self.edst.lr_drop_epochs),
                          "phase_length": self.edst.phase_length} if self.edst else None),
            "parameters": {"total": n_all, "active": active, "density": active / n_all},
            "training_flops": self.flops.total,
            "training_flops_relative_to_dense_250_epochs": self.flops.total / dense_ref,
            "dense_forward_flops_per_sample": self.profile.dense,
            "sparse_forward_flops_per_sample": self.profile.sparse(self.flops.densities),
            "tickets": [self.tickets[k] for k in sorted(self.tickets)],
            "history": self.history, "elapsed_seconds": self.elapsed,
        }

    def write_summary(self, status: str) -> None:
        ckpt.atomic_write_text(json.dumps(self.summary(status), indent=1, default=str), self.run_dir / "summary.json")

    def log(self, line: str) -> None:
        print(line, flush=True)
        with open(self.run_dir / "train.log", "a") as fh:
            fh.write(line + "\n")

    # -- the loop
    def end_of_epoch(self, epoch: int, train_stats: dict) -> None:
        """Validation, ticket selection, EDST re-exploration, checkpoints."""
        val = evaluate_model(self.model, self.val_loader, autocast=self.autocast) if self.val_loader else {}
        phase = self.phase_of(epoch)
        if self.edst is not None and self.edst.phase_starts(epoch):
            self.best.pop(phase, None)  # the best is reset at the start of every refinement phase
        if phase >= 0:
            score = val.get("acc", float(epoch))  # no validation split: keep the latest epoch
            if score > self.best.get(phase, -math.inf):
                self.best[phase] = score
                self.save_ticket(phase, val)
        event = ""
        if self.edst is not None and self.edst.reexplore_after(epoch) and self.masking and not self.args.fix:
            dense_gradients(self.model, train_stats["last_batch"], autocast=self.autocast)
            removed = self.masking.truncate_weights(self.args.large_death_rate)
            self.flops.total += self.flops.profile.dense * train_stats["last_batch"][0].shape[0]  # dense gradient batch
            self.flops.set_densities(self.masking.layer_densities())
            event = f" | re-exploration q={self.args.large_death_rate}: {sum(removed.values())} weights replaced"
        row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_stats["loss"],
               "train_acc": train_stats["acc"], "val_loss": val.get("loss"), "val_acc": val.get("acc"),
               "phase": phase, "density": self.masking.density() if self.masking else 1.0,
               "exploration_rate": self.masking.exploration_rate() if self.masking else None,
               "training_flops": self.flops.total}
        self.history.append(row)
        if self.args.save_every and epoch % self.args.save_every == 0:
            snap = ckpt.build_ticket(self.model, self.masking.masks if self.masking else None,
                                     self.ticket_meta(phase, val, role="snapshot"))
            ckpt.atomic_save(snap, self.run_dir / "snapshots" / f"epoch_{epoch}.pth")
        val_txt = f"val loss {val['loss']:.4f} acc {val['acc']:.4f}" if val else "no validation split"
        extra = f" density {row['density']:.4f} explored {row['exploration_rate']:.4f}" if self.masking else ""
        self.log(f"epoch {epoch}/{self.total_epochs} lr {row['lr']:.4g} | train loss {train_stats['loss']:.4f} "
                 f"acc {train_stats['acc']:.4f} | {val_txt} |{extra} {event}".rstrip())

    def train(self) -> dict:
        while self.epoch < self.total_epochs:
            epoch = self.epoch + 1
            lr = self.lr_for(epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            start = time.time()
            stats = train_one_epoch(self.model, self.train_loader, self.optimizer, self.masking, self.flops,
                                    autocast=self.autocast, scaler=self.scaler, epoch=epoch, progress=self.progress,
                                    desc=f"epoch {epoch}/{self.total_epochs}", total=len(self.train_loader))
            self.epoch = epoch
            self.end_of_epoch(epoch, stats)
            self.elapsed += time.time() - start
            ckpt.atomic_save(self.resume_state(), self.run_dir / "last.pth")
            self.write_summary("running")
        return self.finish()

    def finish(self) -> dict:
        self.write_summary("finished")
        s = self.summary("finished")
        self.log(f"done: {len(self.tickets)} ticket(s) in {self.run_dir}; training FLOPs "
                 f"{s['training_flops']:.3e} = {s['training_flops_relative_to_dense_250_epochs']:.3f}x one dense "
                 f"model trained 250 epochs")
        return s


def main(script: str, argv: list[str] | None = None) -> dict:
    """Parse flags, check them, and run; the only thing the four entry scripts call."""
    args = build_parser(script).parse_args(argv)
    validate(script, args)
    run = Run(script, args)
    resume_from = run.check_output_folder()  # errors out before anything is written
    run.build()  # loads data and the pretrained model: bad input fails here, before the run folder exists
    with RunLock(run.run_dir):
        if resume_from is not None:
            run.restore(resume_from)
        elif args.overwrite:
            for old in [*run.run_dir.glob("model*.pth"), *run.run_dir.glob("snapshots/*.pth"),
                        *(run.run_dir / n for n in ("last.pth", "summary.json", "train.log"))]:
                old.unlink(missing_ok=True)
        defaults = vars(build_parser(script).parse_args([]))
        changed = " ".join(f"--{k}={v}" for k, v in sorted(run.fingerprint().items()) if defaults.get(k) != v)
        run.log(f"main_{script}.py started {datetime.datetime.now().isoformat(timespec='seconds')} on {run.device}: "
                f"{changed} (all flags in summary.json)")
        return train_reporting_errors(run)


def train_reporting_errors(run: Run) -> dict:
    """run.train(), with a non-finite loss or a failed write turned into a one-line error."""
    try:
        return run.train()
    except NonFiniteLossError as err:
        run.write_summary("failed: non-finite loss")
        raise UsageError(str(err)) from None
    except OSError as err:  # e.g. train.log on a full disk (checkpoints raise ckpt.WriteError themselves)
        raise UsageError(f"could not write {err.filename or run.run_dir} ({err.strerror or err}); the last "
                         f"complete checkpoint is intact - free disk space, then add --resume") from None
