"""From flags to a RunPlan: the CIFAR/MNIST scripts (main_individual.py, main_DST.py, main_EDST.py, main_PF.py)
and the settings every training script shares (``sparse_plan``, ``run_settings``, also used by ImageNet/main.py).

``main(script, argv)`` is the one entry point of the four scripts: parse and check the flags, build the
plan, run it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from models import ModelArgumentError, get_model

from . import checkpoint as ckpt
from .cli import build_parser, parser_defaults, schedule_for, validate
from .core.masking import MaskingConfig
from .data import DatasetSpec, make_loaders
from .data.sources import data_files
from .errors import UsageError
from .runfolder import run_folder
from .loop import compiled_for_training, pick_device, speed_settings, to_channels_last
from .train import DataSource, Run, RunPlan, SparsePlan, start_run


def main(script: str, argv: list[str] | None = None) -> dict:
    """main_<script>.py: parse the flags, check them, and run; returns the run's summary."""
    args, defaults = parse(script, argv)
    return start_run(Run(cifar_plan(script, args, defaults)))


def parse(script: str, argv: list[str] | None) -> tuple[argparse.Namespace, dict]:
    """main_<script>.py's flags, checked (UsageError on bad input), and the parser's defaults."""
    parser = build_parser(script)
    args = parser.parse_args(argv)
    validate(script, args)
    return args, parser_defaults(parser)


def cifar_kind(script: str, args: argparse.Namespace) -> str:
    if script == "individual":
        return "sparse" if args.sparse else "dense"
    if script == "DST" and args.fix:
        return "static"
    return script


def cifar_run_dir(script: str, args: argparse.Namespace) -> Path:
    density = 1 - args.PF_rate if script == "PF" else args.density
    return run_folder(args.output_dir, args.model, args.data, cifar_kind(script, args), args.seed, density,
                      getattr(args, "model_num", 1))


def sparse_init_of(args: argparse.Namespace) -> dict:
    """Masking.add_module's arguments for --density / --sparse-init / --erk-power-scale."""
    if args.sparse_init == "pruning":  # global magnitude pruning of the initial weights
        return {"sparse_init": "pruning", "pf_rate": 1 - args.density}
    return {"density": args.density, "sparse_init": args.sparse_init, "erk_power_scale": args.erk_power_scale}


def sparse_plan(args: argparse.Namespace, init: dict, fixed_mask: bool) -> SparsePlan:
    """The sparse-training flags every script shares, for masks that start as ``init`` (add_module's arguments)."""
    masking = MaskingConfig(death_rate=args.death_rate, death_mode=args.death, growth_mode=args.growth,
                            redistribution_mode=args.redistribution, death_rate_schedule=args.decay_schedule,
                            final_death_rate=args.final_death_rate,
                            update_frequency=None if fixed_mask else args.update_frequency,
                            threshold=args.death_threshold, momentum_beta=args.momentum, seed=args.seed,
                            fused_step=not args.no_fused_step)
    return SparsePlan(init=init, masking=masking, stop_updates_frac=args.stop_updates_frac,
                      reexplore_rate=args.large_death_rate)


def run_settings(args: argparse.Namespace) -> dict:
    """The RunPlan fields every script takes from its common flags (and the flags themselves)."""
    return {"seed": args.seed, "batch_size": args.batch_size, "flags": dict(vars(args)), "resume": args.resume,
            "overwrite": args.overwrite, "amp": args.amp, "tensorboard": args.tensorboard}


def cifar_plan(script: str, args: argparse.Namespace, flag_defaults: dict) -> RunPlan:
    """main_<script>.py's run: torchvision-format data in memory, a registry model, SGD or Adam, the paper's plan."""
    device = pick_device(args.device)
    speed_settings(device, tf32=not args.no_tf32)
    kind, run_dir = cifar_kind(script, args), cifar_run_dir(script, args)

    def data() -> DataSource:
        gen = torch.Generator().manual_seed(args.seed)
        train, val, _, spec = make_loaders(args.data, args.data_dir, args.batch_size, args.test_batch_size,
                                           args.valid_split, device, gen)
        return DataSource(spec, train, val, generator=gen,
                          summary={"name": args.data, "files_read": data_files(args.data, args.data_dir)})

    def model(spec: DatasetSpec) -> nn.Module:
        try:
            net = get_model(args.model, num_classes=spec.num_classes, in_channels=spec.in_channels,
                            image_size=spec.image_size)
        except ModelArgumentError as err:  # e.g. an architecture that needs larger images than the dataset's
            raise UsageError(f"{err}; choose another --model or --data") from None
        return to_channels_last(net) if args.channels_last else net

    def optimizer(net: nn.Module) -> torch.optim.Optimizer:
        if args.optimizer == "sgd":
            return torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.l2,
                                   nesterov=False)
        return torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.l2)

    sparse = None
    if script == "PF":
        sparse = sparse_plan(args, {"sparse_init": "pruning", "pf_rate": args.PF_rate}, fixed_mask=True)
    elif args.sparse or script in ("DST", "EDST"):
        sparse = sparse_plan(args, sparse_init_of(args), fixed_mask=args.fix)
    fresh_note = None
    if script == "PF":
        fresh_note = (f"note: {run_dir} holds no last.pth yet: starting from the pretrained model {args.pretrained} "
                      f"(what --resume means in the paper's PF command)")
    return RunPlan(program=f"main_{script}.py", script=script, kind=kind, dataset=args.data, model_name=args.model,
                   run_dir=run_dir, schedule=schedule_for(script, args), device=device, data=data, model=model,
                   optimizer=optimizer, sparse=sparse, **run_settings(args), save_every=args.save_every,
                   numbered_tickets=script == "EDST",
                   prepare_model=(lambda net, spec: load_pretrained(net, spec, args)) if script == "PF" else None,
                   wrap_model=compiled_for_training() if args.compile else None,
                   progress=not args.no_progress, log_every=args.log_interval, flag_defaults=flag_defaults,
                   fresh_resume_note=fresh_note)


def load_pretrained(model: nn.Module, spec: DatasetSpec, args: argparse.Namespace) -> None:
    """PF: a dense checkpoint, loaded strictly (the original's strict=False could load nothing)."""
    path = args.pretrained
    obj = ckpt.safe_load(path)
    if ckpt.is_ticket(obj):
        if obj["model"] != args.model or obj["num_classes"] != spec.num_classes:
            raise UsageError(f"--pretrained {path} is a {obj['model']} with {obj['num_classes']} classes, not a "
                             f"{args.model} for {args.data}; pass the matching dense checkpoint")
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
    bad = next((k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()
                and not torch.isfinite(v).all()), None)
    if bad is not None:  # else the first loss is NaN and the message blames the learning rate
        raise UsageError(f"--pretrained {path} holds non-finite weights (NaN or inf in {bad[:80]}); it comes from a "
                         f"run that diverged - pass a checkpoint of a run that trained normally")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UsageError(f"--pretrained {path} does not fit {args.model} "
                         f"({str(err).splitlines()[0][:100]}); pass a checkpoint of the same architecture") from None
