"""The launcher's flags (--seeds, --launcher, --parallel, --wait, --slurm-*): defined here, below both the
scripts' parsers (sparselearning.cli adds them) and the launcher that reads them (sparselearning.launch)."""
from __future__ import annotations

import argparse

from .errors import OneLineArgumentParser, UsageError

LAUNCHERS = ("local", "slurm")
# launcher flags and whether each takes a value (members are launched without them)
LAUNCH_FLAGS = {"--seeds": True, "--launcher": True, "--parallel": True, "--wait": False, "--slurm-partition": True,
                "--slurm-gpus-per-node": True, "--slurm-cpus-per-task": True, "--slurm-mem-gb": True,
                "--slurm-timeout-min": True, "--slurm-account": True, "--slurm-array-parallelism": True,
                "--slurm-nodes": True, "--slurm-extra": True}


def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    """--seeds, --launcher and the SLURM flags (what launch_members reads; a single local run ignores them)."""
    g = parser.add_argument_group("ensembles and clusters (--seeds, --launcher)")
    g.add_argument("--seeds", default=None, metavar="S1,S2,...",
                   help="train one member per seed (each as with --seed S, into its own seed=S folder); "
                        "{seed} in any flag is replaced by the member's seed")
    g.add_argument("--launcher", default="local", choices=LAUNCHERS,
                   help="local: here, --parallel at a time; slurm: one SLURM job array through submitit")
    g.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="local: members running at once (CPU threads shared out between them)")
    g.add_argument("--wait", action="store_true", help="slurm: wait for the jobs, a line per member as it ends")
    add_slurm_args(g)


def add_slurm_args(g) -> None:
    """The --slurm-* flags (a parser or an argument group)."""
    g.add_argument("--slurm-partition", default=None, help="slurm: partition (sbatch --partition)")
    g.add_argument("--slurm-gpus-per-node", type=int, default=None, metavar="G",
                   help="slurm: GPUs per job (ImageNet/main.py: G processes per node, one per GPU)")
    g.add_argument("--slurm-nodes", type=int, default=1, metavar="N",
                   help="slurm: nodes per job (ImageNet/main.py: N x G processes of one DDP run)")
    g.add_argument("--slurm-cpus-per-task", type=int, default=None, metavar="C", help="slurm: CPUs per process")
    g.add_argument("--slurm-mem-gb", type=float, default=None, metavar="GB", help="slurm: memory per node")
    g.add_argument("--slurm-timeout-min", type=int, default=60 * 24, metavar="MIN",
                   help="slurm: time limit per job; a job that reaches it is requeued and resumes")
    g.add_argument("--slurm-account", default=None, help="slurm: account to charge (sbatch --account)")
    g.add_argument("--slurm-array-parallelism", type=int, default=256, metavar="K",
                   help="slurm: members of the job array running at once")
    g.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="slurm: any other sbatch option, e.g. qos=high or constraint=a100 (repeatable)")


def drop_launcher_flags(args: argparse.Namespace) -> None:
    """Remove the launcher's flags from a run's flags (no run setting; its summary does not list them); refuse
    launcher flags on a single run here (launch_members handles the rest before a run parses its flags)."""
    defaults = vars(launcher_parser().parse_args([]))
    given = {k for k, v in defaults.items() if getattr(args, k, v) != v}
    for dest in defaults:
        args.__dict__.pop(dest, None)
    stray = sorted(k for k in given if k.startswith("slurm_") or k in ("wait", "parallel"))
    if stray and not {"seeds", "launcher"} & given:
        flag = "--" + stray[0].replace("_", "-")
        raise UsageError(f"{flag} is for launches with --seeds or --launcher slurm; add one of those or drop {flag}")


def launcher_parser() -> OneLineArgumentParser:
    # no abbreviations: --seed must not read as --seeds
    parser = OneLineArgumentParser(add_help=False, allow_abbrev=False)
    add_launcher_args(parser)
    return parser
