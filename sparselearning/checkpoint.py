"""Checkpoints and tickets: atomic writes, safe loads, compact sparse storage.

A *ticket* is one trained ensemble member, self-describing: it carries the model name, class
count, input shape, dataset and normalisation, the run's flags, its validation metrics and its
masks. Sparse weights are stored as their active values plus a packed bit mask, so a ticket at
density d takes about (d + 1/32) of the dense float32 size.

Everything is saved as plain containers of tensors and primitives, so every load uses
``torch.load(..., weights_only=True)`` and a file that would run code is refused.
"""
from __future__ import annotations

import os
import pickle
import re
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import UsageError, signals_deferred

TICKET_FORMAT = "freetickets-ticket"
TICKET_VERSION = 1
RESUME_FORMAT = "freetickets-resume"

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


# --------------------------------------------------------------------------- bit packing
def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 tensor of ceil(numel / 8) bytes (big-endian bit order, as numpy.packbits)."""
    flat = mask.detach().flatten().to(torch.uint8).cpu()
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of pack_mask."""
    numel = 1
    for s in shape:
        numel *= int(s)
    bits = packed.cpu().unsqueeze(1).bitwise_and(_BIT_WEIGHTS).ne(0).flatten()
    return bits[:numel].view(*shape)


# --------------------------------------------------------------------------- atomic I/O
class WriteError(UsageError):
    """A file could not be written (full disk, unwritable folder); any earlier version of it is intact."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(f"could not write {path} ({err.strerror or err}); any earlier version of it is intact - "
                         f"free disk space or choose a writable output folder, then run the command again "
                         f"(training: add --resume)")


def _atomic_write(path: str | os.PathLike, write, mode: str) -> None:
    """Write through `write(fh)` to a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never a partial file (a killed
    writer can leave a hidden ``.<name>.*.tmp``, which no loader reads and RunLock removes). SIGINT
    and SIGTERM wait until the new file is in place (errors.signals_deferred): stopping a job keeps
    the checkpoint it was writing. An OSError (full disk, unwritable folder) becomes a WriteError
    naming `path`.
    """
    path = Path(path)
    with signals_deferred():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as err:
            raise WriteError(path, err) from None
        try:
            with os.fdopen(fd, mode) as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            if isinstance(exc, OSError):
                raise WriteError(path, exc) from None
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, atomically."""
    _atomic_write(path, lambda fh: torch.save(obj, fh), "wb")


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file (JSON, CSV), atomically."""
    _atomic_write(path, lambda fh: fh.write(text), "w")


def refuse_special_file(path: str | os.PathLike, what: str = "checkpoint") -> None:
    """UsageError if `path` exists but is no regular file or folder (a FIFO, socket or device would block
    the loader or be replaced by the next save)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing (or a dangling link): the caller says so
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device or special file"
        raise UsageError(f"{what} {path} is {kind}, not a regular file; pass a checkpoint file (.pth) written by "
                         f"these scripts")


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True; any unreadable or unsafe file becomes a UsageError."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a checkpoint file; pass the .pth file")
    refuse_special_file(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist; check the path")
    try:
        with warnings.catch_warnings():  # e.g. torch's pickle-protocol warning: keep errors to one stderr line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = " ".join(str(err).split())
        unsafe = re.search(r"GLOBAL ([\w.]+)", text)  # a function or class the file would call on loading
        if unsafe:
            raise UsageError(f"{path} was refused: loading it would call {unsafe.group(1)}, so it could run code; "
                             f"use a checkpoint written by these scripts") from None
        detail = re.search(r"WeightsUnpickler error: (.{1,80}?)(?: Check the documentation|$)", text)
        raise UsageError(f"{path} is not a plain-tensor PyTorch checkpoint ("
                         f"{detail.group(1) if detail else text[:120]}); it may be truncated, foreign or unsafe - use "
                         f"a checkpoint written by these scripts") from None
    except Exception as err:  # truncated or foreign files fail in many ways inside the unpickler
        msg = " ".join(str(err).split()).split(". ")[0][:160] or type(err).__name__
        raise UsageError(f"{path} is not a readable checkpoint ({msg}); it may be truncated or not a "
                         f"PyTorch file - use a complete checkpoint written by these scripts") from None


# --------------------------------------------------------------------------- tickets
def build_ticket(model: torch.nn.Module, masks: Mapping[str, torch.Tensor] | None, meta: Mapping[str, Any]) -> dict:
    """A ticket dict for `model`; `masks` maps parameter names to bool masks (None: dense).

    A torch.compile'd model is saved as the module it compiles (its names without ``_orig_mod.``).
    """
    model = getattr(model, "_orig_mod", model)
    masks = dict(masks or {})
    dense_state, sparse_state = {}, {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if name in masks:
            mask = masks[name].detach().cpu().bool()
            sparse_state[name] = {
                "shape": list(tensor.shape),
                "values": tensor[mask].clone(),
                "mask_bits": pack_mask(mask),
            }
        else:
            dense_state[name] = tensor.clone()
    ticket = {"format": TICKET_FORMAT, "version": TICKET_VERSION}
    ticket.update(meta)
    ticket["dense_state"] = dense_state
    ticket["sparse_state"] = sparse_state
    return ticket


def ticket_masks(ticket: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The bool masks stored in a ticket (empty for a dense ticket)."""
    return {n: unpack_mask(e["mask_bits"], tuple(e["shape"])) for n, e in ticket["sparse_state"].items()}


def ticket_state_dict(ticket: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The full dense state_dict of a ticket (inactive weights are exact zeros)."""
    state = dict(ticket["dense_state"])
    for name, entry in ticket["sparse_state"].items():
        mask = unpack_mask(entry["mask_bits"], tuple(entry["shape"]))
        full = torch.zeros(mask.shape, dtype=entry["values"].dtype)
        full[mask] = entry["values"]
        state[name] = full
    return state


def is_ticket(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == TICKET_FORMAT


def load_ticket(path: str | os.PathLike) -> dict:
    """Load and validate a ticket file."""
    obj = safe_load(path)
    if not is_ticket(obj):
        raise UsageError(f"{path} is not a FreeTickets ticket (no '{TICKET_FORMAT}' header); "
                         f"point --resume at a folder of tickets written by the training scripts")
    if obj.get("version", 0) > TICKET_VERSION:
        raise UsageError(f"{path} has ticket format version {obj['version']}, newer than this code "
                         f"({TICKET_VERSION}); update the code")
    for key in ("model", "num_classes", "in_channels", "image_size", "dense_state", "sparse_state"):
        if key not in obj:
            raise UsageError(f"{path} is a damaged ticket (missing '{key}'); retrain or restore it")
    from models import MODEL_NAMES  # local import, as in ticket_model

    if obj["model"] not in MODEL_NAMES:  # checked before a caller writes anything (or builds a path from it)
        raise UsageError(f"{path} is a ticket of an unknown model {str(obj['model'])[:80]!r}; it was written by "
                         f"other code - use tickets written by these scripts")
    return obj


def ticket_model(ticket: Mapping[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the ticket's model from the registry and load its weights strictly."""
    from models import ModelArgumentError, get_model  # local import: only ticket readers need the zoo

    try:
        model = get_model(ticket["model"], num_classes=ticket["num_classes"],
                          in_channels=ticket["in_channels"], image_size=ticket["image_size"])
    except ModelArgumentError as err:
        raise UsageError(str(err)) from None
    try:
        model.load_state_dict(ticket_state_dict(ticket), strict=True)
    except RuntimeError as err:
        raise UsageError(f"ticket for {ticket['model']} does not match the model's parameters "
                         f"({str(err).splitlines()[0][:120]}); it was written by different code") from None
    return model.to(device).eval()
