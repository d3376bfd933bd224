"""One convention for bad input: raise UsageError; entry points print one line and exit 2.

Under torchrun every process parses the same flags and meets the same bad input: the line is
printed by the first process of each node only (LOCAL_RANK 0). Once the processes have joined
their group an error may be one rank's own, so from then on every rank prints its errors.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable


class UsageError(Exception):
    """Bad user input (flags, paths, files). The message names the problem and the fix."""


def _reports_errors() -> bool:
    """This process prints bad-input errors: not under torchrun, its node's first process, or in a started group."""
    dist = sys.modules.get("torch.distributed")
    joined = dist is not None and dist.is_available() and dist.is_initialized()
    return os.environ.get("LOCAL_RANK", "0") == "0" or joined


class MaskDesyncError(RuntimeError):
    """The sparse masks differ between data-parallel ranks (raised on every rank; exit code 1)."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports errors as a single stderr line (no usage block), exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n" if _reports_errors() else None)


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None, prog: str | None = None) -> None:
    """Run an entry point: UsageError -> one stderr line and exit code 2 (no traceback); a mask desync
    between ranks (MaskDesyncError) -> one line from every rank and exit code 1."""
    prog = prog or (sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "freetickets")
    try:
        main(argv)
    except UsageError as err:
        if _reports_errors():
            print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; resume with the same command plus --resume", file=sys.stderr)
        sys.exit(130)
    except MaskDesyncError as err:
        print(f"{prog}: error: {err}; stopped (rank {os.environ.get('RANK', '0')})", file=sys.stderr, flush=True)
        sys.exit(1)
