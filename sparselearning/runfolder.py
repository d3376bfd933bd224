"""Where a run writes (one layout for every training script) and the lock that makes it the only writer.

    <output-dir>/<model>/<dataset>/individual/dense/seed=<s>          one dense model
    <output-dir>/<model>/<dataset>/individual/density_<d>/seed=<s>    one sparse model
    <output-dir>/<model>/<dataset>/density_<d>/{static,DST,PF}/seed=<s>
    <output-dir>/<model>/<dataset>/density_<d>/EDST/M=<M>/seed=<s>

ensemble_freetickets.py --resume reads these folders directly.

A run folder is one run's: ``--resume FILE`` continues FILE's own run only (FILE must be the run
folder's last.pth; resuming into another --output-dir is refused rather than copied, so tickets
never end up split between two folders). ``--output-dir`` may itself be a symbolic link (to
scratch space, say); the folders below it that a run writes into may not, so nothing is written
through a link to a place nobody named.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path
from typing import Iterable

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


def check_path(flag: str, value: str | os.PathLike | None) -> None:
    """A path from the command line: not empty or blank, and no name longer than the filesystem allows."""
    if value is None:
        return
    text = os.fspath(value)
    if not text.strip():
        raise UsageError(f"{flag} is empty; pass a folder or file name (use . for the current folder)")
    long = next((part for part in Path(text).parts if len(os.fsencode(part)) > 255), None)
    if long is not None or len(os.fsencode(text)) >= 4096:
        what = f"its name {long[:40]}... has {len(os.fsencode(long))} bytes" if long else "it is over 4095 bytes"
        raise UsageError(f"{flag} is too long for the filesystem ({what}; {os.strerror(errno.ENAMETOOLONG)}); pass a "
                         f"shorter path")


def refuse_links(folders: Iterable[Path], what: str = "output folder") -> None:
    """UsageError if one of `folders` is a symbolic link: a run writes only where it was told to."""
    for folder in folders:
        if folder.is_symlink():
            raise UsageError(f"the {what} {folder} is a symbolic link (to {os.readlink(folder)}); writing through it "
                             f"would put files outside the folders named - use a real folder (--output-dir may "
                             f"itself be a link)")


def refuse_linked_outputs(out_dir: Path, named: bool) -> None:
    """An evaluation's folders: its default output folder (eval/, compare/; one named with --output-dir may be a
    link), and the plots/ and cache/ folders inside it."""
    cache = out_dir / "cache"
    inner = [out_dir / "plots", cache, *(sorted(cache.iterdir()) if cache.is_dir() and not cache.is_symlink() else [])]
    refuse_links([*([] if named else [out_dir]), *inner], "evaluation output folder")


def refuse_linked_run_folder(output_dir: str | os.PathLike, run_dir: Path) -> None:
    """The folders from below `output_dir` down to `run_dir` are real folders (or do not exist yet)."""
    root = Path(output_dir)
    refuse_links([p for p in (run_dir, *run_dir.parents) if p != root and root in p.parents], "run folder")


def check_resume_source(path: Path, run_dir: Path) -> None:
    """``--resume FILE`` continues FILE's own run: FILE must be the last.pth of the run folder these flags name."""
    if path.resolve() == (run_dir / "last.pth").resolve():
        return
    raise UsageError(f"--resume {path} belongs to another run folder than {run_dir}, where these flags write; a run "
                     f"continues in its own folder - pass that run's --output-dir and flags with plain --resume")


def missing_listed_files(run_dir: Path, tickets: Iterable[dict], also: Iterable[str] = ("last.pth",)) -> list[str]:
    """The files a run's summary lists (its tickets, last.pth) that are not on disk."""
    names = [t.get("file") for t in tickets if isinstance(t, dict) and t.get("file")] + list(also)
    return [n for n in names if not (run_dir / n).is_file()]


def holds_a_run(run_dir: Path) -> list[str]:
    """The files that make `run_dir` a run a new one must not replace silently: last.pth and tickets.

    A summary.json or train.log alone is what a run left that stopped before its first epoch ended (a
    non-finite loss at step 1, a kill): nothing worth keeping, so it does not block the folder."""
    return sorted(p.name for p in (run_dir / "last.pth", *run_dir.glob("model*.pth")) if p.exists())


LEFTOVER_AGE_S = 600  # a temporary or reservation this old belongs to no running evaluation


def remove_leftovers(folder: Path, reservations: Iterable[str] = ("results", "compare")) -> list[Path]:
    """Remove what a killed evaluation left in `folder` and its plots/: hidden ``.*.tmp`` files and 0-byte
    ``<prefix>_<id>.json`` reservations, older than LEFTOVER_AGE_S (younger ones may be another
    evaluation's, in progress). Returns what was removed."""
    old = time.time() - LEFTOVER_AGE_S
    temporaries = [*folder.glob(".*.tmp"), *(folder / "plots").glob(".*.tmp")]
    reserved = [p for prefix in reservations for p in folder.glob(f"{prefix}_*.json")]
    removed = []
    for p in temporaries + reserved:
        try:
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < old and (p in temporaries or st.st_size == 0):
                p.unlink()
                removed.append(p)
        except OSError:
            pass
    return removed


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
    (ranks other than 0, which write nothing) makes it a no-op. With ``root`` (the --output-dir),
    folders between it and the run folder that are symbolic links are refused first.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, root: str | os.PathLike | None = None):
        self.run_dir, self.path, self.root = run_dir, run_dir / ".lock", root
        self.enabled = enabled
        self.fh = None
        self.created: list[Path] = []
        self.kept = False

    def __enter__(self):
        if not self.enabled:
            return self
        if self.root is not None:
            refuse_linked_run_folder(self.root, self.run_dir)
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
