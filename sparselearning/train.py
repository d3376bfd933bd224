"""The one training engine behind main_individual.py, main_DST.py, main_EDST.py, main_PF.py and ImageNet/main.py.

A run is one ``Run`` configured by a ``RunPlan``: the parts that differ between the scripts (the
schedule, the data source, the model, the optimizer's parameter groups, the criterion, the metrics
kept per epoch, the process's place among data-parallel ranks) are handed to it, nothing is
overridden. ``start_run`` locks the run folder, checks it, builds data, model, optimizer and (if
sparse) Masking; then for every epoch the Run sets the LR from the schedule, trains, validates,
keeps the best-validation epoch of the current phase as a ticket, runs EDST's re-exploration when
a phase ends, and saves an atomic resume checkpoint plus summary.json (rank 0 alone writes).
The engine knows no command line: sparselearning.recipes builds the CIFAR scripts' plans from their
flags, ImageNet/main.py its own.
"""
from __future__ import annotations

import datetime
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from .core.distributed import World, mask_sync_hook
from .core.flops import FlopsAccountant, FlopsProfile, dense_training_flops, profile_model
from .core.masking import Masking, MaskingConfig
from .core.schedules import Schedule
from .data import DatasetSpec
from .errors import MaskDesyncError, UsageError
from .loop import NonFiniteLossError, autocast_context, dense_gradients, evaluate_model, train_one_epoch
from .provenance import provenance
from .run_outputs import (CURVES_PNG, METRICS_CSV, TENSORBOARD_DIR, LogLines, TensorBoardLog, curves_title,
                          density_label, plot_curves, topology_update_plan, write_metrics_csv)
from .runfolder import RunLock, check_resume_source, file_id, holds_a_run, missing_listed_files

# flags that may differ between an interrupted run and its --resume
RESUME_FREE_FLAGS = frozenset({"resume", "overwrite", "device", "no_cuda", "workers", "log_interval", "data_dir",
                               "output_dir", "no_progress", "amp", "tensorboard", "no_tf32", "channels_last",
                               "compile", "no_fused_step"})


# ---------------------------------------------------------------------------------- the parts of a run
@dataclass
class DataSource:
    """Training and validation batches (each with len(); train also with num_samples, over all ranks)."""

    spec: DatasetSpec
    train: Any
    val: Any | None
    generator: torch.Generator | None = None  # the training order's RNG, saved for --resume
    start_epoch: Callable[[int], None] | None = None  # reseeds the data order of an epoch (instead of generator)
    counts: tuple[int, ...] = ()  # what every rank must see the same of (images, classes)
    ticket_meta: dict = field(default_factory=dict)  # extra ticket fields (e.g. class names)
    summary: dict | None = None  # summary.json's "dataset" block


@dataclass(frozen=True)
class SparsePlan:
    """How a sparse run's masks start and change."""

    init: dict  # Masking.add_module arguments (density and allocation, or PF's pruning rate)
    masking: MaskingConfig  # masking.update_frequency None: a fixed mask (no updates, no re-exploration)
    stop_updates_frac: float = 0.0  # no periodic updates in this last fraction of every ticket phase
    reexplore_rate: float = 0.8  # q: EDST's re-exploration between phases

    @property
    def fixed_mask(self) -> bool:
        return self.masking.update_frequency is None


@dataclass
class RunPlan:
    """Everything that differs between runs, handed to the one Run."""

    program: str  # "main_DST.py", "ImageNet/main.py": in the log and summary.json
    script: str  # the resume checkpoint's "script" (a run resumes only its own script's checkpoints)
    kind: str  # dense | sparse | static | DST | EDST | PF
    dataset: str
    model_name: str  # the models registry name, in tickets
    run_dir: Path
    schedule: Schedule
    device: torch.device
    data: Callable[[], DataSource]
    model: Callable[[DatasetSpec], nn.Module]
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    sparse: SparsePlan | None  # None: dense
    seed: int  # model init and masks (the data order is the data source's)
    batch_size: int  # per process
    flags: dict  # the command line's flags: the resume fingerprint, summary.json and the tickets' "args"
    resume: bool | str | None = None  # True: the run folder's last.pth; a path: that checkpoint
    overwrite: bool = False  # replace the run in the folder
    amp: bool = False
    tensorboard: bool = False
    save_every: int = 0  # epochs between snapshots (0: none)
    numbered_tickets: bool = False  # model_<k>.pth, else model.pth
    criterion: Callable = F.cross_entropy
    topk: tuple[int, ...] = (1,)  # accuracies kept per epoch
    prepare_model: Callable[[nn.Module, DatasetSpec], None] | None = None  # e.g. PF's pretrained weights
    world: World = World()
    wrap_model: Callable[[nn.Module], nn.Module] | None = None  # e.g. DistributedDataParallel
    progress: bool = True
    log_every: int = 0  # iterations between training-loss lines in train.log (0: none)
    resume_free: frozenset = RESUME_FREE_FLAGS
    flag_defaults: dict = field(default_factory=dict)  # the parser's defaults (a new flag at its default is no change)
    fresh_resume_note: str | None = None  # what --resume says when there is no checkpoint yet
    start_note: str = ""
    ticket_meta: dict = field(default_factory=dict)


@dataclass
class Built:
    """The parts of a run that ``Run.build`` makes: data, model, optimizer, masks, FLOPs counting, precision."""

    data: DataSource
    model: nn.Module
    optimizer: torch.optim.Optimizer
    masking: Masking | None
    profile: FlopsProfile
    flops: FlopsAccountant
    autocast: Callable
    scaler: torch.amp.GradScaler | None
    loader_generator: torch.Generator  # the training order's RNG, saved for --resume
    net: nn.Module  # what trains: the model, or its DistributedDataParallel/compiled wrapper (Run.connect)
    update_plan: list[dict] | None = None  # sparse runs: the periodic topology updates each phase will make

    @property
    def train_loader(self):
        return self.data.train

    @property
    def val_loader(self):
        return self.data.val

    @property
    def spec(self) -> DatasetSpec:
        return self.data.spec


class Run:
    """State and steps of one training run, configured by a RunPlan."""

    def __init__(self, plan: RunPlan):
        self.plan = plan
        self.run_dir, self.world, self.schedule, self.device = plan.run_dir, plan.world, plan.schedule, plan.device
        self.total_epochs = plan.schedule.epochs
        self.flags = dict(plan.flags)
        self.kind = plan.kind
        self.parts: Built | None = None  # build()
        self.epoch = 0
        self.best: dict[int, float] = {}  # per ticket phase: the best validation score so far
        self.tickets: dict[int, dict] = {}
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.writing = False  # rank 0, once start_run holds the run folder
        self.provenance: dict | None = None  # command, versions, device, git commit, host (summary.json)
        self.tensorboard: TensorBoardLog | None = None
        self._resume_cache = None

    def ticket_name(self, phase: int) -> str:
        return f"model_{phase}.pth" if self.plan.numbered_tickets else "model.pth"

    # -- building
    def check_output_folder(self) -> Path | None:
        """Refuse to overwrite another run; return the checkpoint to resume from, if any.

        A checkpoint to resume from is loaded and checked now (kept for restore), so a bad one
        fails before anything is built.
        """
        resume, last = self.plan.resume, self.run_dir / "last.pth"
        if isinstance(resume, str):
            path = Path(resume)
            ckpt.refuse_special_file(path, "--resume")
            if not path.is_file():
                raise UsageError(f"--resume {path}: no such checkpoint; give the run's last.pth or plain --resume")
        elif resume:
            ckpt.refuse_special_file(last, "the run's checkpoint")
            if not last.is_file():
                self.note(self.plan.fresh_resume_note or f"note: nothing to resume in {self.run_dir}; starting a "
                                                         f"new run")
                return None
            path = last
        else:
            existing = holds_a_run(self.run_dir)
            if existing and not self.plan.overwrite:
                raise UsageError(f"{self.run_dir} already holds a run ({', '.join(existing)}); continue it with "
                                 f"--resume, replace it with --overwrite, or choose another --output-dir/--seed")
            return None
        self._resume_cache = (path, file_id(path), self.load_resume(path))
        if isinstance(resume, str):
            check_resume_source(path, self.run_dir)
        return path

    def build(self) -> Built:
        """Data, model (seeded), optimizer, masks, FLOPs profile, precision: held in ``self.parts``."""
        plan = self.plan
        data = plan.data()
        torch.manual_seed(plan.seed)
        model = plan.model(data.spec).to(self.device)
        if plan.prepare_model is not None:
            plan.prepare_model(model, data.spec)
        optimizer = plan.optimizer(model)
        masking, update_plan = None, None
        if plan.sparse is not None:
            masking = self.make_masking(optimizer, plan.sparse, len(data.train))
            masking.add_module(model, **plan.sparse.init)
            update_plan = topology_update_plan(self.schedule, masking.update_frequency, len(data.train),
                                                    masking.no_update_windows)
        shape = (data.spec.in_channels, data.spec.image_size, data.spec.image_size)
        profile = profile_model(model, shape, list(masking.masks) if masking else None)
        flops = FlopsAccountant(profile, masking.layer_densities() if masking else {}, self.world.size)
        autocast, scaler = autocast_context(self.device, plan.amp)
        if plan.amp and self.device.type != "cuda":
            self.note("note: --amp applies on CUDA only; training in float32 on the CPU")
        self.parts = Built(data=data, model=model, optimizer=optimizer, masking=masking, profile=profile,
                           flops=flops, autocast=autocast, scaler=scaler,
                           loader_generator=data.generator or torch.Generator(), net=model, update_plan=update_plan)
        return self.parts

    def make_masking(self, optimizer: torch.optim.Optimizer, sparse: SparsePlan, steps_per_epoch: int) -> Masking:
        """The run's Masking: its flags' settings plus the schedule's steps (length, phase restarts, quiet ends)."""
        return Masking(optimizer, **sparse.masking.kwargs(), total_steps=steps_per_epoch * self.total_epochs,
                       death_rate_restarts=self.schedule.death_rate_restarts(steps_per_epoch),
                       no_update_windows=self.schedule.update_free_windows(steps_per_epoch, sparse.stop_updates_frac))

    def connect(self) -> None:
        """Join the data-parallel ranks (plan.wrap_model), check they agree, then rank 0's masks everywhere,
        checked by an all-reduced checksum now and after every topology update."""
        if self.plan.wrap_model is not None:
            self.parts.net = self.plan.wrap_model(self.parts.model)
        if self.world.size == 1:
            return
        mine = [self.epoch, self.parts.masking.steps if self.parts.masking else 0, *self.parts.data.counts]
        if not self.world.agree(mine):
            raise UsageError(f"the processes disagree on (epoch, step, train images, classes, val images): rank "
                             f"{self.world.rank} has {mine}; every node must see the same data root and, for "
                             f"--resume, the same run folder (a shared filesystem)")
        if self.parts.masking is not None:
            self.parts.masking.broadcast_masks(src=0)
            check = mask_sync_hook(lambda event, checksum: self.log(
                f"{event}: masks identical on {self.world.size} rank(s), checksum {checksum}, density "
                f"{self.parts.masking.density():.4f}"))
            check(self.parts.masking, "initial masks")
            self.parts.masking.add_update_hook(check)

    # -- persistence
    def fingerprint(self) -> dict:
        return {k: v for k, v in self.flags.items() if k not in self.plan.resume_free}

    def fingerprint_differences(self, saved: dict) -> list[str]:
        """Flags that differ from the checkpoint's; one newer than the checkpoint counts only off its default."""
        mine, defaults = self.fingerprint(), self.plan.flag_defaults

        def differs(k: str) -> bool:
            if k in saved:
                return saved[k] != mine[k]
            return k not in defaults or defaults[k] != mine[k]

        return sorted(k for k in mine if differs(k))

    def resume_state(self) -> dict:
        return {
            "format": ckpt.RESUME_FORMAT, "script": self.plan.script, "flags": self.fingerprint(), "epoch": self.epoch,
            "model": self.parts.model.state_dict(), "optimizer": self.parts.optimizer.state_dict(),
            "masking": self.parts.masking.state_dict() if self.parts.masking else None,
            "scaler": self.parts.scaler.state_dict() if self.parts.scaler else None,
            "rng": {"torch": torch.get_rng_state(), "loader": self.parts.loader_generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "best": {str(k): v for k, v in self.best.items()},
            "tickets": {str(k): v for k, v in self.tickets.items()},
            "history": self.history, "flops": self.parts.flops.state_dict(), "elapsed": self.elapsed,
        }

    def load_resume(self, path: Path) -> dict:
        """A resume checkpoint, loaded safely and checked to come from this script with these flags."""
        state = ckpt.safe_load(path, map_location="cpu")
        if not isinstance(state, dict) or state.get("format") != ckpt.RESUME_FORMAT:
            raise UsageError(f"{path} is not a resume checkpoint of these scripts; pass the run's last.pth")
        ckpt.check_resume_state(state, path)
        flags = state.get("flags") if isinstance(state.get("flags"), dict) else {}
        diff = self.fingerprint_differences(flags)
        if state.get("script") != self.plan.script or diff:
            raise UsageError(f"{path} was written by a run with other settings (differs in: "
                             f"{', '.join(diff) or 'script'}); resume with the same flags or start over with "
                             f"--overwrite")
        return state

    def restore(self, path: Path) -> None:
        cached, self._resume_cache = self._resume_cache, None
        if cached is not None and cached[0] == path and cached[1] == file_id(path):
            state = cached[2]  # checked by check_output_folder, and the file is unchanged since
        else:
            state = self.load_resume(path)
        try:
            self.parts.model.load_state_dict(state["model"])
            self.parts.optimizer.load_state_dict(state["optimizer"])
            if self.parts.masking:
                self.parts.masking.load_state_dict(state["masking"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise UsageError(f"{path} was {ckpt.DAMAGED_RESUME} ({str(err).splitlines()[0][:100]})") from None
        if self.parts.scaler and state["scaler"]:
            self.parts.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.parts.loader_generator.set_state(state["rng"]["loader"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch = int(state["epoch"])
        self.best = {int(k): v for k, v in state["best"].items()}
        self.tickets = {int(k): v for k, v in state["tickets"].items()}
        self.history = list(state["history"])
        self.parts.flops.load_state_dict(state["flops"])
        self.elapsed = float(state["elapsed"])
        self.note(f"resumed {self.run_dir} after epoch {self.epoch}")

    def remove_old_run(self) -> None:
        """--overwrite: the previous run's files go before the new run writes any."""
        for old in [*self.run_dir.glob("model*.pth"), *self.run_dir.glob("snapshots/*.pth"),
                    *self.run_dir.glob(f"{TENSORBOARD_DIR}/events.out.tfevents.*"),
                    *(self.run_dir / n for n in ("last.pth", "summary.json", "train.log", METRICS_CSV, CURVES_PNG))]:
            old.unlink(missing_ok=True)

    def ticket_meta(self, phase: int, val: dict, role: str = "ticket") -> dict:
        spec = self.parts.spec
        return {
            "model": self.plan.model_name, "num_classes": spec.num_classes, "in_channels": spec.in_channels,
            "image_size": spec.image_size, "dataset": self.plan.dataset,
            "normalization": {"mean": list(spec.mean), "std": list(spec.std)},
            "args": {k: v for k, v in self.flags.items() if isinstance(v, (str, int, float, bool, type(None)))},
            "kind": self.kind, "seed": self.plan.seed, "epoch": self.epoch, "ticket_index": phase, "role": role,
            "val_acc": val.get("acc"), "val_loss": val.get("loss"), **self._topk(val),
            "density": self.parts.masking.density() if self.parts.masking else 1.0,
            **self.parts.data.ticket_meta, **self.plan.ticket_meta,
        }

    def _topk(self, val: dict) -> dict:
        return {f"val_top{k}": val.get(f"top{k}") for k in self.plan.topk if k != 1}

    def save_ticket(self, phase: int, val: dict) -> None:
        name, masking = self.ticket_name(phase), self.parts.masking
        if self.writing:
            ticket = ckpt.build_ticket(self.parts.model, masking.masks if masking else None,
                                       self.ticket_meta(phase, val))
            ckpt.atomic_save(ticket, self.run_dir / name)
        self.tickets[phase] = {"file": name, "ticket_index": phase, "epoch": self.epoch, "val_acc": val.get("acc"),
                               "val_loss": val.get("loss"),
                               "active_weights": masking.num_active() if masking else self.num_params(),
                               "density": masking.density() if masking else 1.0, **self._topk(val)}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parts.model.parameters())

    def summary(self, status: str) -> dict:
        dense_ref = dense_training_flops(self.parts.profile, self.parts.train_loader.num_samples)
        same_epochs = dense_training_flops(self.parts.profile, self.parts.train_loader.num_samples, self.total_epochs)
        n_all = self.num_params()
        n_sparse_total = self.parts.masking.num_total() if self.parts.masking else 0
        active = (n_all - n_sparse_total + self.parts.masking.num_active()) if self.parts.masking else n_all
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
        return {
            "script": self.plan.program, "kind": self.kind, "status": status, "flags": self.flags,
            "run_dir": str(self.run_dir), "device": str(self.device), "provenance": self.provenance,
            "epochs_done": self.epoch,
            "epochs_total": self.total_epochs, "schedule": self.schedule.describe(),
            "parameters": {"total": n_all, "active": active, "density": active / n_all},
            "training_flops": self.parts.flops.total,
            "training_flops_relative_to_dense_250_epochs": self.parts.flops.total / dense_ref,
            "training_flops_relative_to_dense_same_epochs": self.parts.flops.total / same_epochs,
            "dense_forward_flops_per_sample": self.parts.profile.dense,
            "sparse_forward_flops_per_sample": self.parts.profile.sparse(self.parts.flops.densities),
            "distributed": {"world_size": self.world.size, "backend": backend,
                            "batch_size_per_process": self.plan.batch_size,
                            "global_batch_size": self.plan.batch_size * self.world.size},
            **({"dataset": self.parts.data.summary} if self.parts.data.summary else {}),
            "tickets": [self.tickets[k] for k in sorted(self.tickets)],
            **({"topology_updates": {"done": self.parts.masking.num_updates,
                                     "planned_per_phase": self.parts.update_plan}} if self.parts.masking else {}),
            "history": self.history, "elapsed_seconds": self.elapsed,
        }

    def write_summary(self, status: str) -> None:
        if self.writing:
            ckpt.atomic_write_text(json.dumps(self.summary(status), indent=1, default=str),
                                   self.run_dir / "summary.json")

    def note(self, line: str) -> None:
        """A message on rank 0's stdout."""
        if self.world.is_main:
            print(line, flush=True)

    def log(self, line: str) -> None:
        """A message on rank 0's stdout and in train.log."""
        self.note(line)
        if self.writing:
            with open(self.run_dir / "train.log", "a") as fh:
                fh.write(line + "\n")

    # -- the loop
    def train(self) -> dict:
        while self.epoch < self.total_epochs:
            epoch = self.epoch + 1
            lr = self.schedule.lr(epoch)
            for group in self.parts.optimizer.param_groups:
                group["lr"] = lr
            if self.parts.data.start_epoch is not None:
                self.parts.data.start_epoch(epoch)
            p = self.parts
            start, updates_before = time.time(), p.masking.num_updates if p.masking else 0
            stats = train_one_epoch(p.net, p.train_loader, p.optimizer, p.masking, p.flops,
                                    autocast=p.autocast, scaler=p.scaler, criterion=self.plan.criterion,
                                    **self.step_hooks(epoch, lr), epoch=epoch, progress=self.plan.progress,
                                    desc=f"epoch {epoch}/{self.total_epochs}", total=len(self.parts.train_loader))
            updates = p.masking.num_updates - updates_before if p.masking else None  # periodic ones
            self.epoch = epoch
            self.end_of_epoch(epoch, stats)
            self.elapsed += time.time() - start
            self.history[-1].update(topology_updates=updates, epoch_seconds=time.time() - start)
            if self.writing:
                ckpt.atomic_save(self.resume_state(), self.run_dir / "last.pth")
            self.write_summary("running")
            if self.writing:
                write_metrics_csv(self.history, self.run_dir / METRICS_CSV)
        return self.finish()

    def write_curves(self) -> None:
        """curves.png from the per-epoch history (loss, accuracy, LR, density, exploration; phases marked)."""
        if self.writing:
            density = density_label(self.parts.masking.density() if self.parts.masking else None)
            plot_curves(self.history, self.run_dir / CURVES_PNG,
                        title=curves_title(self.kind, self.plan.model_name, self.plan.dataset, density),
                        reexplore_after=self.schedule.reexplore_epochs,
                        ticket_epochs=[t["epoch"] for t in self.tickets.values()])

    def step_hooks(self, epoch: int, lr: float) -> dict:
        """Per-iteration warm-up of the LR, and the running training loss every plan.log_every iterations."""
        hooks, n, every = {}, len(self.parts.train_loader), self.plan.log_every
        warm = epoch <= self.schedule.warmup
        window = {"sum": None, "count": 0, "clock": time.time()}

        def before_step(i: int) -> None:
            if warm:
                for group in self.parts.optimizer.param_groups:
                    group["lr"] = lr * self.schedule.warmup_fraction(epoch, i, n)
            if every and i > 0 and i % every == 0 and self.world.is_main:
                now, mean = time.time(), float(window["sum"]) / window["count"]
                rate = every * self.plan.batch_size * self.world.size / max(now - window["clock"], 1e-9)
                window.update(sum=None, count=0, clock=now)
                self.log(f"epoch {epoch}/{self.total_epochs} [{i}/{n}] loss {mean:.4f} "
                         f"lr {self.parts.optimizer.param_groups[0]['lr']:.4g} | {rate:.1f} images/s")

        def after_step(i: int, loss: torch.Tensor) -> None:
            window["sum"] = loss.float() if window["sum"] is None else window["sum"] + loss.float()
            window["count"] += 1

        if warm or every:
            hooks["before_step"] = before_step
        if every and self.world.is_main:
            hooks["after_step"] = after_step
        return hooks

    def validate(self) -> dict:
        """Validation metrics of the model over the whole val split (every rank its shard, summed)."""
        if not self.parts.val_loader:
            return {}
        self.world.broadcast_buffers(self.parts.model)  # rank 0's BatchNorm statistics: exactly the model saved
        return evaluate_model(self.parts.model, self.parts.val_loader, autocast=self.parts.autocast,
                              topk=self.plan.topk,
                              all_sum=self.world.all_sum if self.world.size > 1 else None)

    def end_of_epoch(self, epoch: int, train_stats: dict) -> None:
        """Validation, ticket selection, EDST re-exploration, checkpoints."""
        train_loss, train_acc = train_stats["loss"], train_stats["acc"]
        if self.world.size > 1:
            train_loss, train_acc = (v / self.world.size for v in self.world.all_sum([train_loss, train_acc]))
        val = self.validate()
        phase = self.schedule.phase(epoch)
        if self.schedule.phase_starts_at(epoch):
            self.best.pop(phase, None)  # the best is reset at the start of every phase
        if phase >= 0:
            score = val.get("acc", float(epoch))  # no validation split: keep the latest epoch
            if score > self.best.get(phase, -math.inf):
                self.best[phase] = score
                self.save_ticket(phase, val)
        event = ""
        if self.schedule.reexplore_after(epoch) and self.parts.masking and not self.plan.sparse.fixed_mask:
            batch = train_stats["last_batch"]
            dense_gradients(self.parts.net, batch, autocast=self.parts.autocast, criterion=self.plan.criterion,
                            scaler=self.parts.scaler)
            removed = self.parts.masking.reexplore(self.plan.sparse.reexplore_rate)
            self.parts.flops.add_dense_gradient_batch(batch[0].shape[0])
            self.parts.flops.set_densities(self.parts.masking.layer_densities())
            event = f" | re-exploration q={self.plan.sparse.reexplore_rate}: {sum(removed.values())} weights replaced"
        row = {"epoch": epoch, "lr": self.parts.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
               "train_acc": train_acc, "val_loss": val.get("loss"), "val_acc": val.get("acc"), **self._topk(val),
               "phase": phase, "density": self.parts.masking.density() if self.parts.masking else 1.0,
               "exploration_rate": self.parts.masking.exploration_rate() if self.parts.masking else None,
               "training_flops": self.parts.flops.total}
        self.history.append(row)
        if self.tensorboard is not None:
            self.tensorboard.log_epoch(row)
        save_every = self.plan.save_every
        if save_every and epoch % save_every == 0 and self.writing:
            snap = ckpt.build_ticket(self.parts.model, self.parts.masking.masks if self.parts.masking else None,
                                     self.ticket_meta(phase, val, role="snapshot"))
            ckpt.atomic_save(snap, self.run_dir / "snapshots" / f"epoch_{epoch}.pth")
        val_txt = "no validation split"
        if val:
            val_txt = f"val loss {val['loss']:.4f} acc {val['acc']:.4f}" + "".join(
                f" top{k} {val[f'top{k}']:.4f}" for k in self.plan.topk if k != 1)
            if self.world.size > 1:
                val_txt += f" ({val['images']} images)"
        extra = f" density {row['density']:.4f} explored {row['exploration_rate']:.4f}" if self.parts.masking else ""
        self.log(f"epoch {epoch}/{self.total_epochs} lr {row['lr']:.4g} | train loss {train_loss:.4f} "
                 f"acc {train_acc:.4f} | {val_txt} |{extra} {event}".rstrip())

    def finish(self) -> dict:
        missing = missing_listed_files(self.run_dir, self.tickets.values()) if self.writing else []
        if missing:  # e.g. deleted while the run ran: a run without its tickets is not finished
            self.write_summary(f"failed: {', '.join(missing)} missing")
            raise UsageError(f"{self.run_dir} lacks {', '.join(missing)}, which the run wrote; it is not finished - "
                             f"start it again with --overwrite")
        self.write_summary("finished")
        self.write_curves()
        s = self.summary("finished")
        self.log(f"done: {len(self.tickets)} ticket(s) in {self.run_dir}; training FLOPs "
                 f"{s['training_flops']:.3e} = {s['training_flops_relative_to_dense_250_epochs']:.3f}x one dense "
                 f"model trained 250 epochs")
        return s


def start_run(run: Run) -> dict:
    """Lock the run folder (rank 0), check it, build, restore or clear, join the ranks, then train.

    The lock comes first, so that two runs started together into one folder cannot both find it
    free; bad input found before training leaves nothing behind (see RunLock).
    """
    with RunLock(run.run_dir, enabled=run.world.is_main, root=run.plan.flags.get("output_dir")) as lock, \
            LogLines() as lines:
        resume_from = run.check_output_folder()
        run.build()  # loads data and the pretrained model: bad input fails here
        if resume_from is not None:
            run.restore(resume_from)
        elif run.plan.overwrite and run.world.is_main:
            run.remove_old_run()
        lock.keep()
        run.writing = run.world.is_main
        return train_reporting_errors(run, lines)


def train_reporting_errors(run: Run, lines: LogLines | None = None) -> dict:
    """Join the ranks and train, with a non-finite loss, a failed write or a mask desync reported in one line."""
    try:
        run.connect()
        defaults = run.plan.flag_defaults
        changed = " ".join(f"--{k}={v}" for k, v in sorted(run.fingerprint().items()) if defaults.get(k) != v)
        run.log(f"{run.plan.program} started {datetime.datetime.now().isoformat(timespec='seconds')} on "
                f"{run.device}{run.plan.start_note}: {changed} (all flags in summary.json)")
        if lines is not None:  # what the build logged (the sparse layers, a schedule warning), then the rest
            lines.forward_to(run.log)
        run.provenance = provenance(device=run.device)
        run.write_summary("running")
        if run.writing and run.plan.tensorboard:
            run.tensorboard = TensorBoardLog(run.run_dir / TENSORBOARD_DIR)
        return run.train()
    except KeyboardInterrupt as err:  # SIGINT, or SIGTERM through errors.run_cli
        run.write_summary(f"stopped ({err or 'interrupted'}): continue with --resume")
        raise
    except NonFiniteLossError as err:
        run.write_summary("failed: non-finite loss")
        run.write_curves()
        raise UsageError(str(err)) from None
    except MaskDesyncError as err:
        run.log(f"error: {err}")
        run.write_summary("failed: masks differ between ranks")
        raise
    except ckpt.WriteError as err:
        write_failure(run, err)
        raise
    except OSError as err:  # e.g. train.log on a full disk (checkpoints raise ckpt.WriteError themselves)
        write_failure(run, err)
        raise UsageError(f"could not write {err.filename or run.run_dir} ({err.strerror or err}); the last "
                         f"complete checkpoint is intact - free disk space, then add --resume") from None
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()


def write_failure(run: Run, err: OSError | ckpt.WriteError) -> None:
    """summary.json says why the run stopped, if there is room for it (the file it could not write is gone)."""
    try:
        run.write_summary(f"failed: could not write {getattr(err, 'path', None) or err.filename or run.run_dir} "
                          f"({getattr(err, 'reason', None) or err.strerror}): free disk space, then --resume")
    except ckpt.WriteError:
        pass
