"""Tickets to evaluate: finding them under a folder, loading them safely and checking them.

Every check here runs before the evaluation creates its output folder, so a bad ticket costs one
stderr line naming the file and leaves nothing behind.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..checkpoint import load_ticket, ticket_model, ticket_state_dict, unpack_mask
from ..errors import UsageError
from .records import json_safe

__all__ = ["natural_key", "discover_tickets", "discover_snapshot_runs", "Entry", "load_entries", "canonical_dataset",
           "check_members", "check_ticket", "ticket_spec", "build_model", "rel_name"]

_TICKET_SUFFIXES = (".pth", ".pt")
_SKIP_FILES = {"last.pth", "last.pt"}


# --------------------------------------------------------------------------- discovery
def natural_key(rel: str | Path) -> tuple:
    """Numeric-aware sort key for a relative path: 'seed=2/model_10' sorts after 'seed=2/model_9'."""
    parts = Path(rel).parts
    return tuple(tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", part)) for part in parts)


def _is_hidden_or_tmp(name: str) -> bool:
    return name.startswith(".") or name.endswith(".tmp") or name == "__pycache__"


def _walk(root: Path, exclude: Iterable[Path]) -> Iterable[tuple[Path, list[str], list[str]]]:
    excluded = {p.resolve() for p in exclude if p is not None}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames
                             if not _is_hidden_or_tmp(d) and (here / d).resolve() not in excluded)
        yield here, dirnames, filenames


def discover_tickets(root: str | Path, exclude: Sequence[Path] = ()) -> list[Path]:
    """Ticket files under ``root`` (or ``root`` itself if it is a file), naturally sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    found = []
    for here, dirnames, filenames in _walk(root, exclude):
        if "snapshots" in dirnames:
            dirnames.remove("snapshots")
        for f in filenames:
            if _is_hidden_or_tmp(f) or f in _SKIP_FILES or not f.endswith(_TICKET_SUFFIXES):
                continue
            found.append(here / f)
    return sorted(found, key=lambda p: natural_key(p.relative_to(root)))


def discover_snapshot_runs(root: str | Path, exclude: Sequence[Path] = ()) -> list[tuple[Path, list[Path]]]:
    """``(run folder, naturally sorted snapshot files)`` for every ``snapshots/`` folder under ``root``."""
    root = Path(root)
    if root.is_file():
        root = root.parent
    runs = []
    for here, dirnames, _ in _walk(root, exclude):
        if here.name != "snapshots":
            continue
        dirnames[:] = []  # snapshots are not nested
        files = [here / f for f in os.listdir(here)
                 if (here / f).is_file() and f.endswith(_TICKET_SUFFIXES) and not _is_hidden_or_tmp(f)]
        if files:
            runs.append((here.parent, sorted(files, key=lambda p: natural_key(p.name))))
    return sorted(runs, key=lambda r: natural_key(r[0].relative_to(root) if r[0] != root else Path(".")))


# --------------------------------------------------------------------------- loading
@dataclass
class Entry:
    """One ticket (a member, or a snapshot for t-SNE)."""
    path: Path
    name: str  # path relative to --resume, '/'-separated
    sha256: str
    ticket: dict = field(repr=False)

    @property
    def meta(self) -> dict:
        return {k: v for k, v in self.ticket.items() if k not in ("dense_state", "sparse_state")}

    def describe(self) -> dict:
        keys = ("model", "dataset", "num_classes", "kind", "role", "seed", "epoch", "ticket_index", "val_acc",
                "val_loss", "density")
        out = {"name": self.name, "path": str(self.path), "sha256": self.sha256}
        out.update({k: json_safe(self.ticket.get(k)) for k in keys if k in self.ticket})
        return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rel_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def load_entries(paths: Sequence[Path], root: Path) -> list[Entry]:
    """Load tickets safely (weights_only) and check each one; a bad file raises UsageError naming it."""
    entries = []
    for p in paths:
        try:
            ticket = load_ticket(p)
        except UsageError:
            raise
        except Exception as err:  # e.g. IndexError from a truncated pickle stream: still one line
            msg = " ".join(str(err).split())[:160] or type(err).__name__
            raise UsageError(f"{p} is not a readable checkpoint ({type(err).__name__}: {msg}); it may be "
                             f"truncated or not a PyTorch file - use a complete ticket written by the training "
                             f"scripts") from None
        check_ticket(ticket, p)
        entries.append(Entry(path=p, name=rel_name(p, root), sha256=_sha256(p), ticket=ticket))
    return entries


# --------------------------------------------------------------------------- checks
def _damaged(path: Path, what: str) -> UsageError:
    return UsageError(f"{path} is a damaged ticket ({what}); retrain it or restore the file from a backup")


def _check_sizes(ticket: dict, path: Path) -> None:
    for key in ("num_classes", "in_channels", "image_size"):
        v = ticket.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
            raise _damaged(path, f"{key} {v!r}, expected a positive integer")


def _check_sparse_entries(ticket: dict, path: Path) -> None:
    for name, entry in ticket["sparse_state"].items():
        try:
            mask = unpack_mask(entry["mask_bits"], tuple(entry["shape"]))
            n_values = int(entry["values"].numel())
        except Exception as err:  # a malformed entry fails in many ways: name the layer, one line
            raise _damaged(path, f"layer {name}: {type(err).__name__}") from None
        if n_values != int(mask.sum()):
            raise _damaged(path, f"layer {name} stores {n_values} values for a mask of {int(mask.sum())} weights")


def _check_finite(ticket: dict, path: Path) -> None:
    tensors = list(ticket["dense_state"].items()) + [(n, e["values"]) for n, e in ticket["sparse_state"].items()]
    for name, t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UsageError(f"{path} has non-finite weights (NaN or inf in {name}); its training diverged - "
                             f"evaluate an earlier ticket or retrain it")


def _check_normalization(ticket: dict, path: Path) -> None:
    norm = ticket.get("normalization") or {}
    for key in ("mean", "std"):
        v = norm.get(key)
        if v is None:
            continue
        values = v if isinstance(v, (list, tuple)) else [v]
        try:
            values = [float(x) for x in values]
        except (TypeError, ValueError):
            raise _damaged(path, f"normalisation {key} {str(v)[:40]!r} is not a list of numbers") from None
        if not all(math.isfinite(x) for x in values) or (key == "std" and min(values, default=1.0) <= 0):
            raise UsageError(f"{path} records the normalisation {key} {values}, which would turn every input into "
                             f"NaN or inf; the ticket is damaged - retrain it or restore the file")


def check_ticket(ticket: dict, path: Path) -> None:
    """Refuse a ticket the model could not be rebuilt from, or whose outputs would be NaN."""
    _check_sizes(ticket, path)
    _check_sparse_entries(ticket, path)
    _check_finite(ticket, path)
    _check_normalization(ticket, path)


def canonical_dataset(name: str | None) -> str | None:
    if name is None:
        return None
    key = re.sub(r"[-_\s]", "", str(name).lower())
    return {"fmnist": "fashionmnist", "cifar10": "cifar10", "cifar100": "cifar100"}.get(key, key)


def check_members(entries: Sequence[Entry], model: str | None = None, dataset: str | None = None,
                  what: str = "ticket") -> tuple[str, str]:
    """All entries share model, classes, input shape and dataset; returns (model, dataset)."""
    first = entries[0]

    def sig(e: Entry) -> tuple:
        t = e.ticket
        return (t["model"], int(t["num_classes"]), int(t["in_channels"]), int(t["image_size"]),
                canonical_dataset(t.get("dataset")) or canonical_dataset(dataset))

    ref = sig(first)
    if ref[4] is None:
        raise UsageError(f"{first.name} does not record its dataset; pass --dataset")
    for e in entries[1:]:
        s = sig(e)
        if s != ref:
            field_names = ("model", "class count", "input channels", "image size", "dataset")
            i = next(k for k in range(5) if s[k] != ref[k])
            raise UsageError(f"{what} {e.name} differs from {first.name} in {field_names[i]} ({s[i]} vs {ref[i]}); "
                             f"evaluate tickets of one architecture and dataset together (point --resume at a "
                             f"narrower folder)")
    if model is not None and model != ref[0]:
        raise UsageError(f"--model {model} disagrees with the tickets ({first.name} is a {ref[0]}); drop --model "
                         f"or point --resume at {model} tickets")
    if dataset is not None and canonical_dataset(dataset) != ref[4]:
        raise UsageError(f"--dataset {dataset} disagrees with the tickets ({first.name} was trained on {ref[4]}); "
                         f"drop --dataset or point --resume at {dataset} tickets")
    return ref[0], ref[4]


# --------------------------------------------------------------------------- model and inputs of a ticket
def build_model(e: Entry, device: torch.device) -> torch.nn.Module:
    """The ticket's model on ``device``; a state that does not fit the model is a one-line error naming the file."""
    try:
        ticket_state_dict(e.ticket)
    except Exception as err:
        raise UsageError(f"{e.path} is a damaged ticket ({type(err).__name__} rebuilding its weights); retrain it "
                         f"or restore the file from a backup") from None
    try:
        return ticket_model(e.ticket, device)
    except UsageError as err:
        raise UsageError(f"{e.path}: {err}") from None
    except Exception as err:  # e.g. an image size the architecture cannot take
        msg = " ".join(str(err).split())[:120]
        raise UsageError(f"{e.path}: its {e.ticket['model']} could not be built ({type(err).__name__}: {msg}); "
                         f"the ticket's metadata is damaged - retrain it or restore the file") from None


def ticket_spec(e: Entry, default):
    """The dataset spec ``default`` with the ticket's own normalisation and input shape.

    Returns ``(spec, note)``: ``note`` says when the ticket records no normalisation (the defaults are used).
    """
    t = e.ticket
    norm = t.get("normalization") or {}
    mean, std = norm.get("mean"), norm.get("std")
    ch = int(t["in_channels"])
    note = None
    if mean is None or std is None:
        mean, std = default.mean, default.std
        note = f"{e.name}: no normalisation recorded; used the {default.name} defaults"
    mean = tuple(float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean]))
    std = tuple(float(v) for v in (std if isinstance(std, (list, tuple)) else [std]))
    if len(mean) != ch or len(std) != ch:
        if len(mean) == 1 and len(std) == 1:
            mean, std = mean * ch, std * ch
        else:
            raise UsageError(f"{e.path} records a normalisation for {len(mean)} channels but has {ch} input "
                             f"channels; the ticket is damaged")
    return dataclasses.replace(default, mean=mean, std=std, in_channels=ch, image_size=int(t["image_size"])), note
