"""Flags of the paper's training scripts that did nothing there. Every script here (training and evaluation)
accepts and ignores them, so the paper's command lines run as printed."""
from __future__ import annotations

import argparse

NO_OP_VALUE_FLAGS = ("--l1", "--decay_frequency", "--batch-size-jac", "--world-size", "--iters", "--max-threads",
                     "--start-epoch", "--save")
NO_OP_SWITCHES = ("--fp16", "--save-features", "--bench", "--mgpu", "--no_rewire_extend", "--verbose")


def add_ignored_flags(group: argparse._ArgumentGroup, values: tuple[str, ...], switches: tuple[str, ...],
                      dest_prefix: str = "", help: str | None = argparse.SUPPRESS) -> None:
    """Accept `values` (one value each) and `switches` (none) in `group`, doing nothing with them."""
    for flag in values:
        kw = {"metavar": "V"} if help is not argparse.SUPPRESS else {}
        group.add_argument(flag, default=None, help=help, **_dest(flag, dest_prefix), **kw)
    for flag in switches:
        group.add_argument(flag, action="store_true", help=help, **_dest(flag, dest_prefix))


def _dest(flag: str, prefix: str) -> dict:
    return {"dest": prefix + flag.strip("-").replace("-", "_")} if prefix else {}
