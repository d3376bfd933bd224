#!/usr/bin/env python
"""EDST on ImageNet: one ResNet run on DistributedDataParallel yields M free tickets.

Launch with torchrun (one process per GPU; any number of nodes with torchrun's rendezvous flags)::

    torchrun --nproc_per_node 2 ImageNet/main.py -a resnet50 -c fanin --density 0.2 \\
        --label-smoothing 0.1 -b 64 --lr 0.1 --warmup 5 --epochs 310 /path/to/imagenet

or with the paper's launcher, which forwards to torchrun (run from ImageNet/)::

    python multiproc.py --nproc_per_node 2 main.py --sparse_init ERK --multiplier 1 --growth gradient \\
        --seed 17 --master_port 4545 -j5 -p 500 --arch resnet50 -c fanin --update_frequency 4000 \\
        --label-smoothing 0.1 -b 64 --lr 0.1 --warmup 5 --epochs 310 --density 0.2 ../data/

``python ImageNet/main.py ...`` alone trains in one process. The data root holds ``train/`` and
``val/`` ImageFolders; ``val/`` selects the tickets and is the reported set (as in the paper).

The EDST schedule (the reference notes' section 6.4), counted in completed epochs::

    warm-up    linear per iteration over the first --warmup epochs, up to --lr
    LR         --lr-steps E:F -> from epoch E on, LR = --lr x F   (0.01 / 0.001 / 0.0001 for --lr 0.1)
    phases     [0, 100) [100, 170) [170, 240) [240, 310): ticket k = best val top-1 epoch of phase k
    re-explore --reexplore-epochs: after epochs 100, 170, 240, replace --large-death-rate of each
               layer's weights (magnitude death, gradient growth on one dense batch)
    updates    every --update-frequency iterations a prune-and-regrow with --death-rate, cosine-decayed
               (--decay-schedule) to --final-death-rate within each phase, restarting at each phase

Every rank builds the same masks (Masking is seeded with --seed on every rank, never the rank),
rank 0's masks are broadcast after initialisation and every topology update ends with an
all-reduced checksum that stops the run on every rank if any rank's masks differ. Rank 0 alone
writes: ``model_<k>.pth`` tickets, ``last.pth`` (atomic, for ``--resume``), ``summary.json`` and
``train.log`` in ``<output-dir>/imagenet-<arch>/imagenet/density_<d>/EDST/M=<M>/seed=<seed>/``.
"""
from __future__ import annotations

import argparse
import builtins
import contextlib
import datetime
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from models.imagenet_resnet import ARCHS, imagenet_resnet
from models.init import INITS
from sparselearning import checkpoint as ckpt
from sparselearning.cli import add_sparse_args
from sparselearning.core.distributed import MaskDesyncError, mask_checksum
from sparselearning.errors import OneLineArgumentParser, UsageError
from sparselearning.core.flops import FlopsAccountant, dense_training_flops, profile_model
from sparselearning.data.imagenet import (DeviceBatches, ShardSampler, check_root, first_batches, image_folder,
                                     image_loader, imagenet_spec)
from sparselearning.core.masking import DEATH_MODES, Masking
from sparselearning.core.schedules import death_rate as scheduled_death_rate
from sparselearning.train import (Run, RunLock, autocast_context, dense_gradients, evaluate_model, fmt_density,
                                  pick_device, train_one_epoch, train_reporting_errors)

PROG = "ImageNet/main.py"
# the paper's schedule for --epochs 310 (section 6.4 of the reference notes)
PAPER_REEXPLORE = "100,170,240"
PAPER_LR_STEPS = ("30:0.1,60:0.01,90:0.001,100:0.1,130:0.01,160:0.001,"
                  "170:0.1,200:0.01,230:0.001,240:0.1,270:0.01,300:0.001")
# flags that may differ between an interrupted run and its --resume (besides the CIFAR ones)
IMAGENET_RESUME_FREE = {"data", "local_rank", "master_port", "print_freq", "benchmark_training",
                        "benchmark_inference", "bench_iterations", "bench_warmup", "debug_mask_checksums",
                        "debug_desync_at_update", "start_ite", "static_loss_scale", "dynamic_loss_scale", "verbose"}


# ============================================================================ flags
def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog=PROG, description="EDST ensemble of sparse ResNets on ImageNet "
                                   "(DistributedDataParallel through torchrun); one run, M free tickets.",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data", metavar="DIR", help="ImageFolder root holding train/ and val/")
    g = parser.add_argument_group("model")
    g.add_argument("-a", "--arch", default="resnet50", choices=ARCHS, help="torchvision ResNet")
    g.add_argument("-c", "--model-config", default="classic", choices=INITS,
                   help="conv init: classic = Kaiming normal fan_out, fanin = Kaiming normal fan_in")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=310, help="training epochs (the schedule flags assume 310)")
    g.add_argument("-b", "--batch-size", type=int, default=64, help="batch size per process")
    g.add_argument("--lr", type=float, default=0.1, help="base learning rate (not scaled with the world size)")
    g.add_argument("--warmup", type=int, default=5, help="epochs of linear per-iteration LR warm-up")
    g.add_argument("--label-smoothing", type=float, default=0.1, help="CrossEntropyLoss label smoothing")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=1e-4)
    g.add_argument("--bn-weight-decay", action="store_true", help="also apply weight decay to BatchNorm parameters")
    g.add_argument("--multiplier", type=int, default=1, help="stretch training and every schedule epoch by this factor")
    g = parser.add_argument_group("EDST schedule (completed-epoch counts, before --multiplier)")
    g.add_argument("--reexplore-epochs", default=PAPER_REEXPLORE,
                   help="after these epochs, re-explore with --large-death-rate and start a new ticket phase "
                        "('' = one phase, one ticket)")
    g.add_argument("--lr-steps", default=PAPER_LR_STEPS,
                   help="E:F pairs: from epoch E on the LR is --lr x F ('' = constant LR after warm-up)")
    g = parser.add_argument_group("data, devices and runs")
    g.add_argument("-j", "--workers", type=int, default=5, help="data-loading processes per training process")
    g.add_argument("--image-size", type=int, default=224, help="training crop and validation centre-crop side")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto picks CUDA when present")
    g.add_argument("--no-cuda", action="store_true", help="same as --device cpu")
    g.add_argument("--amp", "--fp16", dest="amp", action="store_true",
                   help="mixed precision (torch.amp: bf16, or fp16 with loss scaling) on CUDA")
    g.add_argument("--seed", type=int, default=17, help="model init, masks, data order (the same on every rank)")
    g.add_argument("--output-dir", default="results", help="root of the results tree")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in the run folder")
    g.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue the interrupted run in the run folder (or from CHECKPOINT, a last.pth)")
    g.add_argument("--resume-run", dest="resume", action="store_const", const=True, help=argparse.SUPPRESS)
    g.add_argument("-p", "--print-freq", type=int, default=100, help="log every N iterations (rank 0)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)")
    g = parser.add_argument_group("distributed (torchrun's environment wins)")
    g.add_argument("--master_port", "--master-port", dest="master_port", type=int, default=None,
                   help="rendezvous port; multiproc.py hands it to torchrun")
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=0,
                   help="GPU of a single process; under torchrun LOCAL_RANK is used")
    g = parser.add_argument_group("benchmarks (print images/s, write nothing)")
    g.add_argument("--benchmark-training", action="store_true", help="time training iterations")
    g.add_argument("--benchmark-inference", action="store_true", help="time inference iterations")
    g.add_argument("--bench-iterations", type=int, default=20, help="timed iterations")
    g.add_argument("--bench-warmup", type=int, default=20, help="untimed iterations first")
    add_sparse_args(parser)
    s = parser.add_argument_group("ImageNet spellings of the original code")
    s.add_argument("--dense", dest="sparse", action="store_false", help="train the dense network (no masks)")
    s.add_argument("--prune-rate", dest="death_rate", type=float, default=argparse.SUPPRESS, help="= --death-rate")
    s.add_argument("--prune", dest="death", choices=DEATH_MODES, default=argparse.SUPPRESS, help="= --death")
    for flag in ("--start-ite", "--static-loss-scale"):
        s.add_argument(flag, default=None, help=argparse.SUPPRESS)
    for flag in ("--dynamic-loss-scale", "--verbose"):
        s.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    # debugging aids for the tests: per-rank mask checksums, and a forced mismatch on the last rank
    parser.add_argument("--debug-mask-checksums", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--debug-desync-at-update", type=int, default=None, help=argparse.SUPPRESS)
    # ImageNet defaults: the paper's launch line (ERK, density 0.2, update every 4000 iterations) and the
    # original ImageNet code's cosine decay of the death rate within each phase
    parser.set_defaults(sparse=True, density=0.2, sparse_init="ERK", update_frequency=4000, decay_schedule="cosine")
    return parser


def normalise_spellings(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Accept --sparse_init for --sparse-init (and the reverse): the paper's launch line uses underscores.

    Also keeps ``--resume DATA_DIR`` meaning "resume, data in DATA_DIR": --resume takes the next
    token as its checkpoint only when that is a file or ends in .pth/.pt.
    """
    known = parser._option_string_actions  # every option string the parser accepts
    out = []
    for i, token in enumerate(argv):
        if token == "--":
            return out + argv[i:]
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token.partition("=")
            if name not in known:
                for alt in ("--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
                    if alt in known:
                        name = alt
                        break
            token = name + eq + value
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            if name == "--resume" and not eq and nxt and not nxt.startswith("-") and not (
                    Path(nxt).is_file() or nxt.endswith((".pth", ".pt"))):
                token = "--resume-run"  # plain --resume; the next token stays the data root
        out.append(token)
    return out


# ============================================================================ the schedule
@dataclass(frozen=True)
class EDSTSchedule:
    """Section 6.4 as data. Epochs are 1-based (epoch e is trained after e - 1 completed epochs)."""

    epochs: int
    warmup: int
    reexplore: tuple[int, ...]  # re-explore after these completed epochs (each starts a phase)
    lr_steps: tuple[tuple[int, float], ...]  # (E, F): from completed-epoch E on, LR = base x F

    @property
    def num_tickets(self) -> int:
        return len(self.reexplore) + 1

    def phase(self, epoch: int) -> int:
        return sum(epoch > r for r in self.reexplore)

    def phase_bounds(self, phase: int) -> tuple[int, int]:
        """(completed epochs at its start, at its end)."""
        edges = (0, *self.reexplore, self.epochs)
        return edges[phase], edges[phase + 1]

    def lr_factor(self, epoch: int) -> float:
        factor = 1.0
        for start, f in self.lr_steps:
            if epoch - 1 >= start:
                factor = f
        return factor

    def warmup_fraction(self, epoch: int, iteration: int, iterations: int) -> float:
        """Linear warm-up per iteration: (k + 1) / (warmup x iterations) at global iteration k."""
        if epoch > self.warmup:
            return 1.0
        return ((epoch - 1) * iterations + iteration + 1) / (self.warmup * iterations)

    def reexplore_after(self, epoch: int) -> bool:
        return epoch in self.reexplore

    def describe(self) -> dict:
        return {"epochs": self.epochs, "warmup_epochs": self.warmup, "reexplore_after": list(self.reexplore),
                "lr_steps": [[e, f] for e, f in self.lr_steps], "tickets": self.num_tickets,
                "phases": [list(self.phase_bounds(k)) for k in range(self.num_tickets)]}


def _epoch_list(text: str, flag: str) -> list[int]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise UsageError(f"--{flag} {text!r} is not a comma-separated list of epochs (e.g. 100,170,240)") from None


def _lr_steps(text: str) -> list[tuple[int, float]]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    steps = []
    for item in text.split(","):
        try:
            e, f = item.split(":")
            steps.append((int(e), float(f)))
        except ValueError:
            raise UsageError(f"--lr-steps item {item!r} is not EPOCH:FACTOR (e.g. 30:0.1,60:0.01)") from None
    return steps


def validate(args: argparse.Namespace) -> EDSTSchedule:
    """Range and consistency checks (UsageError naming the flag); returns the schedule."""
    if args.no_cuda:
        args.device = "cpu"
    for name, value in vars(args).items():  # inf/nan would pass (or break) the range checks below
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: --resume continues the run in the folder, "
                         "--overwrite replaces it; pass one of them")
    for name in ("epochs", "batch_size", "multiplier", "print_freq", "update_frequency", "bench_iterations"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("warmup", "workers", "bench_warmup"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must be 0 or more, got {getattr(args, name)}")
    if args.image_size < 16:
        raise UsageError(f"--image-size must be at least 16, got {args.image_size}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if args.momentum < 0 or args.weight_decay < 0:
        raise UsageError("--momentum and --weight-decay must be non-negative")
    if not 0 <= args.label_smoothing < 1:
        raise UsageError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if not 0 < args.density <= 1:
        raise UsageError(f"--density must be in (0, 1], got {args.density}")
    for flag, value in (("death-rate", args.death_rate), ("large-death-rate", args.large_death_rate),
                        ("final-death-rate", args.final_death_rate)):
        if not 0 <= value < 1:
            raise UsageError(f"--{flag} must be in [0, 1), got {value}")
    m = args.multiplier
    epochs = args.epochs * m
    reexplore = [r * m for r in _epoch_list(args.reexplore_epochs, "reexplore-epochs")]
    if any(b <= a for a, b in zip(reexplore, reexplore[1:])) or any(not 0 < r < epochs for r in reexplore):
        hint = (f"; {PAPER_REEXPLORE} is the paper's schedule for --epochs 310" if args.reexplore_epochs == PAPER_REEXPLORE
                else "")
        raise UsageError(f"--reexplore-epochs {args.reexplore_epochs} must be increasing epochs strictly between 0 and "
                         f"--epochs {args.epochs}{hint}; pass a schedule for your length (e.g. "
                         f"--reexplore-epochs {max(args.epochs // 2, 1)} --lr-steps ...) or '' for one ticket")
    steps = [(e * m, f) for e, f in _lr_steps(args.lr_steps)]
    if any(b[0] <= a[0] for a, b in zip(steps, steps[1:])) or any(e < 0 or not f > 0 for e, f in steps):
        raise UsageError(f"--lr-steps {args.lr_steps}: epochs must increase from 0 and factors be positive")
    warmup = args.warmup * m
    if warmup >= epochs:
        raise UsageError(f"--warmup {args.warmup} must be shorter than --epochs {args.epochs}")
    if args.debug_desync_at_update is not None and args.debug_desync_at_update < 1:
        raise UsageError("--debug-desync-at-update counts topology updates from 1")
    args.model = f"imagenet-{args.arch}"  # the ticket's registry name (models.get_model)
    return EDSTSchedule(epochs, warmup, tuple(reexplore), tuple(steps))


# ============================================================================ distribution
@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_env(args: argparse.Namespace) -> DistEnv:
    """Rank, world size and local rank from torchrun's environment (one process without it)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local = int(env.get("LOCAL_RANK", str(args.local_rank if world == 1 else rank)))
    return DistEnv(rank, world, local)


def device_for(args: argparse.Namespace, env: DistEnv) -> torch.device:
    device = pick_device(args.device)
    if device.type == "cuda" and device.index is None:
        count = torch.cuda.device_count()
        if env.local_rank >= count:
            raise UsageError(f"process {env.local_rank} on this node has no GPU of its own (this node has {count}); "
                             f"start at most {count} processes per node (--nproc_per_node {count})")
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    return device


def quiet_unless_main(env: DistEnv) -> None:
    """Only rank 0 prints to stdout (stderr, where errors go, stays open on every rank)."""
    if env.is_main:
        return
    real_print = builtins.print

    def print_(*a, **kw):
        if kw.get("file") not in (None, sys.stdout):
            real_print(*a, **kw)

    builtins.print = print_


def _collective_device(device: torch.device) -> torch.device:
    return device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")


_PROCESS_GROUP_STARTED = False  # set once this process joined the group (errors after that are per rank)


def derived_seed(seed: int, epoch: int, rank: int) -> int:
    """Per (seed, epoch, rank): data augmentation repeats exactly after --resume."""
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101) % (2 ** 62)


# ============================================================================ pieces plugged into the shared engine
class RankCheckedMasking(Masking):
    """Masking whose every topology update ends with a cross-rank mask check.

    The death-rate schedule restarts in every EDST phase (``phase_window`` = (first step, steps)),
    as the original ImageNet code re-installs its cosine decay at each re-exploration.
    """

    def __init__(self, optimizer, *, rank: int = 0, world: int = 1, on_check=None, checksum_file: Path | None = None,
                 desync_at_update: int | None = None, **kwargs):
        super().__init__(optimizer, **kwargs)
        self.rank, self.world = rank, world
        self.on_check = on_check
        self.checksum_file = checksum_file
        self.desync_at_update = desync_at_update
        self.phase_window = (0, self.total_steps)

    def current_death_rate(self) -> float:
        start, length = self.phase_window
        return scheduled_death_rate(self.death_rate_schedule, self.base_death_rate, self.steps - start, length,
                                    self.final_death_rate)

    def truncate_weights(self, rate, grads=None):
        removed = super().truncate_weights(rate, grads)
        if self.desync_at_update == self.num_updates and self.rank == self.world - 1 and self.world > 1:
            self._force_mismatch()
        self.check_sync(f"topology update {self.num_updates} (step {self.steps}, rate {rate:.4g})")
        return removed

    def _force_mismatch(self) -> None:
        name = self.updatable[0]
        flat = self.masks[name].view(-1)
        flat[int((~flat).nonzero()[0])] = True

    def check_sync(self, event: str) -> None:
        """All-reduced checksum of the masks; MaskDesyncError on every rank if any rank differs."""
        checksum = mask_checksum(self.masks).tolist()
        if self.checksum_file is not None:
            with open(self.checksum_file, "a") as fh:
                fh.write(json.dumps({"rank": self.rank, "update": self.num_updates, "step": self.steps,
                                     "event": event, "checksum": checksum}) + "\n")
        try:
            self.assert_masks_in_sync()
        except MaskDesyncError as err:
            raise MaskDesyncError(f"{err}; detected at {event}") from None
        if self.on_check is not None:
            self.on_check(event, checksum)


class WorldFlops(FlopsAccountant):
    """Counts every rank's samples: a step of batch b on each of W ranks trains on b x W samples."""

    def __init__(self, profile, densities, world: int):
        super().__init__(profile, densities)
        self.world = world

    def add_step(self, batch_size: int, dense_grad: bool = False) -> None:
        super().add_step(batch_size * self.world, dense_grad)


class TrainCriterion:
    """Label-smoothed cross-entropy that also keeps a running loss for the --print-freq log (no sync)."""

    def __init__(self, label_smoothing: float):
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self._sum, self._count = None, 0

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(out, y)
        value = loss.detach().float()
        self._sum = value if self._sum is None else self._sum + value
        self._count += 1
        return loss

    def take_window(self) -> float:
        mean = float(self._sum) / self._count if self._count else float("nan")
        self._sum, self._count = None, 0
        return mean


class EvalMeter:
    """Criterion for evaluate_model that also sums top-1/top-k hits: [loss, top1, topk, n] (float64)."""

    def __init__(self, k: int = 5):
        self.k = k
        self.sums: torch.Tensor | None = None

    def __call__(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        out = out.float()
        loss = F.cross_entropy(out, y, reduction="sum")
        top = out.topk(min(self.k, out.shape[1]), dim=1).indices
        row = torch.stack([loss.detach(), (top[:, 0] == y).sum(), (top == y[:, None]).any(1).sum(),
                           torch.tensor(y.numel(), device=y.device)]).double()
        self.sums = row if self.sums is None else self.sums + row
        return loss if reduction == "sum" else loss / max(y.numel(), 1)


# ============================================================================ the run
class ImageNetRun(Run):
    """The shared training engine's Run, on ImageFolder data, DDP and the section-6.4 schedule.

    Reused from Run unchanged: the output-folder check, resume state and restore, ticket files and
    their metadata, summary.json. Replaced: building, the LR/phase schedule, the epoch loop (around
    train_one_epoch and evaluate_model), and rank-0-only writing.
    """

    def __init__(self, args: argparse.Namespace, schedule: EDSTSchedule, env: DistEnv):
        self.script, self.args, self.schedule, self.env = "imagenet", args, schedule, env
        self.is_main = env.is_main
        self.device = device_for(args, env)
        self.progress = self.is_main and not args.no_progress and sys.stderr.isatty()
        self.total_epochs = schedule.epochs
        self.edst = None  # the CIFAR schedule object; this run uses self.schedule
        self.flags = {k: v for k, v in vars(args).items()}
        self.root = check_root(args.data)
        d = f"density_{fmt_density(args.density)}"
        base = Path(args.output_dir) / args.model / "imagenet"
        self.run_dir = {"dense": base / "dense", "static": base / d / "static", "DST": base / d / "DST",
                        "EDST": base / d / "EDST" / f"M={schedule.num_tickets}"}[self.kind] / f"seed={args.seed}"
        self.ddp: nn.Module | None = None
        self.writes_files = False  # rank 0 of a training run, once it holds the run folder (never in benchmarks)

    # -- what differs from the CIFAR Run
    @property
    def kind(self) -> str:
        if not self.args.sparse:
            return "dense"
        if self.args.fix:
            return "static"
        return "EDST" if self.schedule.num_tickets > 1 else "DST"

    def lr_for(self, epoch: int) -> float:
        return self.args.lr * self.schedule.lr_factor(epoch)

    def phase_of(self, epoch: int) -> int:
        return self.schedule.phase(epoch)

    def ticket_name(self, phase: int) -> str:
        return f"model_{phase}.pth" if self.schedule.num_tickets > 1 else "model.pth"

    def fingerprint(self) -> dict:
        return {k: v for k, v in super().fingerprint().items() if k not in IMAGENET_RESUME_FREE}

    def log(self, line: str) -> None:
        if self.is_main and self.writes_files:
            super().log(line)
        elif self.is_main:
            print(line, flush=True)

    def write_summary(self, status: str) -> None:
        if self.is_main and self.writes_files:
            super().write_summary(status)

    def ticket_meta(self, phase: int, val: dict, role: str = "ticket") -> dict:
        meta = super().ticket_meta(phase, val, role)
        meta.update(dataset="imagenet", data_root=str(self.root), arch=self.args.arch,
                    model_config=self.args.model_config, val_top5=val.get("top5"), class_names=list(self.classes))
        return meta

    def save_ticket(self, phase: int, val: dict) -> None:
        super().save_ticket(phase, val)
        self.tickets[phase]["val_top5"] = val.get("top5")

    def summary(self, status: str) -> dict:
        s = super().summary(status)
        s["script"] = PROG
        s["schedule"] = self.schedule.describe()
        s["distributed"] = {"world_size": self.env.world,
                            "backend": dist.get_backend() if dist.is_initialized() else None,
                            "batch_size_per_process": self.args.batch_size,
                            "global_batch_size": self.args.batch_size * self.env.world}
        s["dataset"] = {"name": "imagenet", "root": str(self.root), "num_classes": self.spec.num_classes,
                        "train_images": self.spec.train_size, "val_images": len(self.val_set),
                        "image_size": self.args.image_size, "mean": list(self.spec.mean), "std": list(self.spec.std)}
        same = dense_training_flops(self.profile, self.train_loader.num_samples, self.total_epochs)
        s["training_flops_relative_to_dense_same_epochs"] = self.flops.total / same
        return s

    # -- building
    def build(self) -> None:
        args, env, device = self.args, self.env, self.device
        train_set = image_folder(self.root, "train", args.image_size)
        self.classes = list(train_set.classes)
        self.val_set = image_folder(self.root, "val", args.image_size, self.classes)
        per_rank = len(train_set) // env.world
        if per_rank < args.batch_size:
            raise UsageError(f"{self.root / 'train'} has {len(train_set)} images: fewer than one batch of "
                             f"{args.batch_size} for each of {env.world} processes; lower -b/--batch-size")
        self.spec = imagenet_spec(len(self.classes), args.image_size, len(train_set))
        sampler = DistributedSampler(train_set, num_replicas=env.world, rank=env.rank, shuffle=True, seed=args.seed,
                                     drop_last=True)
        self.train_loader = DeviceBatches(
            image_loader(train_set, args.batch_size, args.workers, device, sampler=sampler, drop_last=True),
            device, self.spec.mean, self.spec.std)
        self.val_loader = DeviceBatches(
            image_loader(self.val_set, args.batch_size, args.workers, device,
                         sampler=ShardSampler(len(self.val_set), env.rank, env.world)),
            device, self.spec.mean, self.spec.std)
        self.loader_generator = torch.Generator()  # kept for Run's resume state; epochs are seeded by derived_seed
        torch.manual_seed(args.seed)
        self.model = imagenet_resnet(args.arch, len(self.classes), 3, args.model_config).to(device)
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
        no_decay = set() if args.bn_weight_decay else {id(p) for m in self.model.modules() if isinstance(m, bn)
                                                        for p in m.parameters(recurse=False)}
        groups = [{"params": [p for p in self.model.parameters() if id(p) not in no_decay]},
                  {"params": [p for p in self.model.parameters() if id(p) in no_decay], "weight_decay": 0.0}]
        self.optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=args.lr, momentum=args.momentum,
                                         weight_decay=args.weight_decay)
        self.masking = None
        if args.sparse:
            checksum_file = None
            if args.debug_mask_checksums:
                Path(args.debug_mask_checksums).mkdir(parents=True, exist_ok=True)
                checksum_file = Path(args.debug_mask_checksums) / f"rank{env.rank}.jsonl"
            self.masking = RankCheckedMasking(
                self.optimizer, rank=env.rank, world=env.world, on_check=self._log_check, checksum_file=checksum_file,
                desync_at_update=args.debug_desync_at_update, death_rate=args.death_rate, death_mode=args.death,
                growth_mode=args.growth, redistribution_mode=args.redistribution,
                death_rate_schedule=args.decay_schedule, total_steps=len(self.train_loader) * self.total_epochs,
                final_death_rate=args.final_death_rate, update_frequency=None if args.fix else args.update_frequency,
                threshold=args.death_threshold, momentum_beta=args.momentum, seed=args.seed)  # same seed on every rank
            self.masking.add_module(self.model, density=args.density, sparse_init=args.sparse_init,
                                    erk_power_scale=args.erk_power_scale)
        shape = (3, args.image_size, args.image_size)
        self.profile = profile_model(self.model, shape, list(self.masking.masks) if self.masking else None)
        self.flops = WorldFlops(self.profile, self.masking.layer_densities() if self.masking else {}, env.world)
        self.autocast, self.scaler = autocast_context(device, args.amp)
        self.criterion = TrainCriterion(args.label_smoothing)
        if args.amp and device.type != "cuda":
            print("note: --amp applies on CUDA only; training in float32 on the CPU")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.epoch = 0
        self.best: dict[int, float] = {}
        self.tickets: dict[int, dict] = {}
        self.history: list[dict] = []
        self.elapsed = 0.0

    def _log_check(self, event: str, checksum: list[int]) -> None:
        self.log(f"{event}: masks identical on {self.env.world} rank(s), checksum {checksum}, "
                 f"density {self.masking.density():.4f}")

    def start_distributed(self) -> None:
        """Process group from torchrun's env (NCCL on CUDA, gloo on the CPU), DDP, masks from rank 0, checked."""
        global _PROCESS_GROUP_STARTED
        if self.env.world > 1:
            cuda = self.device.type == "cuda"
            kwargs = {}
            if cuda and "device_id" in inspect.signature(dist.init_process_group).parameters:
                kwargs["device_id"] = self.device
            dist.init_process_group("nccl" if cuda else "gloo", **kwargs)
            _PROCESS_GROUP_STARTED = True
            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)
        else:
            self.ddp = self.model
        self.check_ranks_agree()
        if self.masking is not None:
            self.masking.broadcast_masks(src=0)
            self.masking.check_sync("initial masks")

    def check_ranks_agree(self) -> None:
        """Every rank resumed the same epoch and step and sees the same data (else the ranks would hang)."""
        if self.env.world == 1:
            return
        mine = torch.tensor([self.epoch, self.masking.steps if self.masking else 0, self.spec.train_size,
                             self.spec.num_classes, len(self.val_set)], dtype=torch.int64)
        lo, hi = mine.to(_collective_device(self.device)), mine.to(_collective_device(self.device))
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if not torch.equal(lo, hi):
            raise UsageError(f"the processes disagree on (epoch, step, train images, classes, val images): rank "
                             f"{self.env.rank} has {mine.tolist()}; every node must see the same data root and, "
                             f"for --resume, the same run folder (a shared filesystem)")

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    # -- collectives
    def _all_sum(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(values, dtype=torch.float64).to(_collective_device(self.device))
        if self.env.world > 1:
            dist.all_reduce(t)
        return t.cpu()

    def sync_buffers(self) -> None:
        """BatchNorm statistics of rank 0 on every rank (DDP's forward broadcasts them, then each rank updates)."""
        if self.env.world > 1:
            for b in self.model.buffers():
                dist.broadcast(b, 0)

    def validate(self) -> dict:
        """Top-1, top-5 and loss over the whole val/ split, each rank evaluating its shard of rank 0's model."""
        self.sync_buffers()
        meter = EvalMeter(5)
        evaluate_model(self.model, self.val_loader, autocast=self.autocast, criterion=meter)
        sums = self._all_sum(meter.sums if meter.sums is not None else [0.0, 0.0, 0.0, 0.0])
        n = max(float(sums[3]), 1.0)
        return {"loss": float(sums[0]) / n, "acc": float(sums[1]) / n, "top5": float(sums[2]) / n,
                "images": int(sums[3])}

    # -- the loop
    def _before_step(self, epoch: int, lr: float):
        n, warm = len(self.train_loader), epoch <= self.schedule.warmup
        clock = [time.time()]

        def before_step(i: int) -> None:
            if warm:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * self.schedule.warmup_fraction(epoch, i, n)
            if self.is_main and i > 0 and i % self.args.print_freq == 0:
                now = time.time()
                rate = self.args.print_freq * self.args.batch_size * self.env.world / max(now - clock[0], 1e-9)
                clock[0] = now
                self.log(f"epoch {epoch}/{self.total_epochs} [{i}/{n}] loss {self.criterion.take_window():.4f} "
                         f"lr {self.optimizer.param_groups[0]['lr']:.4g} | {rate:.1f} images/s")

        return before_step

    def train(self) -> dict:
        args, n = self.args, len(self.train_loader)
        while self.epoch < self.total_epochs:
            epoch = self.epoch + 1
            lr = self.lr_for(epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            seed = derived_seed(args.seed, epoch, self.env.rank)
            self.train_loader.set_epoch(epoch, seed)
            torch.manual_seed(seed)  # augmentation in the main process when -j 0
            if self.masking is not None:
                first, last = self.schedule.phase_bounds(self.phase_of(epoch))
                self.masking.phase_window = (first * n, (last - first) * n)
            self.criterion.take_window()
            start = time.time()
            stats = train_one_epoch(self.ddp, self.train_loader, self.optimizer, self.masking, self.flops,
                                    autocast=self.autocast, scaler=self.scaler, criterion=self.criterion,
                                    before_step=self._before_step(epoch, lr), epoch=epoch, progress=self.progress,
                                    desc=f"epoch {epoch}/{self.total_epochs}", total=n)
            self.epoch = epoch
            self.end_of_epoch(epoch, stats)
            self.elapsed += time.time() - start
            if self.is_main:
                ckpt.atomic_save(self.resume_state(), self.run_dir / "last.pth")
            self.write_summary("running")
        return self.finish()

    def end_of_epoch(self, epoch: int, train_stats: dict) -> None:
        """Validation on all ranks, the phase's best ticket (rank 0 writes), re-exploration at phase ends."""
        train_loss, train_acc = (self._all_sum([train_stats["loss"], train_stats["acc"]]) / self.env.world).tolist()
        val = self.validate()
        phase = self.phase_of(epoch)
        if val["acc"] > self.best.get(phase, -math.inf):  # best is per phase: reset at every phase start
            self.best[phase] = val["acc"]
            if self.is_main:
                self.save_ticket(phase, val)
        event = ""
        if self.schedule.reexplore_after(epoch) and self.masking is not None and not self.args.fix:
            x = train_stats["last_batch"][0]
            dense_gradients(self.ddp, train_stats["last_batch"], autocast=self.autocast, criterion=self.criterion)
            removed = self.masking.truncate_weights(self.args.large_death_rate)  # checked across ranks
            self.flops.total += self.flops.profile.dense * x.shape[0] * self.env.world
            self.flops.set_densities(self.masking.layer_densities())
            event = f" | re-exploration q={self.args.large_death_rate}: {sum(removed.values())} weights replaced"
        row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
               "train_acc": train_acc, "val_loss": val["loss"], "val_acc": val["acc"], "val_top5": val["top5"],
               "phase": phase, "density": self.masking.density() if self.masking else 1.0,
               "exploration_rate": self.masking.exploration_rate() if self.masking else None,
               "training_flops": self.flops.total}
        self.history.append(row)
        extra = f" density {row['density']:.4f} explored {row['exploration_rate']:.4f}" if self.masking else ""
        self.log(f"epoch {epoch}/{self.total_epochs} lr {row['lr']:.4g} | train loss {train_loss:.4f} "
                 f"acc {train_acc:.4f} | val loss {val['loss']:.4f} top1 {val['acc']:.4f} top5 {val['top5']:.4f} "
                 f"({val['images']} images) | ticket {phase}{extra}{event}")


# ============================================================================ benchmarks
def benchmark(run: ImageNetRun, training: bool) -> dict:
    """Images/s of training or inference iterations on preloaded batches (the input pipeline excluded)."""
    args = run.args
    source = run.train_loader if training else run.val_loader
    if training:
        source.set_epoch(0, derived_seed(args.seed, 0, run.env.rank))
    batches = first_batches(source, min(8, len(source)))
    if not batches:
        raise UsageError("no batch to benchmark on this rank; use more images or a smaller -b")

    def cycle(count: int):
        for i in range(count):
            yield batches[i % len(batches)]

    def sync() -> None:
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)

    def work(count: int) -> None:
        if count == 0:
            return
        if training:
            train_one_epoch(run.ddp, cycle(count), run.optimizer, run.masking, None, autocast=run.autocast,
                            scaler=run.scaler, criterion=run.criterion, progress=False)
        else:
            evaluate_model(run.model, cycle(count), autocast=run.autocast, criterion=EvalMeter(5))

    work(args.bench_warmup)
    sync()
    start = time.perf_counter()
    work(args.bench_iterations)
    sync()
    seconds = time.perf_counter() - start
    images = sum(batches[i % len(batches)][0].shape[0] for i in range(args.bench_iterations))
    total = float(run._all_sum([images / seconds])[0])
    what = "training" if training else "inference"
    precision = "amp" if args.amp and run.device.type == "cuda" else "fp32"
    sparsity = f"sparse density {args.density}" if run.masking else "dense"
    print(f"benchmark-{what}: {total:.1f} images/s ({run.env.world} process(es), batch {args.batch_size} per process, "
          f"{args.arch} at {args.image_size}px, {precision}, {sparsity}, {run.device.type})", flush=True)
    return {"mode": what, "images_per_second": total}


# ============================================================================ entry point
def main(argv: list[str] | None = None) -> dict | list:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(normalise_spellings(parser, argv))
    schedule = validate(args)
    env = distributed_env(args)
    quiet_unless_main(env)
    run = ImageNetRun(args, schedule, env)
    if args.benchmark_training or args.benchmark_inference:  # writes nothing
        run.build()
        try:
            run.start_distributed()
            return [benchmark(run, training) for training, on in ((True, args.benchmark_training),
                                                                    (False, args.benchmark_inference)) if on]
        finally:
            run.close()
    resume_from = run.check_output_folder()  # refuses to overwrite a run, before anything is written
    run.build()  # bad data fails here, before the run folder exists
    with RunLock(run.run_dir) if run.is_main else contextlib.nullcontext():
        run.writes_files = run.is_main
        if resume_from is not None:
            run.restore(resume_from)
        elif args.overwrite and run.is_main:
            for old in [*run.run_dir.glob("model*.pth"), *(run.run_dir / n for n in ("last.pth", "summary.json",
                                                                                     "train.log"))]:
                old.unlink(missing_ok=True)
        try:
            run.start_distributed()
            backend = dist.get_backend() if dist.is_initialized() else "none"
            run.log(f"{PROG} started {datetime.datetime.now().isoformat(timespec='seconds')}: {env.world} process(es), "
                    f"backend {backend}, {run.device.type}, {args.model} {args.model_config}, "
                    f"{len(run.classes)} classes, {run.spec.train_size} train / {len(run.val_set)} val images; "
                    f"{' '.join(f'--{k}={v}' for k, v in sorted(run.fingerprint().items()))}")
            return train_reporting_errors(run)
        except MaskDesyncError as err:
            run.log(f"error: {err}")
            run.write_summary("failed: masks differ between ranks")
            raise
        finally:
            run.close()


def cli() -> None:
    """One error line and exit 2 for bad input (from the first process on each node), 1 for a mask mismatch."""
    try:
        main()
    except UsageError as err:
        if int(os.environ.get("LOCAL_RANK", "0")) == 0 or _PROCESS_GROUP_STARTED:
            print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except MaskDesyncError as err:
        print(f"{PROG}: error: {err}; stopped (rank {os.environ.get('RANK', '0')})", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; resume with the same command plus --resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
