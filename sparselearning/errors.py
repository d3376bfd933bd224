"""One convention for bad input: raise UsageError; entry points print one line and exit 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable


class UsageError(Exception):
    """Bad user input (flags, paths, files). The message names the problem and the fix."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports errors as a single stderr line (no usage block), exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run an entry point; turn UsageError into one stderr line and exit code 2 (no traceback)."""
    try:
        main(argv)
    except UsageError as err:
        prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "freetickets"
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; resume with the same command plus --resume", file=sys.stderr)
        sys.exit(130)
