"""Checkpoints and tickets: atomic writes, safe loads, compact sparse storage.

A *ticket* is one trained ensemble member, self-describing: it carries the model name, class
count, input shape, dataset and normalisation, the run's flags, its validation metrics and its
masks. Sparse weights are stored as their active values plus a packed bit mask, so a ticket at
density d takes about (d + 1/32) of the dense float32 size.

Everything is saved as plain containers of tensors and primitives, so every load uses
``torch.load(..., weights_only=True)`` and a file that would run code is refused.
"""
from __future__ import annotations

import errno
import math
import os
import pickle
import re
import shutil
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

    def __init__(self, path: Path, err: OSError, needed: int | None = None):
        self.path, self.reason = path, err.strerror or str(err)
        space = ""
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            space = f", {_free_bytes(path.parent) / 2 ** 20:.1f} MiB free in {path.parent}"
            if needed:
                space += f", about {needed / 2 ** 20:.1f} MiB needed"
        super().__init__(f"could not write {path} ({self.reason}{space}); any earlier version of it is intact - "
                         f"free disk space or choose a writable output folder, then run the command again "
                         f"(training: add --resume)")


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _umask() -> int:
    """The process's umask (read without changing it where /proc says; else set and restored at once)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# torch.save's zip writer turns the OSError of a full disk into a RuntimeError of its own
_ZIP_WRITE_FAILED = re.compile(r"unexpected pos|PytorchStreamWriter failed|file write failed|write failed", re.I)


def _as_os_error(exc: BaseException, tmp: str) -> OSError | None:
    """The OSError behind a failed write: itself, or torch.save's RuntimeError on a full (or failing) disk."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, RuntimeError) and _ZIP_WRITE_FAILED.search(str(exc)):
        code = errno.ENOSPC if _free_bytes(Path(tmp).parent) < 2 ** 20 else errno.EIO
        return OSError(code, os.strerror(code))
    return None


def _atomic_write(path: str | os.PathLike, write, mode: str, needed: int | None = None) -> None:
    """Write through `write(fh)` to a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never a partial file (a killed
    writer can leave a hidden ``.<name>.*.tmp``, which no loader reads and RunLock removes). SIGINT
    and SIGTERM wait until the new file is in place (errors.signals_deferred): stopping a job keeps
    the checkpoint it was writing. The file gets the mode an ordinary ``open`` would give it
    (0o666 less the umask; mkstemp alone makes it 0o600, unreadable to colleagues sharing the
    folder). An OSError (full disk, unwritable folder), or torch.save's RuntimeError when its zip
    writer meets one, becomes a WriteError naming `path` (on a full disk with the free space and
    `needed`, the file's approximate size).
    """
    path = Path(path)
    with signals_deferred():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as err:
            raise WriteError(path, err) from None
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, mode) as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            err = _as_os_error(exc, tmp)
            if err is not None:
                raise WriteError(path, err, needed) from None
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a container (about the size torch.save writes)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, atomically."""
    _atomic_write(path, lambda fh: torch.save(obj, fh), "wb", _tensor_bytes(obj))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file (JSON, CSV), atomically."""
    _atomic_write(path, lambda fh: fh.write(text), "w", len(text.encode()))


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

    from .preflight import check_ticket_fits

    def build() -> torch.nn.Module:
        return get_model(ticket["model"], num_classes=ticket["num_classes"], in_channels=ticket["in_channels"],
                         image_size=ticket["image_size"])

    try:
        shape = (int(ticket["in_channels"]), int(ticket["image_size"]), int(ticket["image_size"]))
        check_ticket_fits(build, shape, torch.device(device).type, ticket.get("model"))
        model = build()
    except ModelArgumentError as err:
        raise UsageError(str(err)) from None
    try:
        model.load_state_dict(ticket_state_dict(ticket), strict=True)
    except RuntimeError as err:
        raise UsageError(f"ticket for {ticket['model']} does not match the model's parameters "
                         f"({str(err).splitlines()[0][:120]}); it was written by different code") from None
    return model.to(device).eval()


# --------------------------------------------------------------------------- resume checkpoints
DAMAGED_RESUME = "written by an older or damaged run: start again without --resume (or with --overwrite)"
_RNG_BYTES = torch.Generator().get_state().numel()  # a CPU generator's state (torch's and the loader's)


def _resume_problem(state: Mapping[str, Any]) -> str | None:
    """What is wrong with a resume checkpoint's layout, keys, types or ranges (None: nothing).

    Checked before anything is built from it, so a damaged or hand-edited last.pth is one line, not a
    traceback deep inside the optimizer or the RNG."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_rng(v: Any) -> bool:
        return torch.is_tensor(v) and v.dtype == torch.uint8 and v.dim() == 1 and v.numel() == _RNG_BYTES

    types = {"flags": dict, "model": dict, "optimizer": dict, "rng": dict, "best": dict, "tickets": dict,
             "history": list, "flops": dict}
    missing = [k for k in ("epoch", "elapsed", *types) if k not in state]
    if missing:
        return f"missing {', '.join(missing)}"
    wrong = [k for k, t in types.items() if not isinstance(state[k], t)]
    if wrong:
        return f"{', '.join(wrong)} of the wrong type"
    epoch = state["epoch"]
    if not is_int(epoch) or epoch < 0:
        return f"epoch {epoch!r} is not a non-negative whole number"
    if len(state["history"]) != epoch or not all(isinstance(r, dict) for r in state["history"]):
        return f"{len(state['history'])} history rows for {epoch} epochs"
    elapsed = state["elapsed"]
    if not isinstance(elapsed, (int, float)) or not math.isfinite(elapsed) or elapsed < 0:
        return f"elapsed time {elapsed!r}"
    if not all(torch.is_tensor(v) for v in state["model"].values()):
        return "model weights that are not tensors"
    if not isinstance(state["optimizer"].get("param_groups"), list) or not isinstance(state["optimizer"].get(
            "state"), dict):
        return "no optimizer state"
    rng = state["rng"]
    if not (is_rng(rng.get("torch")) and is_rng(rng.get("loader")) and isinstance(rng.get("cuda"), list)):
        return f"random-number states that are not {_RNG_BYTES}-byte generator states"
    if not all(isinstance(k, str) and k.lstrip("-").isdigit() and isinstance(v, dict)
               for k, v in state["tickets"].items()):
        return "a ticket list of the wrong layout"
    if not isinstance(state["flops"].get("total"), (int, float)) or not isinstance(state["flops"].get("densities"),
                                                                                   dict):
        return "no FLOPs count"
    return _masking_problem(state.get("masking"))


def _masking_problem(masking: Any) -> str | None:
    if masking is None:
        return None
    if not isinstance(masking, dict) or not all(isinstance(masking.get(k), dict) for k in ("masks", "explored",
                                                                                           "budgets")):
        return "sparse-training state of the wrong layout"
    steps = masking.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        return f"step count {steps!r}"
    gen = masking.get("generator_state")
    if not (torch.is_tensor(gen) and gen.dtype == torch.uint8 and gen.numel() == _RNG_BYTES):
        return "a mask generator state of the wrong size"
    for name, mask in masking["masks"].items():
        explored = masking["explored"].get(name)
        if not torch.is_tensor(mask) or not torch.is_tensor(explored) or explored.shape != mask.shape:
            return f"a mask or exploration record for {str(name)[:60]} that is missing or of another shape"
    return None


def check_resume_state(state: Any, path: str | os.PathLike) -> dict:
    """A resume checkpoint (format already checked) whose keys, types and ranges are those a run writes."""
    problem = _resume_problem(state)
    if problem is not None:
        raise UsageError(f"{path} was {DAMAGED_RESUME} ({problem})")
    return state

