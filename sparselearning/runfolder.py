"""Where a run writes (one layout for every training script) and the lock that makes it the only writer.

    <output-dir>/<model>/<dataset>/individual/dense/seed=<s>          one dense model
    <output-dir>/<model>/<dataset>/individual/density_<d>/seed=<s>    one sparse model
    <output-dir>/<model>/<dataset>/density_<d>/{static,DST,PF}/seed=<s>
    <output-dir>/<model>/<dataset>/density_<d>/EDST/M=<M>/seed=<s>

ensemble_freetickets.py --resume reads these folders directly.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import UsageError

KINDS = ("dense", "sparse", "static", "DST", "EDST", "PF")


def fmt_density(d: float) -> str:
    """The density in a folder name: 12 significant digits, so that densities a run can tell apart never share a
    folder (1e-07 and 4e-07 do not), while 1 - 0.8 (0.19999999999999996) is still density_0.2."""
    return f"{d:.12g}"


def run_folder(output_dir: str | os.PathLike, model: str, dataset: str, kind: str, seed: int,
               density: float = 1.0, members: int = 1) -> Path:
    """The run folder of one training run; kind is one of KINDS (members: EDST's M)."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; one of {', '.join(KINDS)}")
    root = Path(output_dir) / model / dataset
    d = f"density_{fmt_density(density)}"
    folder = {"dense": root / "individual" / "dense", "sparse": root / "individual" / d,
              "EDST": root / d / "EDST" / f"M={members}"}.get(kind, root / d / kind)
    return folder / f"seed={seed}"


def file_id(path: Path) -> tuple | None:
    """Identity of a file's current version (an atomic replace changes it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class RunLock:
    """An exclusive lock on the run folder: two runs cannot write into one folder at once.

    Taken before the folder is checked, so two runs started together cannot both find it free.
    Once held, it removes the hidden ``.<name>.*.tmp`` files that a killed writer (SIGKILL in the
    middle of an atomic save) left behind: no other process can be writing them. If the run
    fails before ``keep()`` (bad input found while checking or building), the lock file and the
    folders it created are removed again: bad input leaves nothing behind. ``enabled=False``
    (ranks other than 0, which write nothing) makes it a no-op.
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.path = run_dir, run_dir / ".lock"
        self.enabled = enabled
        self.fh = None
        self.created: list[Path] = []
        self.kept = False

    def __enter__(self):
        if not self.enabled:
            return self
        for folder in (self.run_dir, *self.run_dir.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise UsageError(f"cannot create the run folder {self.run_dir}: {folder} is a file; pass "
                                     f"another --output-dir")
                break
        self.created = [p for p in (self.path, self.run_dir, *self.run_dir.parents) if not p.exists()]
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a")
        except OSError as err:
            self._remove_created()
            raise UsageError(f"cannot write into the run folder {self.run_dir} ({err.strerror or err}); pass a "
                             f"writable --output-dir") from None
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            self.created = []  # the other run's
            raise UsageError(f"another run is writing into {self.run_dir}; wait for it or use another "
                             f"--output-dir") from None
        for stale in (*self.run_dir.glob(".*.tmp"), *self.run_dir.glob("snapshots/.*.tmp")):
            stale.unlink(missing_ok=True)
        return self

    def keep(self) -> None:
        """The run has started: what the lock created stays."""
        self.kept = True

    def _remove_created(self) -> None:
        for p in self.created:  # the lock file, then the folders, deepest first; only if still empty
            try:
                p.unlink() if p == self.path else p.rmdir()
            except OSError:
                break

    def __exit__(self, exc_type, *exc):
        if self.fh is None:
            return
        if exc_type is not None and not self.kept:
            self._remove_created()
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()
