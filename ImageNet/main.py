#!/usr/bin/env python
"""EDST on ImageNet: one ResNet run on DistributedDataParallel yields M free tickets.

Launch with torchrun (one process per GPU; any number of nodes with torchrun's rendezvous flags)::

    torchrun --nproc_per_node 2 ImageNet/main.py -a resnet50 -c fanin --density 0.2 \\
        --label-smoothing 0.1 -b 64 --lr 0.1 --warmup 5 --epochs 310 /path/to/imagenet

or with the paper's launcher, which checks the flags and data once, then hands them to torchrun::

    python multiproc.py --nproc_per_node 2 main.py --sparse_init ERK --multiplier 1 --growth gradient \\
        --seed 17 --master_port 4545 -j5 -p 500 --arch resnet50 -c fanin --update_frequency 4000 \\
        --label-smoothing 0.1 -b 64 --lr 0.1 --warmup 5 --epochs 310 --density 0.2 ../data/

``python ImageNet/main.py ...`` alone trains in one process. The data root holds ``train/`` and
``val/`` ImageFolders; ``val/`` selects the tickets and is the reported set (as in the paper).

This file holds only what is ImageNet's: its flags (a group added to the common parser of
sparselearning.cli), the torchrun/DDP set-up and the ImageFolder data. The run itself (schedule,
tickets, re-exploration, resume, rank 0 alone writing) is the shared engine's sparselearning.train.Run;
the schedule is the paper's 310-epoch one (sparselearning.core.schedules.paper_imagenet_plan), scaled
to --epochs unless --reexplore-epochs / --lr-steps / --warmup are given. Every rank builds the same
masks, rank 0's are broadcast, and every topology update ends with an all-reduced mask checksum.
"""
from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from models.imagenet_resnet import ARCHS, imagenet_resnet
from models.init import INITS
from sparselearning.cli import (Given, at_least, common_parser, fraction, normalise_spellings, parser_defaults,
                                schedule_for, validate_imagenet)
from sparselearning.core.distributed import World
from sparselearning.core.death import DEATH_RULES
from sparselearning.core.schedules import Schedule
from sparselearning.data.imagenet import (DeviceBatches, ShardSampler, check_root, first_batches, image_folder,
                                          image_loader, imagenet_spec)
from sparselearning.errors import UsageError, run_cli
from sparselearning.launch import launch_members
from sparselearning.recipes import run_settings, sparse_init_of, sparse_plan
from sparselearning.runfolder import run_folder
from sparselearning.loop import (compiled_for_training, evaluate_model, pick_device, speed_settings,
                                 to_channels_last, train_one_epoch)
from sparselearning.train import RESUME_FREE_FLAGS, DataSource, Run, RunPlan, start_run

PROG = "ImageNet/main.py"
# flags that may differ between an interrupted run and its --resume (besides the common ones)
IMAGENET_RESUME_FREE = {"data", "local_rank", "master_port", "print_freq", "benchmark_training",
                        "benchmark_inference", "bench_iterations", "bench_warmup", "start_ite", "static_loss_scale",
                        "dynamic_loss_scale", "verbose"}


# ============================================================================ flags
def imagenet_flags() -> argparse.ArgumentParser:
    """The common training flags (sparselearning.cli) plus ImageNet's group."""
    parser = common_parser(PROG, "EDST ensemble of sparse ResNets on ImageNet (DistributedDataParallel through "
                                 "torchrun); one run, M free tickets.")
    parser.add_argument("data", metavar="DIR", help="ImageFolder root holding train/ and val/")
    g = parser.add_argument_group("ImageNet")
    g.add_argument("-a", "--arch", default="resnet50", choices=ARCHS, help="torchvision ResNet")
    g.add_argument("-c", "--model-config", default="classic", choices=INITS,
                   help="conv init: classic = Kaiming normal fan_out, fanin = Kaiming normal fan_in")
    g.add_argument("--warmup", type=at_least(0), default=5, action=Given,
                   help="epochs of linear per-iteration LR warm-up (not given: 5 scaled to --epochs / 310, shorter "
                        "than the run)")
    g.add_argument("--label-smoothing", type=fraction, default=0.1, help="CrossEntropyLoss label smoothing")
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=1e-4,
                   help="SGD weight decay (not on BatchNorm parameters unless --bn-weight-decay)")
    g.add_argument("--bn-weight-decay", action="store_true", help="also apply weight decay to BatchNorm parameters")
    g.add_argument("--reexplore-epochs", default="100,170,240", action=Given,
                   help="after these completed epochs, re-explore with --large-death-rate and start a new ticket "
                        "phase ('' = one phase, one ticket; not given: the paper's scaled to --epochs / 310)")
    g.add_argument("--lr-steps", default="30:0.1,60:0.01,90:0.001,100:0.1,130:0.01,160:0.001,170:0.1,200:0.01,"
                                         "230:0.001,240:0.1,270:0.01,300:0.001", action=Given,
                   help="E:F pairs: from epoch E on the LR is --lr x F ('' = constant after warm-up; not given: the "
                        "paper's scaled to --epochs / 310)")
    g.add_argument("--image-size", type=at_least(16), default=224, help="training crop and validation centre-crop side")
    g.add_argument("--decode", default="pil", choices=["pil", "gpu"],
                   help="JPEG decoding: pil = in the data workers; gpu = workers read the bytes, "
                        "torchvision.io.decode_jpeg decodes and crops on the training device")
    g.add_argument("--skip-unreadable", action="store_true",
                   help="leave images that fail to decode out (the count is printed every epoch) instead of stopping")
    g.add_argument("-p", "--print-freq", type=at_least(1), default=100, help="log the training loss every N iterations")
    g.add_argument("--master_port", "--master-port", dest="master_port", type=int, default=None,
                   help="rendezvous port; multiproc.py hands it to torchrun")
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=0,
                   help="GPU of a single process; under torchrun LOCAL_RANK is used")
    g.add_argument("--resume-run", dest="resume", action="store_const", const=True, help=argparse.SUPPRESS)
    b = parser.add_argument_group("benchmarks (print images/s, write nothing)")
    b.add_argument("--benchmark-training", action="store_true", help="time training iterations")
    b.add_argument("--benchmark-inference", action="store_true", help="time inference iterations")
    b.add_argument("--bench-iterations", type=at_least(1), default=20, help="timed iterations")
    b.add_argument("--bench-warmup", type=at_least(0), default=20, help="untimed iterations first")
    s = parser.add_argument_group("ImageNet spellings of the original code")
    s.add_argument("--dense", dest="sparse", action="store_false", help="train the dense network (no masks)")
    s.add_argument("--prune-rate", dest="death_rate", type=float, default=argparse.SUPPRESS, help="= --death-rate")
    s.add_argument("--prune", dest="death", choices=DEATH_RULES, default=argparse.SUPPRESS, help="= --death")
    s.add_argument("--fp16", dest="amp", action="store_true", help="= --amp")
    for flag in ("--start-ite", "--static-loss-scale"):
        s.add_argument(flag, default=None, help=argparse.SUPPRESS)
    for flag in ("--dynamic-loss-scale", "--verbose"):
        s.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    # the paper's launch line (ERK, density 0.2, update every 4000 iterations, -b 64, -j 5) and the original
    # ImageNet code's cosine decay of the death rate within each phase
    parser.set_defaults(sparse=True, density=0.2, sparse_init="ERK", update_frequency=4000, decay_schedule="cosine",
                        epochs=310, batch_size=64, workers=5)
    return parser


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Schedule, dict]:
    """Flags -> (checked args, the run's schedule, the parser's defaults); UsageError on bad input."""
    parser = imagenet_flags()
    args = parser.parse_args(normalise_spellings(parser, sys.argv[1:] if argv is None else list(argv)))
    note = validate_imagenet(args)
    if note and World.from_env().is_main:
        print(note, flush=True)
    args.model = f"imagenet-{args.arch}"  # the ticket's registry name (models.get_model)
    return args, schedule_for("imagenet", args), parser_defaults(parser)


def check_command_line(argv: list[str]) -> None:
    """What multiproc.py checks once before torchrun starts any worker: the flags and the data root."""
    args, _, _ = parse(argv)
    check_root(args.data)


# ============================================================================ torchrun / DDP
def device_for(args: argparse.Namespace, world: World) -> torch.device:
    device = pick_device(args.device)
    if device.type == "cuda" and device.index is None:
        count = torch.cuda.device_count()
        if world.local_rank >= count:
            raise UsageError(f"process {world.local_rank} on this node has no GPU of its own (this node has {count}); "
                             f"start at most {count} processes per node (--nproc_per_node {count})")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    speed_settings(device, tf32=not args.no_tf32, note=print if world.is_main else None)
    return device


def data_parallel(world: World, device: torch.device):
    """Join torchrun's process group (NCCL on CUDA, gloo on the CPU) and wrap the model in DDP."""
    def wrap(model: nn.Module) -> nn.Module:
        if world.size == 1:
            return model
        cuda = device.type == "cuda"
        kwargs = {"device_id": device} if cuda and "device_id" in inspect.signature(
            dist.init_process_group).parameters else {}
        dist.init_process_group("nccl" if cuda else "gloo", **kwargs)
        return DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    return wrap


def derived_seed(seed: int, epoch: int, rank: int) -> int:
    """Per (seed, epoch, rank): data order and augmentation repeat exactly after --resume."""
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101) % (2 ** 62)


# ============================================================================ ImageFolder data
def imagenet_data(args: argparse.Namespace, world: World, device: torch.device):
    def build() -> DataSource:
        root = check_root(args.data)
        files = {"decode": args.decode, "skip_unreadable": args.skip_unreadable}
        train_set = image_folder(root, "train", args.image_size, **files)
        classes = list(train_set.classes)
        val_set = image_folder(root, "val", args.image_size, classes, **files)
        if len(train_set) // world.size < args.batch_size:
            raise UsageError(f"{root / 'train'} has {len(train_set)} images: fewer than one batch of "
                             f"{args.batch_size} for each of {world.size} processes; lower -b/--batch-size")
        spec = imagenet_spec(len(classes), args.image_size, len(train_set))
        sampler = DistributedSampler(train_set, num_replicas=world.size, rank=world.rank, shuffle=True,
                                     seed=args.seed, drop_last=True)
        train = DeviceBatches(image_loader(train_set, args.batch_size, args.workers, device, sampler=sampler,
                                           drop_last=True), device, spec.mean, spec.std)
        val = DeviceBatches(image_loader(val_set, args.batch_size, args.workers, device,
                                         sampler=ShardSampler(len(val_set), world.rank, world.size)),
                            device, spec.mean, spec.std)

        def start_epoch(epoch: int) -> None:
            if train.skipped and world.is_main:  # --skip-unreadable
                print(f"note: {train.skipped} unreadable training image(s) left out so far, e.g. "
                      f"{train.skipped_paths[0]}", flush=True)
            seed = derived_seed(args.seed, epoch, world.rank)
            train.set_epoch(epoch, seed)
            torch.manual_seed(seed)  # augmentation in the main process when -j 0

        return DataSource(spec, train, val, start_epoch=start_epoch,
                          counts=(spec.train_size, spec.num_classes, len(val_set)),
                          ticket_meta={"data_root": str(root), "class_names": classes},
                          summary={"name": "imagenet", "root": str(root), "num_classes": spec.num_classes,
                                   "train_images": spec.train_size, "val_images": len(val_set),
                                   "image_size": args.image_size, "mean": list(spec.mean), "std": list(spec.std)})
    return build


def sgd(args: argparse.Namespace):
    """SGD; weight decay skips every BatchNorm parameter unless --bn-weight-decay."""
    def build(model: nn.Module) -> torch.optim.Optimizer:
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
        no_decay = set() if args.bn_weight_decay else {id(p) for m in model.modules() if isinstance(m, bn)
                                                        for p in m.parameters(recurse=False)}
        groups = [{"params": [p for p in model.parameters() if id(p) not in no_decay]},
                  {"params": [p for p in model.parameters() if id(p) in no_decay], "weight_decay": 0.0}]
        return torch.optim.SGD([g for g in groups if g["params"]], lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay)
    return build


def imagenet_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    model = imagenet_resnet(args.arch, num_classes, 3, args.model_config)
    return to_channels_last(model) if args.channels_last else model


def kind_and_folder(args: argparse.Namespace, schedule: Schedule) -> tuple[str, Path]:
    kind = "dense" if not args.sparse else "static" if args.fix else "EDST" if schedule.num_tickets > 1 else "DST"
    return kind, run_folder(args.output_dir, args.model, "imagenet", kind, args.seed, args.density,
                            schedule.num_tickets)


def member_folders(argv: list[str]) -> tuple[Path, Path]:
    """launch_members' check of one run's flags: (its run folder, the output root)."""
    args, schedule, _ = parse(argv)
    return kind_and_folder(args, schedule)[1], Path(args.output_dir)


def imagenet_plan(args: argparse.Namespace, schedule: Schedule, defaults: dict, world: World) -> RunPlan:
    device = device_for(args, world)
    wrap = data_parallel(world, device)
    kind, run_dir = kind_and_folder(args, schedule)
    return RunPlan(
        program=PROG, script="imagenet", kind=kind, dataset="imagenet", model_name=args.model, run_dir=run_dir,
        schedule=schedule, device=device, data=imagenet_data(args, world, device),
        model=lambda spec: imagenet_model(args, spec.num_classes), optimizer=sgd(args),
        sparse=sparse_plan(args, sparse_init_of(args), fixed_mask=args.fix) if args.sparse else None,
        **run_settings(args),
        numbered_tickets=schedule.num_tickets > 1, criterion=nn.CrossEntropyLoss(label_smoothing=args.label_smoothing),
        topk=(1, 5), world=world, wrap_model=compiled_for_training(wrap) if args.compile else wrap,
        progress=world.is_main and not args.no_progress and sys.stderr.isatty(), log_every=args.print_freq,
        resume_free=RESUME_FREE_FLAGS | IMAGENET_RESUME_FREE, flag_defaults=defaults,
        start_note=f", {world.size} process(es), {args.arch} {args.model_config}",
        ticket_meta={"arch": args.arch, "model_config": args.model_config})


# ============================================================================ benchmarks
def benchmark(run: Run, args: argparse.Namespace, training: bool) -> dict:
    """Images/s of training or inference iterations on preloaded batches (the input pipeline excluded)."""
    parts = run.parts
    source = parts.train_loader if training else parts.val_loader
    if training:
        parts.data.start_epoch(0)
    batches = first_batches(source, min(8, len(source)))
    if not batches:
        raise UsageError("no batch to benchmark on this rank; use more images or a smaller -b")

    def work(count: int) -> None:
        cycle = (batches[i % len(batches)] for i in range(count))
        if count and training:
            train_one_epoch(parts.net, cycle, parts.optimizer, parts.masking, None, autocast=parts.autocast,
                            scaler=parts.scaler, criterion=run.plan.criterion, progress=False)
        elif count:
            evaluate_model(parts.model, cycle, autocast=parts.autocast, topk=(1, 5))

    def sync() -> None:
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)

    work(args.bench_warmup)
    sync()
    start = time.perf_counter()
    work(args.bench_iterations)
    sync()
    seconds = time.perf_counter() - start
    images = sum(batches[i % len(batches)][0].shape[0] for i in range(args.bench_iterations))
    total = run.world.all_sum([images / seconds])[0]
    what = "training" if training else "inference"
    precision = "amp" if args.amp and run.device.type == "cuda" else "fp32"
    sparsity = f"sparse density {args.density}" if parts.masking else "dense"
    run.note(f"benchmark-{what}: {total:.1f} images/s ({run.world.size} process(es), batch {args.batch_size} per "
             f"process, {args.arch} at {args.image_size}px, {precision}, {sparsity}, {run.device.type})")
    return {"mode": what, "images_per_second": total}


# ============================================================================ entry point
def main(argv: list[str] | None = None) -> dict | list:
    args, schedule, defaults = parse(argv)
    world = World.from_env(args.local_rank)
    run = Run(imagenet_plan(args, schedule, defaults, world))
    try:
        if not (args.benchmark_training or args.benchmark_inference):
            return start_run(run)
        run.build()  # benchmarks write nothing
        run.connect()
        return [benchmark(run, args, training) for training, on in ((True, args.benchmark_training),
                                                                (False, args.benchmark_inference)) if on]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    launch_members("imagenet", member_folders, distributed=True)  # --launcher slurm: one job of N nodes x G GPUs
    run_cli(main, prog=PROG)
