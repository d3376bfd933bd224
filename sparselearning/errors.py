"""One convention for bad input: raise UsageError; entry points print one line and exit 2.

Under torchrun every process parses the same flags and meets the same bad input: the line is
printed by the first process of each node only (LOCAL_RANK 0). Once the processes have joined
their group an error may be one rank's own, so from then on every rank prints its errors.

SIGTERM (what SLURM and Kubernetes send before they kill a job) ends a run like Ctrl-C (SIGINT):
one line saying how to resume, exit code 128 + the signal's number (143, 130). A signal that
arrives while a checkpoint is being written (``signals_deferred``) waits until the file is in
place, so the work it saves is not lost; a second signal stops at once (the earlier version of
the file is intact either way: the writes are atomic).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator

from .core.errors import MaskDesyncError

__all__ = ["MaskDesyncError", "OneLineArgumentParser", "UsageError", "run_cli", "signals_deferred"]


class UsageError(Exception):
    """Bad user input (flags, paths, files). The message names the problem and the fix."""


def _reports_errors() -> bool:
    """This process prints bad-input errors: not under torchrun, its node's first process, or in a started group."""
    dist = sys.modules.get("torch.distributed")
    joined = dist is not None and dist.is_available() and dist.is_initialized()
    return os.environ.get("LOCAL_RANK", "0") == "0" or joined


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports errors as a single stderr line (no usage block), exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n" if _reports_errors() else None)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM while run_cli runs (a KeyboardInterrupt, so code that cleans up on Ctrl-C does so)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_deferral = {"depth": 0, "pending": None}  # signals_deferred nesting, and the signal that came meanwhile


def _on_stop_signal(signum: int, frame) -> None:
    if _deferral["depth"] and _deferral["pending"] is None:
        _deferral["pending"] = signum  # raised when the write in progress is complete
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM (under run_cli) wait until the block is done, then interrupt; a second one does not wait.

    Only in the main thread, where Python runs signal handlers (elsewhere the block is a plain block)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferral["depth"] += 1
    try:
        yield
    finally:
        _deferral["depth"] -= 1
        signum = None if _deferral["depth"] else _deferral["pending"]
        if signum is not None:
            _deferral["pending"] = None
    if signum is not None:
        raise Interrupted(signum)


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted in the main thread (handlers restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _on_stop_signal) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _deferral.update(depth=0, pending=None)


TRAINING_STOPPED = "the last complete checkpoint is intact - resume with the same command plus --resume"


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None, prog: str | None = None,
            on_stop: str = TRAINING_STOPPED) -> None:
    """Run an entry point: UsageError -> one stderr line and exit code 2 (no traceback); SIGINT/SIGTERM -> one
    line saying what is kept and how to go on (``on_stop``; training: resume), exit code 130/143; a mask desync
    between ranks (MaskDesyncError) -> one line from every rank and exit code 1."""
    prog = prog or (sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "freetickets")
    try:
        with _stop_signals_interrupt():
            main(argv)
    except UsageError as err:
        if _reports_errors():
            print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        if os.environ.get("LOCAL_RANK", "0") == "0":  # under torchrun every process gets the signal
            print(f"{prog}: stopped by {signal.Signals(signum).name}; {on_stop}", file=sys.stderr, flush=True)
        sys.exit(128 + signum)
    except MaskDesyncError as err:
        print(f"{prog}: error: {err}; stopped (rank {os.environ.get('RANK', '0')})", file=sys.stderr, flush=True)
        sys.exit(1)
