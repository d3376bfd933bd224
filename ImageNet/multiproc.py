#!/usr/bin/env python
"""The paper's launcher, kept so its command line works: it hands everything to torchrun.

    python multiproc.py --nproc_per_node 2 main.py --sparse_init ERK ... --master_port 4545 ... ../data/

becomes

    python -m torch.distributed.run --nproc_per_node 2 --master-port 4545 main.py --sparse_init ERK ... ../data/

Everything before the training script is passed to torchrun unchanged (``--nproc_per_node``,
``--nnodes``, ``--node_rank``, ``--master_addr``, ``--rdzv-endpoint``, ...). A ``--master_port`` among
the script's flags (where the paper's line puts it) becomes torchrun's ``--master-port`` unless the
launcher flags already set one. The script is found relative to the current folder, or else next
to this file, so ``python ImageNet/multiproc.py ... main.py ...`` also works from the repository
root. torchrun starts, watches and stops the processes (one failing stops the others); this file
manages none itself.

Before torchrun starts any worker, the launcher's own flags (``--nproc_per_node`` at least 1,
``--nnodes`` N or MIN:MAX, ``--node_rank`` below it, the master port in 1..65535 and, on the
master node, free) and main.py's flags and data root (``check_command_line``) are checked once
here: bad input is one stderr line and exit code 2, without the traceback that torchrun prints for
every failed worker.
"""
from __future__ import annotations

import errno
import importlib.util
import os
import socket
import sys
from pathlib import Path

USAGE = "usage: python multiproc.py [torchrun flags, e.g. --nproc_per_node 2] main.py [main.py flags] DATA"
_PORT_FLAGS = ("--master_port", "--master-port")


def _script_index(argv: list[str]) -> int | None:
    """Position of the training script: the first token ending in .py that is not a flag's value."""
    for i, token in enumerate(argv):
        if token.endswith(".py") and not token.startswith("-"):
            return i
    return None


def _flag_in(flags: list[str], names: tuple[str, ...]) -> str | None:
    """The value of the first of `names` in `flags` (``--flag VALUE`` or ``--flag=VALUE``)."""
    for i, token in enumerate(flags):
        name, eq, value = token.partition("=")
        if name in names:
            if eq:
                return value
            if i + 1 < len(flags):
                return flags[i + 1]
    return None


def _port_in(flags: list[str]) -> str | None:
    return _flag_in(flags, _PORT_FLAGS)


def _int(text: str | None, flag: str, low: int, high: int | None = None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{flag} {text!r} is not a whole number; pass one such as 2") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"{flag} must be {f'in {low}..{high}' if high is not None else f'at least {low}'}, "
                         f"got {value}")
    return value


def check_launcher_flags(launcher: list[str]) -> None:
    """torchrun's flags that would fail inside torchrun (a traceback per worker); ValueError naming the flag."""
    nproc = _flag_in(launcher, ("--nproc_per_node", "--nproc-per-node"))
    if nproc not in (None, "auto", "cpu", "gpu", "xpu"):
        _int(nproc, "--nproc_per_node", 1)
    nnodes = _flag_in(launcher, ("--nnodes",))
    most = 1
    if nnodes is not None:
        low, _, high = nnodes.partition(":")
        least = _int(low, "--nnodes", 1)
        most = _int(high, "--nnodes (its MAX)", least) if high else least
    rank = _int(_flag_in(launcher, ("--node_rank", "--node-rank")), "--node_rank", 0, most - 1)
    port = _int(_port_in(launcher), "--master_port", 1, 65535)
    addr = _flag_in(launcher, ("--master_addr", "--master-addr"))
    if port is not None and not rank and addr in (None, "localhost", "127.0.0.1", socket.gethostname()):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # torchrun's store binds it on this node
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("", port))
            except OSError as err:
                if err.errno != errno.EADDRINUSE:
                    raise
                raise ValueError(f"--master_port {port} is in use on this machine (another run's?); pick another "
                                 f"port") from None


def torchrun_command(argv: list[str]) -> list[str]:
    """The torchrun command line for multiproc.py's arguments (ValueError on a line without a script)."""
    idx = _script_index(argv)
    if idx is None:
        raise ValueError("no training script (main.py) in the command line")
    launcher, script, script_args = list(argv[:idx]), argv[idx], list(argv[idx + 1:])
    path = Path(script)
    if not path.is_file() and (Path(__file__).resolve().parent / script).is_file():
        path = Path(__file__).resolve().parent / script
    if _port_in(launcher) is None:
        port = _port_in(script_args)
        if port is not None:
            launcher += ["--master-port", port]
    return [sys.executable, "-m", "torch.distributed.run", *launcher, str(path), *script_args]


def check_before_launch(script: str, script_args: list[str]) -> None:
    """Bad flags or data root of this folder's main.py: one line and exit 2 now, before torchrun starts."""
    if Path(script).resolve() != (Path(__file__).resolve().parent / "main.py"):
        return  # another training script: it checks its own flags
    spec = importlib.util.spec_from_file_location("imagenet_main", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from sparselearning.errors import UsageError

    try:
        module.check_command_line(script_args)
    except UsageError as err:
        print(f"{module.PROG}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        print(__doc__)
        sys.exit(0 if argv else 2)
    try:
        cmd = torchrun_command(argv)
    except ValueError as err:
        print(f"multiproc.py: error: {err}; {USAGE}", file=sys.stderr)
        sys.exit(2)
    script_args = argv[_script_index(argv) + 1:]
    try:
        check_launcher_flags(cmd[3:len(cmd) - len(script_args) - 1])
    except ValueError as err:
        print(f"multiproc.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    check_before_launch(cmd[len(cmd) - len(script_args) - 1], script_args)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # torchrun replaces this process: its exit status and signals are the launch's


if __name__ == "__main__":
    main()
