"""Evaluation of FreeTickets ensembles: every mode of the paper from one forward pass per ticket.

``ensemble_freetickets.py`` is a thin wrapper around :func:`main`; library users call
:func:`evaluate` with an :class:`EvalConfig`.

Pipeline
--------
1. **Discovery.** Every ``*.pth``/``*.pt`` under ``--resume`` (recursively, natural sort of the
   relative path, so ``seed=2`` precedes ``seed=10`` and ``model_2`` precedes ``model_10``) is a
   member, except ``last.pth``/``last.pt`` (resume checkpoints), anything under ``snapshots/``
   (per-epoch tickets, read only by the ``tsne`` mode), hidden files and folders (atomic-write
   temporaries), ``*.tmp`` and the output folder itself. Any other file that is not a ticket is an
   error, never silently skipped.
2. **Validation.** Tickets are loaded with ``weights_only=True``; all members must share model,
   class count, input shape and dataset (a one-line error names the differing ticket); ``--model``
   and ``--dataset``, when given, must agree with them.
3. **Logits.** Each ticket runs forward once per input set (the test split, each OoD set, each
   corruption file or generated corruption cell, the t-SNE subset for snapshots), with the
   ticket's own training normalisation. Logits are cached as float32 ``.npy`` under
   ``<output>/cache/<dataset>/<input set>/<sha256 of the ticket file>.npy``, so a later run of any
   mode on the same tickets does no forward pass (``--no-cache`` disables reading and writing).
4. **Metrics** come from :mod:`sparselearning.evaluation.metrics` on the cached logits; the ensemble averages
   member probabilities.

Outputs (all under the output folder, default ``<resume>/eval``; nothing is written elsewhere
except datasets downloaded into ``--data-dir``, which ``--no-download`` forbids)::

    results_<run_id>.json   config, members, every row, matrices, reliability bins, t-SNE points
    results_<run_id>.csv    long format: run_id,mode,dataset,split,corruption,severity,member,metric,value
    results_latest.json     copies of the newest run's two files (the only files ever replaced)
    results_latest.csv
    plots/<run_id>_<name>.png
    cache/...               the logit cache

``run_id`` is the local time ``YYYYmmdd-HHMMSS`` (plus ``-2``, ``-3``... when taken), so no run
overwrites an earlier run's results.

Row conventions (CSV ``member`` column): a member's relative path; ``ensemble`` (mean of all
members' probabilities); ``ensemble_first_<k>``; ``members_mean`` / ``members_std`` (sample std);
``<a>|<b>`` for an unordered pair; ``<b>||<a>`` for KL(p_b || p_a); ``pairs_mean`` for a mean over
pairs. Metrics are fractions: ``acc``, ``nll``, ``brier``, ``ece<B>`` (``--ece-bins`` B, default
15), ``ece_ft14`` (the original code's 14 bins), OoD ``<score>_auroc``, ``<score>_aupr_in`` (ID
positive), ``<score>_aupr_out`` (OoD positive), ``<score>_fpr95_oodpos``, ``<score>_fpr95_idpos``.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from . import metrics as Mx
from ..checkpoint import atomic_write_text, load_ticket, ticket_masks, ticket_model
from ..errors import OneLineArgumentParser, UsageError

__all__ = [
    "MODES", "EvalConfig", "Entry", "discover_tickets", "discover_snapshot_runs", "natural_key",
    "load_entries", "check_members", "parse_modes", "Evaluator", "evaluate", "build_parser", "main",
    "RESULT_COLUMNS",
]

MODES: tuple[str, ...] = ("predict", "disagreement", "calibration", "KD", "ood", "corruption", "tsne")
_MODE_ALIASES = {m.lower(): m for m in MODES} | {"kl": "KD"}
RESULT_COLUMNS = ("run_id", "mode", "dataset", "split", "corruption", "severity", "member", "metric", "value")
DEFAULT_OOD = {
    "cifar10": ("svhn", "cifar100", "gaussian", "uniform"),
    "cifar100": ("svhn", "cifar10", "gaussian", "uniform"),
    "fashionmnist": ("mnist", "gaussian", "uniform"),
    "mnist": ("fashionmnist", "gaussian", "uniform"),
}
_OOD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95_oodpos", "fpr95_idpos")
_TICKET_SUFFIXES = (".pth", ".pt")
_SKIP_FILES = {"last.pth", "last.pt"}


# =========================================================================== config
@dataclass
class EvalConfig:
    resume: str
    modes: Sequence[str] = ("predict",)
    dataset: str | None = None
    model: str | None = None
    seed: int = 17
    test_batch_size: int = 128
    data_dir: str | None = None
    device: str = "auto"
    ece_bins: int = 15
    ood_data: Sequence[str] | None = None  # None: the dataset's defaults (unloadable ones skipped)
    ood_score: Sequence[str] = ("msp",)
    cf_c_path: str | None = None
    corruptions: str | None = None  # generated | standard | all | None (auto)
    tsne_samples: int = 1000
    output_dir: str | None = None
    no_cache: bool = False
    download: bool = True
    command: Sequence[str] | None = None  # recorded in the results
    modes_explicit: bool = True  # False when the modes came from 'all' (missing inputs then skip a mode)


def parse_modes(text: str) -> tuple[list[str], bool]:
    """'predict,KD' -> (['predict', 'KD'], True); 'all' -> (every mode, False).

    Modes may be separated by commas, '+' or '_' (the original substring-matched, so
    ``predict_calibration`` ran both). Case-insensitive; 'kl' is a synonym of 'KD'.
    """
    parts = [p for p in re.split(r"[,+_\s]+", str(text).strip()) if p]
    if not parts:
        raise UsageError("--mode is empty; pass one of " + ", ".join(MODES) + ", all, or several separated by commas")
    chosen: list[str] = []
    explicit = True
    for p in parts:
        if p.lower() == "all":
            explicit = False
            chosen.extend(MODES)
            continue
        mode = _MODE_ALIASES.get(p.lower())
        if mode is None:
            raise UsageError(f"unknown mode {p!r}; use one of {', '.join(MODES)}, all, or several separated by commas")
        chosen.append(mode)
    ordered = [m for m in MODES if m in chosen]
    return ordered, explicit


# =========================================================================== discovery
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


# =========================================================================== tickets
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
        out.update({k: _plain(self.ticket.get(k)) for k in keys if k in self.ticket})
        return out


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def load_entries(paths: Sequence[Path], root: Path) -> list[Entry]:
    """Load tickets safely (weights_only); a bad file raises UsageError naming it."""
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
        entries.append(Entry(path=p, name=_rel(p, root), sha256=_sha256(p), ticket=ticket))
    return entries


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


# =========================================================================== forward pass
def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=None, file=sys.stderr,
                dynamic_ncols=True)


def _forward_logits(model: torch.nn.Module, images: torch.Tensor, spec, batch_size: int,
                    device: torch.device, desc: str = "forward") -> torch.Tensor:
    """Logits (N, C) float32 on the CPU of ``model`` on uint8 ``images`` normalised with ``spec``."""
    from ..data import BatchLoader

    dummy = torch.zeros(images.shape[0], dtype=torch.int64)
    loader = BatchLoader(images, dummy, batch_size, shuffle=False, augment=False, spec=spec, device=device)
    outs = []
    model.eval()
    with torch.inference_mode(), _progress(images.shape[0], desc) as bar:
        for x, _ in loader:
            outs.append(model(x).float().cpu())
            bar.update(x.shape[0])
    if not outs:
        raise UsageError(f"{desc}: no images to evaluate")
    return torch.cat(outs)


def _fingerprint(*tensors: torch.Tensor) -> str:
    """Short content hash of tensors (cache keys follow the data, not just its name)."""
    h = hashlib.sha1()
    for t in tensors:
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:12]


def _adapt_images(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Convert uint8 images to the ticket's channel count and size (as the OoD loader does)."""
    from .. import data as D

    if images.shape[1] != channels:
        images = D.to_channels(images, channels)
    if images.shape[2] != size or images.shape[3] != size:
        images = D.to_size(images, size)
    return images.contiguous()


@dataclass
class Source:
    """An input set: cache key, size, labels (None for OoD) and a lazy image provider."""
    key: str
    n: int
    labels: torch.Tensor | None
    make_images: Callable[[], torch.Tensor]
    desc: str
    _images: torch.Tensor | None = None

    def images(self) -> torch.Tensor:
        if self._images is None:
            self._images = self.make_images()
            if self._images.shape[0] != self.n:
                raise UsageError(f"{self.desc}: expected {self.n} images, got {self._images.shape[0]}")
        return self._images

    def release(self) -> None:
        self._images = None


# =========================================================================== output helpers
def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], out: Callable[[str], None]) -> None:
    cells = [[str(h) for h in header]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out("")
    out(f"== {title} ==")
    for k, r in enumerate(cells):
        line = "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        out(line.rstrip())
        if k == 0:
            out("  ".join("-" * w for w in widths))


def _finite(v: Any) -> Any:
    """JSON-safe: non-finite floats become None, tensors lists."""
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return _finite(v.item())
    return v


def _save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _short(names: Sequence[str]) -> list[str]:
    """Short labels for plots: the shortest unique path suffixes."""
    parts = [n.split("/") for n in names]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return list(names)


# =========================================================================== evaluator
class Evaluator:
    """Runs the requested modes; see the module docstring. ``out`` receives printed lines."""

    def __init__(self, cfg: EvalConfig, out: Callable[[str], None] = print):
        self.cfg = cfg
        self.out = out
        self.rows: list[dict] = []
        self.extras: dict[str, Any] = {}
        self.plots: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.notes: list[str] = []
        self.stats = {"forward_passes": 0, "cache_hits": 0}
        self._models: dict[str, torch.nn.Module] = {}
        self._logits_mem: dict[tuple[str, str], torch.Tensor] = {}

    # ------------------------------------------------------------------ setup
    def _validate_flags(self) -> None:
        c = self.cfg
        if not isinstance(c.ece_bins, int) or c.ece_bins < 1:
            raise UsageError(f"--ece-bins must be a positive integer, got {c.ece_bins}; e.g. 15")
        if not isinstance(c.test_batch_size, int) or c.test_batch_size < 1:
            raise UsageError(f"--test-batch-size must be a positive integer, got {c.test_batch_size}")
        if not isinstance(c.tsne_samples, int) or c.tsne_samples < 1:
            raise UsageError(f"--tsne-samples must be a positive integer, got {c.tsne_samples}; e.g. 1000")
        for s in c.ood_score:
            if s not in Mx.OOD_SCORES:
                raise UsageError(f"unknown --ood-score {s!r}; use {', '.join(Mx.OOD_SCORES)} or all")
        unknown = [m for m in c.modes if m not in MODES]
        if unknown or not c.modes:
            raise UsageError(f"unknown mode(s) {unknown}; use {', '.join(MODES)}")
        dev = str(c.device).lower()
        if dev == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        elif dev == "cpu":
            self.device = torch.device("cpu")
        elif dev.startswith("cuda"):
            if not torch.cuda.is_available():
                raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
            self.device = torch.device(dev)
        else:
            raise UsageError(f"--device must be auto, cpu or cuda, got {c.device!r}")

    def _skip_or_fail(self, mode: str, reason: str, fix: str) -> None:
        if self.cfg.modes_explicit:
            raise UsageError(f"{mode}: {reason}; {fix}")
        self.skipped[mode] = reason
        self.out(f"note: skipping {mode}: {reason} ({fix})")

    def prepare(self) -> None:
        from .. import data as D

        c = self.cfg
        self._validate_flags()
        root = Path(c.resume).expanduser()
        if not root.exists():
            raise UsageError(f"--resume {c.resume} does not exist; point it at a folder of tickets (model*.pth)")
        self.root = root if root.is_dir() else root.parent
        self.out_dir = Path(c.output_dir).expanduser() if c.output_dir else self.root / "eval"
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UsageError(f"--output-dir {self.out_dir} is a file; pass a folder")
        paths = discover_tickets(root, exclude=[self.out_dir])
        if not paths:
            raise UsageError(f"no tickets (*.pth) found under {root}; point --resume at a training run folder "
                             f"(it holds model.pth or model_<k>.pth)")
        self.members = load_entries(paths, self.root)
        self.model_name, self.dataset = check_members(self.members, c.model, c.dataset)
        seen: dict[str, str] = {}
        for e in self.members:
            if e.sha256 in seen:
                self.out(f"warning: {e.name} is an identical copy of {seen[e.sha256]}; it counts twice")
            seen.setdefault(e.sha256, e.name)
            if e.ticket.get("role") == "snapshot":
                self.out(f"warning: {e.name} is a per-epoch snapshot, not a selected ticket; it is evaluated "
                         f"as a member (snapshots belong in a snapshots/ folder)")
        t0 = self.members[0].ticket
        self.M = len(self.members)
        self.modes = list(c.modes)
        if self.dataset == "imagenet":
            self._prepare_imagenet(t0)
        else:
            self.spec = D.get_spec(self.dataset)
            if int(t0["num_classes"]) != self.spec.num_classes:
                raise UsageError(f"{self.members[0].name} has {t0['num_classes']} classes but {self.dataset} has "
                                 f"{self.spec.num_classes}; the ticket's dataset entry is wrong")
            self.test_images, self.test_labels = D.load_split(self.dataset, "test", c.data_dir, c.download)
            self._test_key = f"test-{_fingerprint(self.test_images, self.test_labels)}"
        self.num_classes = self.spec.num_classes
        self.n_test = int(self.test_labels.shape[0])

        for mode in ("disagreement", "KD"):
            if mode in self.modes and self.M < 2:
                self._skip_or_fail(mode, f"needs at least 2 tickets, found {self.M} under {root}",
                                   "point --resume at an ensemble's folder")
                self.modes.remove(mode)
        if "tsne" in self.modes:
            self.snapshot_runs = discover_snapshot_runs(root, exclude=[self.out_dir])
            n_pts = sum(len(f) for _, f in self.snapshot_runs)
            if not self.snapshot_runs or n_pts + self.M < 3:
                why = (f"no per-epoch snapshots (snapshots/epoch_<e>.pth) under {root}" if not self.snapshot_runs
                       else f"only {n_pts + self.M} checkpoints under {root}, t-SNE needs at least 3")
                self._skip_or_fail("tsne", why, "train with --save-every K to record function-space trajectories")
                self.modes.remove("tsne")
        if "corruption" in self.modes:
            self._prepare_corruption()
        if "ood" in self.modes:
            self._prepare_ood()

    def _prepare_imagenet(self, t0: dict) -> None:
        """ImageNet's val split is streamed from the ImageFolder root (too large to hold in memory)."""
        from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD, image_folder, imagenet_spec

        if not self.cfg.data_dir:
            raise UsageError("--data imagenet needs --data-dir: the ImageNet root holding train/ and val/")
        size = int(t0["image_size"])
        val = image_folder(self.cfg.data_dir, "val", size, t0.get("class_names"))
        norm = t0.get("normalization") or {}
        self.spec = imagenet_spec(int(t0["num_classes"]), size, 0, norm.get("mean", IMAGENET_MEAN),
                                  norm.get("std", IMAGENET_STD))
        self.test_images = None
        self.test_labels = torch.tensor(val.targets, dtype=torch.int64)
        self._test_key = "test-" + hashlib.sha1("\n".join(p for p, _ in val.samples).encode()).hexdigest()[:12]
        for mode in ("ood", "corruption", "tsne"):
            if mode in self.modes:
                self._skip_or_fail(mode, "is not available for ImageNet here",
                                   "use predict, disagreement, calibration or KD")
                self.modes.remove(mode)

    def _imagenet_logits(self, e: Entry, model: torch.nn.Module) -> torch.Tensor:
        from ..data.imagenet import imagenet_val_batches

        spec = self._spec_for(e)
        batches, _ = imagenet_val_batches(self.cfg.data_dir, spec.image_size, self.cfg.test_batch_size, self.device,
                                          mean=spec.mean, std=spec.std, classes=e.ticket.get("class_names"))
        outs = []
        with torch.inference_mode(), _progress(self.n_test, f"{e.name} on imagenet val") as bar:
            for x, _ in batches:
                outs.append(model(x).float().cpu())
                bar.update(x.shape[0])
        return torch.cat(outs)

    def _prepare_corruption(self) -> None:
        from .. import data as D

        c = self.cfg
        kind = str(c.corruptions).strip() if c.corruptions else ("all" if c.cf_c_path else "generated")
        chosen: list[str] | None = None
        if kind not in ("generated", "standard", "all"):
            chosen = [t.strip() for t in kind.split(",") if t.strip()]
            kind = "named" if c.cf_c_path else "generated"
        if kind == "generated":
            from ..data.corruptions import CORRUPTIONS

            names = list(CORRUPTIONS)
            if chosen is not None:
                bad = [n for n in chosen if n not in CORRUPTIONS]
                if bad or not chosen:
                    raise UsageError(f"--corruptions: unknown corruption(s) {', '.join(bad) or '(none)'}; use "
                                     f"generated, standard, all or names from: {', '.join(CORRUPTIONS)}")
                names = list(dict.fromkeys(chosen))
            self.corruption_kind = "generated"
            self.gen_names = names
            return
        self.corruption_kind = kind
        if not c.cf_c_path:
            raise UsageError(f"--corruptions {kind} reads the released CIFAR-10-C/100-C files; pass --cf_c_path "
                             f"DIR (or use --corruptions generated)")
        if self.dataset not in ("cifar10", "cifar100"):
            raise UsageError(f"--cf_c_path holds CIFAR-C images but the tickets are {self.dataset} models; use "
                             f"--corruptions generated")
        present = D.list_cifar_c(c.cf_c_path)
        if kind == "standard":
            names = [n for n in D.CIFAR_C_STANDARD if n in present]
        elif kind == "named":
            bad = [n for n in chosen or [] if n not in present]
            if bad or not chosen:
                raise UsageError(f"--corruptions: {', '.join(bad) or '(none)'} not found in {c.cf_c_path}; "
                                 f"present: {', '.join(present) or 'none'}")
            names = list(dict.fromkeys(chosen))
        else:
            names = list(present)
        if not names:
            raise UsageError(f"no {'standard ' if kind == 'standard' else ''}corruption .npy files in "
                             f"{c.cf_c_path}; download CIFAR-10-C/100-C there")
        if not (Path(c.cf_c_path) / "labels.npy").is_file():
            raise UsageError(f"{Path(c.cf_c_path) / 'labels.npy'} is missing; CIFAR-C folders hold labels.npy")
        self.cfc_names = names

    def _prepare_ood(self) -> None:
        from .. import data as D

        c = self.cfg
        explicit = c.ood_data is not None
        names = list(c.ood_data) if explicit else list(DEFAULT_OOD.get(self.dataset, ("gaussian", "uniform")))
        self.ood_sets: dict[str, torch.Tensor] = {}
        like = self.spec
        for name in names:
            key = str(name).lower()
            if canonical_dataset(key) == self.dataset:
                raise UsageError(f"--ood-data {name} is the in-distribution dataset; pick another set")
            gen = torch.Generator().manual_seed(int(c.seed) * 1009 + zlib.crc32(key.encode()))
            try:
                imgs = D.ood_images(key, like, None if key not in ("gaussian", "uniform") else self.n_test,
                                    c.data_dir, gen) if c.download else self._ood_no_download(key, like, gen)
            except UsageError as err:
                if explicit:
                    raise
                self.notes.append(f"ood set {key} skipped: {err}")
                self.out(f"note: skipping OoD set {key} ({str(err)[:200]}); pass --ood-data to choose the sets")
                continue
            if imgs.shape[0] > self.n_test:  # a random, seeded subset the size of the ID test set
                idx = torch.randperm(imgs.shape[0], generator=gen)[: self.n_test].sort().values
                imgs = imgs[idx]
            self.ood_sets[key] = imgs
        if not self.ood_sets:
            self._skip_or_fail("ood", "no OoD set could be loaded", "pass --ood-data gaussian,uniform or put the "
                               "OoD datasets in --data-dir")
            self.modes.remove("ood")

    def _ood_no_download(self, key: str, like, gen) -> torch.Tensor:
        from .. import data as D

        if key in ("gaussian", "uniform"):
            return D.ood_images(key, like, self.n_test, self.cfg.data_dir, gen)
        D.load_split(key, "test", self.cfg.data_dir, download=False)  # raises when missing
        return D.ood_images(key, like, None, self.cfg.data_dir, gen)

    # ------------------------------------------------------------------ logits
    def _spec_for(self, e: Entry):
        t = e.ticket
        norm = t.get("normalization") or {}
        mean, std = norm.get("mean"), norm.get("std")
        ch = int(t["in_channels"])
        if mean is None or std is None:
            mean, std = self.spec.mean, self.spec.std
            self.notes.append(f"{e.name}: no normalisation recorded; used the {self.dataset} defaults")
        mean = tuple(float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean]))
        std = tuple(float(v) for v in (std if isinstance(std, (list, tuple)) else [std]))
        if len(mean) != ch or len(std) != ch:
            if len(mean) == 1 and len(std) == 1:
                mean, std = mean * ch, std * ch
            else:
                raise UsageError(f"{e.name} records a normalisation for {len(mean)} channels but has {ch} input "
                                 f"channels; the ticket is damaged")
        return dataclasses.replace(self.spec, mean=mean, std=std, in_channels=ch, image_size=int(t["image_size"]))

    def _model(self, e: Entry, keep: bool) -> torch.nn.Module:
        m = self._models.get(e.sha256)
        if m is None:
            m = ticket_model(e.ticket, self.device)
            if keep:
                self._models[e.sha256] = m
        return m

    def _cache_path(self, e: Entry, source: Source) -> Path:
        return self.out_dir / "cache" / self.dataset / source.key / f"{e.sha256[:32]}.npy"

    def logits(self, e: Entry, source: Source, keep_model: bool = True) -> torch.Tensor:
        """(N, C) float32 logits of one ticket on one input set (cache, else one forward pass)."""
        mem_key = (e.sha256, source.key)
        if mem_key in self._logits_mem:
            return self._logits_mem[mem_key]
        path = self._cache_path(e, source)
        use_cache = not self.cfg.no_cache
        if use_cache and path.is_file():
            try:
                arr = np.load(path, allow_pickle=False)
                if arr.shape == (source.n, self.num_classes) and arr.dtype == np.float32 and np.isfinite(arr).all():
                    self.stats["cache_hits"] += 1
                    out = torch.from_numpy(arr)
                    if source.key == self._test_source.key:
                        self._logits_mem[mem_key] = out
                    return out
            except (ValueError, OSError, EOFError):
                pass
            self.out(f"note: cache file {path} was unreadable or stale; recomputing it")
        t = e.ticket
        model = self._model(e, keep_model)
        if self.dataset == "imagenet" and source.key == self._test_source.key:
            out = self._imagenet_logits(e, model)
        else:
            images = _adapt_images(source.images(), int(t["in_channels"]), int(t["image_size"]))
            out = _forward_logits(model, images, self._spec_for(e), self.cfg.test_batch_size, self.device,
                                  desc=f"{e.name} on {source.desc}")
        self.stats["forward_passes"] += 1
        if out.shape != (source.n, self.num_classes):
            raise UsageError(f"{e.name} produced logits of shape {tuple(out.shape)} on {source.desc}, expected "
                             f"{(source.n, self.num_classes)}; the ticket does not fit this dataset")
        if use_cache:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                try:
                    with os.fdopen(fd, "wb") as fh:
                        np.save(fh, out.numpy().astype(np.float32), allow_pickle=False)
                    os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            except OSError as err:  # a full disk costs the cache entry, not the evaluation
                self.out(f"warning: could not write the logit cache {path} ({err.strerror or err}); continuing")
        if source.key == self._test_source.key:
            self._logits_mem[mem_key] = out
        return out

    def member_logits(self, source: Source) -> torch.Tensor:
        """(M, N, C) float32 member logits on ``source``."""
        return torch.stack([self.logits(e, source) for e in self.members])

    def member_log_probs(self, source: Source) -> torch.Tensor:
        """(M, N, C) float64 member log-probabilities on ``source``."""
        return Mx.log_probs_from_logits(self.member_logits(source))

    # ------------------------------------------------------------------ rows
    def _row(self, mode: str, member: str, metric: str, value: float, split: str = "test",
             corruption: str | None = None, severity: int | str | None = None) -> None:
        self.rows.append({"mode": mode, "dataset": self.dataset, "split": split, "corruption": corruption,
                          "severity": severity, "member": member, "metric": metric, "value": float(value)})

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.members]

    def _plot_path(self, name: str) -> Path:
        return self.out_dir / "plots" / f"{self.run_id}_{name}.png"

    # ------------------------------------------------------------------ modes
    def mode_predict(self) -> None:
        lp = self.member_log_probs(self._test_source)
        y = self.test_labels
        accs = [Mx.accuracy(lp[i], y) for i in range(self.M)]
        nlls = [Mx.nll(lp[i], y) for i in range(self.M)]
        table = []
        for name, a, n in zip(self.names, accs, nlls):
            self._row("predict", name, "acc", a)
            self._row("predict", name, "nll", n)
            table.append([name, a, n])
        for label, fn in (("members_mean", 0), ("members_std", 1)):
            a, n = Mx.mean_std(accs)[fn], Mx.mean_std(nlls)[fn]
            self._row("predict", label, "acc", a)
            self._row("predict", label, "nll", n)
            table.append([label, a, n])
        ens = Mx.ensemble_log_probs(lp)
        ea, en = Mx.accuracy(ens, y), Mx.nll(ens, y)
        self._row("predict", "ensemble", "acc", ea)
        self._row("predict", "ensemble", "nll", en)
        table.append(["ensemble", ea, en])
        _table(f"predict: {self.dataset} test, N={self.n_test}, M={self.M} (ensemble = mean of probabilities)",
               ["member", "acc", "nll"], table, self.out)
        curve = []
        for k in range(1, self.M + 1):
            ek = Mx.ensemble_log_probs(lp[:k])
            a, n = Mx.accuracy(ek, y), Mx.nll(ek, y)
            self._row("predict", f"ensemble_first_{k}", "acc", a)
            self._row("predict", f"ensemble_first_{k}", "nll", n)
            curve.append([f"ensemble_first_{k}", a, n])
        _table("predict: ensembles of the first k members", ["member", "acc", "nll"], curve, self.out)

    def mode_disagreement(self) -> None:
        lp = self.member_log_probs(self._test_source)
        y = self.test_labels
        d = Mx.disagreement_matrix(lp)
        extra: dict[str, Any] = {"members": self.names, "disagreement": d.tolist()}
        table = []
        for i in range(self.M):
            for j in range(i + 1, self.M):
                self._row("disagreement", f"{self.names[i]}|{self.names[j]}", "disagreement", float(d[i, j]))
        mean_d = Mx.mean_over_pairs(d)
        err = 1.0 - Mx.mean_std([Mx.accuracy(lp[i], y) for i in range(self.M)])[0]
        self._row("disagreement", "pairs_mean", "disagreement", mean_d)
        table.append(["pairs_mean", "disagreement", mean_d])
        if err > 0:
            self._row("disagreement", "pairs_mean", "disagreement_over_error", mean_d / err)
            table.append(["pairs_mean", "disagreement_over_error", mean_d / err])
        masks = [ticket_masks(e.ticket) for e in self.members]
        jac = None
        if all(masks) and all(set(m) == set(masks[0]) for m in masks):
            jac = torch.eye(self.M, dtype=torch.float64)
            ham = torch.zeros(self.M, self.M, dtype=torch.float64)
            for i, m in enumerate(masks):
                act = sum(int(v.sum()) for v in m.values())
                tot = sum(v.numel() for v in m.values())
                self._row("disagreement", self.names[i], "mask_density", act / tot)
            for i in range(self.M):
                for j in range(i + 1, self.M):
                    ov = Mx.mask_overlap(masks[i], masks[j])
                    jac[i, j] = jac[j, i] = ov["jaccard"]
                    ham[i, j] = ham[j, i] = ov["hamming"]
                    pair = f"{self.names[i]}|{self.names[j]}"
                    self._row("disagreement", pair, "mask_jaccard", ov["jaccard"])
                    self._row("disagreement", pair, "mask_hamming", ov["hamming"])
            mj, mh = Mx.mean_over_pairs(jac), Mx.mean_over_pairs(ham)
            self._row("disagreement", "pairs_mean", "mask_jaccard", mj)
            self._row("disagreement", "pairs_mean", "mask_hamming", mh)
            table += [["pairs_mean", "mask_jaccard", mj], ["pairs_mean", "mask_hamming", mh]]
            extra["mask_jaccard"], extra["mask_hamming"] = jac.tolist(), ham.tolist()
        else:
            self.out("note: mask overlap needs sparse tickets with masks on the same layers; skipped")
        self.extras["disagreement"] = extra
        _table(f"disagreement: pairwise top-1 disagreement matrix (M={self.M}, no offset)",
               ["member"] + [str(i) for i in range(self.M)],
               [[f"{i}: {self.names[i]}"] + [float(v) for v in d[i]] for i in range(self.M)], self.out)
        if jac is not None:
            _table("disagreement: mask Jaccard overlap matrix", ["member"] + [str(i) for i in range(self.M)],
                   [[f"{i}: {self.names[i]}"] + [float(v) for v in jac[i]] for i in range(self.M)], self.out)
        _table("disagreement: summary", ["member", "metric", "value"], table, self.out)
        plt = _pyplot()
        n_panels = 2 if jac is not None else 1
        fig, axes = plt.subplots(1, n_panels, figsize=(6.0 * n_panels, 5.0), squeeze=False)
        labels = _short(self.names)
        panels = [(d, "prediction disagreement", "RdBu_r")] + ([(jac, "mask Jaccard overlap", "viridis")]
                                                                if jac is not None else [])
        for ax, (mat, title, cmap) in zip(axes[0], panels):
            im = ax.imshow(mat.numpy(), cmap=cmap)
            ax.set_title(title)
            ax.set_xticks(range(self.M), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(self.M), labels, fontsize=7)
            for i in range(self.M):
                for j in range(self.M):
                    r, g, b_, _ = im.cmap(im.norm(float(mat[i, j])))
                    ink = "k" if 0.299 * r + 0.587 * g + 0.114 * b_ > 0.55 else "w"
                    ax.text(j, i, f"{float(mat[i, j]):.3f}", ha="center", va="center", fontsize=7, color=ink)
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        p = self._plot_path("disagreement")
        _save_figure(fig, p)
        plt.close(fig)
        self.plots["disagreement"] = str(p)

    def mode_calibration(self) -> None:
        lp = self.member_log_probs(self._test_source)
        y = self.test_labels
        b = self.cfg.ece_bins
        ece_name = f"ece{b}"
        cols = ["acc", ece_name, "ece_ft14", "nll", "brier"]

        def stats(logp: torch.Tensor) -> list[float]:
            p = logp.exp()
            return [Mx.accuracy(logp, y), Mx.ece(p, y, b), Mx.ece_freetickets(p, y), Mx.nll(logp, y), Mx.brier(p, y)]

        table, per = [], []
        for i, name in enumerate(self.names):
            s = stats(lp[i])
            per.append(s)
            table.append([name] + s)
            for c, v in zip(cols, s):
                self._row("calibration", name, c, v)
        for label, k in (("members_mean", 0), ("members_std", 1)):
            vals = [Mx.mean_std([s[j] for s in per])[k] for j in range(len(cols))]
            table.append([label] + vals)
            for c, v in zip(cols, vals):
                self._row("calibration", label, c, v)
        ens = Mx.ensemble_log_probs(lp)
        s = stats(ens)
        table.append(["ensemble"] + s)
        for c, v in zip(cols, s):
            self._row("calibration", "ensemble", c, v)
        _table(f"calibration: ECE ({b} equal-width bins, top-label; ece_ft14 = original code's 14 bins), NLL, Brier",
               ["member"] + cols, table, self.out)
        rel = {"ensemble": Mx.reliability_bins(ens.exp(), y, b)}
        for i, name in enumerate(self.names):
            rel[name] = Mx.reliability_bins(lp[i].exp(), y, b)
        self.extras["calibration"] = {"ece_bins": b, "reliability": rel}
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5.5, 5))
        r = rel["ensemble"]
        edges = np.asarray(r["edges"])
        centers = (edges[:-1] + edges[1:]) / 2
        acc = np.array([np.nan if v is None else v for v in r["accuracy"]])
        ax.bar(centers, np.nan_to_num(acc), width=1.0 / b, edgecolor="k", alpha=0.7, label="ensemble accuracy")
        for i, name in enumerate(_short(self.names)):
            rr = rel[self.names[i]]
            ma = np.array([np.nan if v is None else v for v in rr["accuracy"]])
            mc = np.array([np.nan if v is None else v for v in rr["confidence"]])
            ax.plot(mc, ma, marker=".", lw=0.8, alpha=0.6, label=name if self.M <= 8 else None)
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"reliability ({self.dataset}, ensemble ECE {s[1]:.4f})")
        ax.legend(fontsize=7, loc="upper left")
        p = self._plot_path("reliability")
        _save_figure(fig, p)
        plt.close(fig)
        self.plots["reliability"] = str(p)

    def mode_kd(self) -> None:
        lp = self.member_log_probs(self._test_source)
        k = Mx.kl_matrix(lp)
        sym = (k + k.T) / 2
        for a in range(self.M):
            for b in range(self.M):
                if a != b:
                    self._row("KD", f"{self.names[b]}||{self.names[a]}", "kl", float(k[a, b]))
        mean_kl = Mx.mean_over_pairs(k, ordered=True)
        mean_sym = Mx.mean_over_pairs(sym)
        p = lp.exp()
        mi = float(Mx.mutual_information(p).mean())
        ee = float(Mx.expected_entropy(p).mean())
        pe = float(Mx.predictive_entropy(Mx.ensemble_probs(p)).mean())
        self._row("KD", "pairs_mean", "kl", mean_kl)
        self._row("KD", "pairs_mean", "kl_symmetric", mean_sym)
        self._row("KD", "ensemble", "mutual_information", mi)
        self._row("KD", "ensemble", "expected_entropy", ee)
        self._row("KD", "ensemble", "predictive_entropy", pe)
        self.extras["KD"] = {"members": self.names, "kl": k.tolist(), "kl_symmetric": sym.tolist(),
                             "convention": "kl[a][b] = mean over test samples of KL(p_b || p_a)"}
        _table(f"KD: KL(p_col || p_row) matrix over the test set (M={self.M}, every ordered pair)",
               ["member"] + [str(i) for i in range(self.M)],
               [[f"{i}: {self.names[i]}"] + [float(v) for v in k[i]] for i in range(self.M)], self.out)
        _table("KD: summary", ["member", "metric", "value"],
               [["pairs_mean", "kl", mean_kl], ["pairs_mean", "kl_symmetric", mean_sym],
                ["ensemble", "mutual_information", mi], ["ensemble", "expected_entropy", ee],
                ["ensemble", "predictive_entropy", pe]], self.out)
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5.2, 4.4))
        im = ax.imshow(k.numpy(), cmap="magma")
        labels = _short(self.names)
        ax.set_xticks(range(self.M), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(self.M), labels, fontsize=7)
        ax.set_xlabel("b")
        ax.set_ylabel("a")
        ax.set_title(f"KL(p_b || p_a), mean {mean_kl:.4f}")
        fig.colorbar(im, ax=ax, fraction=0.046)
        path = self._plot_path("kl")
        _save_figure(fig, path)
        plt.close(fig)
        self.plots["KD"] = str(path)

    def mode_ood(self) -> None:
        id_logits = self.member_logits(self._test_source)
        y_lp = Mx.log_probs_from_logits(id_logits)
        scores = list(self.cfg.ood_score)
        table = []
        roc = {}
        for k, (name, imgs) in enumerate(self.ood_sets.items()):
            src = Source(key=f"ood-{name}-n{imgs.shape[0]}-{_fingerprint(imgs)}", n=int(imgs.shape[0]), labels=None,
                         make_images=lambda imgs=imgs: imgs, desc=f"OoD {name}")
            o_logits = self.member_logits(src)
            o_lp = Mx.log_probs_from_logits(o_logits)
            split = f"ood:{name}"
            for score in scores:
                per_member = []
                for i, mname in enumerate(self.names):
                    if score == "mi":
                        continue  # identically 0 for a single model
                    r = Mx.ood_metrics(Mx.ood_scores(score, y_lp[i:i + 1], id_logits[i:i + 1]),
                                       Mx.ood_scores(score, o_lp[i:i + 1], o_logits[i:i + 1]))
                    per_member.append(r)
                    for mt in _OOD_METRICS:
                        self._row("ood", mname, f"{score}_{mt}", r[mt], split=split)
                    table.append([name, score, mname] + [r[mt] for mt in _OOD_METRICS])
                if per_member:
                    for label, j in (("members_mean", 0), ("members_std", 1)):
                        vals = [Mx.mean_std([r[mt] for r in per_member])[j] for mt in _OOD_METRICS]
                        for mt, v in zip(_OOD_METRICS, vals):
                            self._row("ood", label, f"{score}_{mt}", v, split=split)
                        table.append([name, score, label] + vals)
                s_in = Mx.ood_scores(score, y_lp, id_logits)
                s_out = Mx.ood_scores(score, o_lp, o_logits)
                r = Mx.ood_metrics(s_in, s_out)
                for mt in _OOD_METRICS:
                    self._row("ood", "ensemble", f"{score}_{mt}", r[mt], split=split)
                table.append([name, score, "ensemble"] + [r[mt] for mt in _OOD_METRICS])
                if score == scores[0]:
                    roc[name] = (s_in.numpy(), s_out.numpy(), r["auroc"])
        self.extras["ood"] = {"sets": list(self.ood_sets), "scores": scores, "positive_class": "OoD",
                              "notes": "auroc is the same for either positive class; aupr_in: ID positive; "
                                       "aupr_out and fpr95_oodpos: OoD positive; fpr95_idpos: ID positive",
                              "skipped": [n for n in self.notes if n.startswith("ood set")]}
        _table(f"ood: {self.dataset} test (ID) vs each OoD set; OoD is the positive class unless named",
               ["set", "score", "member", "auroc", "aupr_in", "aupr_out", "fpr95_oodpos", "fpr95_idpos"],
               table, self.out)
        from sklearn.metrics import roc_curve

        plt = _pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
        for name, (s_in, s_out, auc) in roc.items():
            yy = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
            fpr, tpr, _ = roc_curve(yy, np.r_[s_in, s_out])
            axes[0].plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
            axes[1].hist(s_out, bins=40, alpha=0.45, density=True, label=f"OoD {name}")
        first = next(iter(roc.values()))
        axes[1].hist(first[0], bins=40, alpha=0.6, density=True, label=f"ID {self.dataset}", color="k",
                     histtype="step")
        axes[0].plot([0, 1], [0, 1], "k:", lw=1)
        axes[0].set_xlabel("false positive rate (ID flagged)")
        axes[0].set_ylabel("true positive rate (OoD detected)")
        axes[0].set_title(f"ensemble ROC, score {scores[0]}")
        axes[0].legend(fontsize=8)
        axes[1].set_title(f"ensemble OoD score ({scores[0]}; higher = more OoD)")
        axes[1].legend(fontsize=8)
        path = self._plot_path("ood")
        _save_figure(fig, path)
        plt.close(fig)
        self.plots["ood"] = str(path)

    def _corruption_sources(self) -> list[tuple[str, Source, torch.Tensor | None]]:
        """(corruption name, source, severity per row or None when the source is one severity)."""
        from .. import data as D

        c = self.cfg
        out = []
        if self.corruption_kind == "generated":
            from ..data.corruptions import corrupt

            for name in self.gen_names:
                ci = zlib.crc32(name.encode())
                for sev in range(1, 6):
                    def make(name=name, sev=sev, ci=ci):
                        gen = torch.Generator().manual_seed(int(c.seed) * 1000003 + ci * 10 + sev)
                        return corrupt(self.test_images, name, sev, gen)

                    src = Source(key=f"gen-{name}-s{sev}-seed{c.seed}-{self._test_source.key}", n=self.n_test,
                                 labels=self.test_labels, make_images=make, desc=f"{name} severity {sev}")
                    out.append((name, src, sev))
            return out
        folder = Path(c.cf_c_path)
        for name in self.cfc_names:
            f = folder / f"{name}.npy"
            st = f.stat()
            _, labels, severity = D.load_cifar_c(c.cf_c_path, name)  # labels; images loaded again lazily
            sig = hashlib.sha1(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]

            def make(name=name):
                return D.load_cifar_c(c.cf_c_path, name)[0]

            src = Source(key=f"cifarC-{name}-{sig}", n=int(labels.shape[0]), labels=labels, make_images=make,
                         desc=f"CIFAR-C {name}")
            out.append((name, src, severity))
        return out

    def mode_corruption(self) -> None:
        from .. import data as D

        b = self.cfg.ece_bins
        ece_name = f"ece{b}"
        who = self.names + ["ensemble"]
        # per cell: {who: (n, acc, nll, bin_sums_b, bin_sums_14)}
        cells: dict[tuple[str, int], dict[str, tuple]] = {}
        for name, src, sev in self._corruption_sources():
            lp = self.member_log_probs(src)
            src.release()
            labels = src.labels
            sev_list = [sev] if isinstance(sev, int) else sorted(int(s) for s in torch.unique(sev))
            for s in sev_list:
                rows = slice(None) if isinstance(sev, int) else (sev == s)
                y = labels[rows]
                cell = {}
                stacks = list(lp[:, rows]) + [Mx.ensemble_log_probs(lp[:, rows])]
                for w, logp in zip(who, stacks):
                    p = logp.exp()
                    cell[w] = (int(y.shape[0]), Mx.accuracy(logp, y), Mx.nll(logp, y),
                               Mx.ece_bin_sums(p, y, b), Mx.ece_bin_sums(p, y, 14))
                cells[(name, s)] = cell
        kind = self.corruption_kind
        std_names = [n for n in D.CIFAR_C_STANDARD] if kind != "generated" else []

        def emit(w: str, corruption: str, severity, vals: dict) -> None:
            for metric, v in vals.items():
                self._row("corruption", w, metric, v, split="corrupted", corruption=corruption, severity=severity)

        def cell_metrics(cell_w: tuple) -> dict:
            n, acc, nll, sb, s14 = cell_w
            return {"acc": acc, "nll": nll, ece_name: Mx.ece_from_bin_sums(sb), "ece_ft14": Mx.ece_from_bin_sums(s14)}

        per_cell = {key: {w: cell_metrics(v) for w, v in cell.items()} for key, cell in cells.items()}
        for (name, s), cm in per_cell.items():
            for w in who:
                emit(w, name, s, cm[w])
            mm = {m: Mx.mean_std([cm[w][m] for w in self.names])[0] for m in cm["ensemble"]}
            emit("members_mean", name, s, mm)

        def aggregate(keys: list[tuple[str, int]]) -> tuple[dict, dict]:
            """(mean over cells, pooled over all samples) per who."""
            mean, pooled = {}, {}
            for w in who:
                mean[w] = {m: float(np.mean([per_cell[k][w][m] for k in keys])) for m in per_cell[keys[0]][w]}
                n = sum(cells[k][w][0] for k in keys)
                sb = {f: sum(cells[k][w][3][f] for k in keys) for f in ("count", "sum_conf", "sum_correct")}
                s14 = {f: sum(cells[k][w][4][f] for k in keys) for f in ("count", "sum_conf", "sum_correct")}
                pooled[w] = {"acc": sum(cells[k][w][0] * cells[k][w][1] for k in keys) / n,
                             "nll": sum(cells[k][w][0] * cells[k][w][2] for k in keys) / n,
                             ece_name: Mx.ece_from_bin_sums(sb), "ece_ft14": Mx.ece_from_bin_sums(s14)}
            return mean, pooled

        all_keys = list(cells)
        aggregates: list[tuple[str, Any, dict]] = []
        mean_all, pooled_all = aggregate(all_keys)
        aggregates += [("mean_all", "all", mean_all), ("pooled_all", "all", pooled_all)]
        std_keys = [k for k in all_keys if k[0] in std_names]
        n_std = len({k[0] for k in std_keys})
        if std_keys:
            mean_std15, pooled_std15 = aggregate(std_keys)
            aggregates += [("mean_standard15", "all", mean_std15), ("pooled_standard15", "all", pooled_std15)]
            if n_std < len(D.CIFAR_C_STANDARD):
                self.out(f"note: only {n_std} of the {len(D.CIFAR_C_STANDARD)} standard corruptions are present; "
                         f"the *_standard15 aggregates cover those")
        for s in range(1, 6):
            ks = [k for k in all_keys if k[1] == s]
            if ks:
                aggregates.append(("mean_all", s, aggregate(ks)[0]))
        for corruption, severity, agg in aggregates:
            for w in who:
                emit(w, corruption, severity, agg[w])
            mm = {m: Mx.mean_std([agg[w][m] for w in self.names])[0] for m in agg["ensemble"]}
            emit("members_mean", corruption, severity, mm)
        corruptions = list(dict.fromkeys(k[0] for k in all_keys))
        self.extras["corruption"] = {
            "source": kind, "path": self.cfg.cf_c_path, "corruptions": corruptions,
            "n_standard_present": n_std,
            "aggregates": {"mean_all": "mean over every (corruption, severity) cell",
                           "pooled_all": "all corrupted samples pooled (FreeTickets' convention over the files present)",
                           "mean_standard15": "mean over cells of the 15 standard corruptions (UB convention)",
                           "pooled_standard15": "the 15 standard corruptions pooled"},
        }
        metrics_cols = ["acc", "nll", ece_name, "ece_ft14"]
        summary = []
        for corruption, severity, agg in aggregates:
            if severity != "all":
                continue
            for w in who:
                summary.append([corruption, w] + [agg[w][m] for m in metrics_cols])
        title_src = "generated corruptions" if kind == "generated" else f"CIFAR-C files in {self.cfg.cf_c_path}"
        _table(f"corruption: {title_src} ({len(corruptions)} corruptions x 5 severities)",
               ["aggregate", "member"] + metrics_cols, summary, self.out)
        grid = []
        for name in corruptions:
            grid.append([name] + [per_cell[(name, s)]["ensemble"]["acc"] if (name, s) in per_cell else None
                                  for s in range(1, 6)])
        sev_rows = [agg for agg in aggregates if agg[1] != "all"]
        grid.append(["mean_all"] + [next((a[2]["ensemble"]["acc"] for a in sev_rows if a[1] == s), None)
                                    for s in range(1, 6)])
        _table("corruption: ensemble accuracy per corruption (rows) and severity (columns)",
               ["corruption", "s1", "s2", "s3", "s4", "s5"], grid, self.out)
        plt = _pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
        for ax, metric in zip(axes, ("acc", ece_name)):
            data = [[per_cell[(n, s)]["ensemble"][metric] for n in corruptions if (n, s) in per_cell]
                    for s in range(1, 6)]
            ax.boxplot(data, positions=range(1, 6), widths=0.5)
            mem = [np.mean([per_cell[(n, s)][w][metric]
                            for n in corruptions if (n, s) in per_cell for w in self.names]) for s in range(1, 6)]
            ax.plot(range(1, 6), mem, "o--", label="members (mean)")
            ens = [np.mean(d) for d in data]
            ax.plot(range(1, 6), ens, "s-", label="ensemble (mean)")
            ax.set_xlabel("severity")
            ax.set_ylabel(metric)
            ax.set_title(f"{metric} over corruptions ({kind})")
            ax.legend(fontsize=8)
        path = self._plot_path("corruption")
        _save_figure(fig, path)
        plt.close(fig)
        self.plots["corruption"] = str(path)

    def mode_tsne(self) -> None:
        from sklearn.manifold import TSNE

        n = min(self.cfg.tsne_samples, self.n_test)
        gen = torch.Generator().manual_seed(int(self.cfg.seed))
        idx = torch.randperm(self.n_test, generator=gen)[:n].sort().values
        sub = Source(key=f"tsne-n{n}-seed{self.cfg.seed}-{self._test_source.key}", n=n, labels=self.test_labels[idx],
                     make_images=lambda: self.test_images[idx].contiguous(), desc=f"t-SNE subset ({n} images)")
        vectors, points = [], []
        runs = []
        for run_dir, files in self.snapshot_runs:
            run_name = _rel(run_dir, self.root) if run_dir != self.root else "."
            entries = load_entries(files, self.root)
            check_members([self.members[0]] + entries, what="snapshot")
            runs.append(run_name)
            for e in entries:
                logits = self.logits(e, sub, keep_model=False)
                vectors.append(torch.softmax(logits.double(), 1).flatten())
                points.append({"run": run_name, "name": e.name, "epoch": _plain(e.ticket.get("epoch")),
                               "kind": "snapshot"})
        run_of = {run_dir.resolve(): (_rel(run_dir, self.root) if run_dir != self.root else ".")
                  for run_dir, _ in self.snapshot_runs}
        for e in self.members:
            logits = self.logits(e, self._test_source)[idx]
            vectors.append(torch.softmax(logits.double(), 1).flatten())
            points.append({"run": run_of.get(e.path.parent.resolve()), "name": e.name,
                           "epoch": _plain(e.ticket.get("epoch")), "kind": "ticket"})
        x = torch.stack(vectors).numpy()
        perplexity = float(max(1.0, min(30.0, (len(x) - 1) / 3)))
        method = "exact" if len(x) <= 2000 else "barnes_hut"  # exact is fast and stable for few points
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", method=method,
                   random_state=int(self.cfg.seed)).fit_transform(x)
        for pt, (a, b) in zip(points, emb):
            pt["x"], pt["y"] = float(a), float(b)
            self._row("tsne", pt["name"], "tsne_x", pt["x"], split=f"test-subset-{n}")
            self._row("tsne", pt["name"], "tsne_y", pt["y"], split=f"test-subset-{n}")
        self.extras["tsne"] = {"samples": n, "seed": int(self.cfg.seed), "perplexity": perplexity, "method": method,
                               "vector": "softmax probabilities on the fixed test subset, flattened",
                               "indices": idx.tolist(), "runs": runs, "points": points}
        _table(f"tsne: {len(points)} checkpoints ({len(runs)} trajectories + {self.M} tickets) on {n} test images",
               ["run", "snapshots", "first epoch", "last epoch", "tickets"],
               [[r, sum(p["run"] == r and p["kind"] == "snapshot" for p in points),
                 next((p["epoch"] for p in points if p["run"] == r), None),
                 next((p["epoch"] for p in reversed(points) if p["run"] == r and p["kind"] == "snapshot"), None),
                 ", ".join(p["name"] for p in points if p["run"] == r and p["kind"] == "ticket") or "-"]
                for r in runs], self.out)
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        cmap = plt.get_cmap("tab10")
        colour = {r: cmap(k % 10) for k, r in enumerate(runs)}
        for r in runs:
            pts = np.array([[p["x"], p["y"]] for p in points if p["run"] == r and p["kind"] == "snapshot"])
            ax.plot(pts[:, 0], pts[:, 1], "-", color=colour[r], alpha=0.35)
            ax.scatter(pts[:, 0], pts[:, 1], color=colour[r], s=14, label=r)
            ax.scatter(pts[:1, 0], pts[:1, 1], color=colour[r], marker="*", s=160, edgecolor="k")
        for p in points:
            if p["kind"] == "ticket":
                ax.scatter([p["x"]], [p["y"]], marker="X", s=90, color=colour.get(p["run"], "k"), edgecolor="k")
        ax.scatter([], [], marker="X", s=90, color="w", edgecolor="k", label="tickets (run colour)")
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.set_title(f"function-space trajectories (t-SNE of predictions on {n} test images)")
        ax.legend(fontsize=7)
        path = self._plot_path("tsne")
        _save_figure(fig, path)
        plt.close(fig)
        self.plots["tsne"] = str(path)

    # ------------------------------------------------------------------ run
    def _reserve_run_id(self) -> str:
        base = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        k = 1
        while True:
            rid = base if k == 1 else f"{base}-{k}"
            path = self.out_dir / f"results_{rid}.json"
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
                return rid
            except FileExistsError:
                k += 1

    def run(self) -> dict:
        self.prepare()
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.run_id = self._reserve_run_id()
        except OSError as err:
            raise UsageError(f"cannot write to the output folder {self.out_dir} ({err.strerror or err}); pass a "
                             f"writable --output-dir") from None
        self._test_source = Source(key=self._test_key, n=self.n_test,
                                   labels=self.test_labels,
                                   make_images=lambda: self.test_images, desc=f"{self.dataset} test")
        self.out(f"evaluating {self.M} ticket(s) of {self.model_name} on {self.dataset} ({self.n_test} test images) "
                 f"from {self.root}; device {self.device}; modes: {', '.join(self.modes) or 'none'}")
        for i, e in enumerate(self.members):
            t = e.ticket
            self.out(f"  [{i}] {e.name}  kind={t.get('kind', '?')} seed={t.get('seed', '?')} "
                     f"epoch={t.get('epoch', '?')} density={_fmt(t.get('density'))}")
        handlers = {"predict": self.mode_predict, "disagreement": self.mode_disagreement,
                    "calibration": self.mode_calibration, "KD": self.mode_kd, "ood": self.mode_ood,
                    "corruption": self.mode_corruption, "tsne": self.mode_tsne}
        try:
            for mode in self.modes:
                handlers[mode]()
        except BaseException:
            try:  # do not leave the reserved (empty) results file behind
                os.unlink(self.out_dir / f"results_{self.run_id}.json")
            except OSError:
                pass
            raise
        return self._write()

    def _write(self) -> dict:
        c = self.cfg
        for r in self.rows:
            r["run_id"] = self.run_id
        config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(c).items()}
        config["device_used"] = str(self.device)
        result = {
            "format": "freetickets-eval", "version": 1, "run_id": self.run_id,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "resume": str(self.root), "output_dir": str(self.out_dir),
            "model": self.model_name, "dataset": self.dataset, "n_test": self.n_test,
            "config": config, "members": [e.describe() for e in self.members],
            "modes_run": self.modes, "skipped": self.skipped, "notes": self.notes,
            "forward_passes": self.stats["forward_passes"], "cache_hits": self.stats["cache_hits"],
            "columns": list(RESULT_COLUMNS), "rows": [{k: r.get(k) for k in RESULT_COLUMNS} for r in self.rows],
            "extras": self.extras, "plots": self.plots,
        }
        text = json.dumps(_finite(result), indent=1, allow_nan=False)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(RESULT_COLUMNS)
        for r in self.rows:
            w.writerow(["" if r.get(k) is None else (repr(r[k]) if k == "value" else r[k]) for k in RESULT_COLUMNS])
        json_path = self.out_dir / f"results_{self.run_id}.json"
        csv_path = self.out_dir / f"results_{self.run_id}.csv"
        try:
            atomic_write_text(buf.getvalue(), csv_path)
            atomic_write_text(text, json_path)
            atomic_write_text(text, self.out_dir / "results_latest.json")
            atomic_write_text(buf.getvalue(), self.out_dir / "results_latest.csv")
        except OSError as err:
            raise UsageError(f"could not write the results to {self.out_dir} ({err.strerror or err}); free space "
                             f"or pass another --output-dir") from None
        self.out("")
        self.out(f"{len(self.rows)} result rows; forward passes {self.stats['forward_passes']}, cache hits "
                 f"{self.stats['cache_hits']}")
        self.out(f"results: {json_path} and {csv_path.name} (copies: results_latest.*); plots: "
                 f"{self.out_dir / 'plots'}")
        result["json_path"], result["csv_path"] = str(json_path), str(csv_path)
        return result


def evaluate(cfg: EvalConfig, out: Callable[[str], None] = print) -> dict:
    """Run the evaluation described by ``cfg``; returns the results dict (also written to disk)."""
    return Evaluator(cfg, out).run()


# =========================================================================== CLI
def _comma_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    return items


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(
        prog="ensemble_freetickets.py",
        description="Evaluate FreeTickets / DST / EDST / PF / dense ensembles from their ticket files. Each ticket "
                    "runs forward once per input set; logits are cached under <output-dir>/cache, so further modes "
                    "cost no forward pass. Results: <output-dir>/results_<run_id>.{json,csv} (never overwritten; "
                    "results_latest.* are copies of the newest) and <output-dir>/plots/<run_id>_*.png.")
    p.add_argument("--mode", required=True,
                   help="predict, disagreement, calibration, KD, tsne, ood, corruption, all, or several separated "
                        "by commas (e.g. predict,calibration)")
    p.add_argument("--resume", required=True, metavar="DIR",
                   help="folder searched recursively for tickets (model*.pth), e.g. a DST ensemble's parent of "
                        "seed=*/ folders, an EDST M=* folder, a PF folder or dense models; or one ticket file")
    p.add_argument("--data", "--dataset", dest="dataset", default=None,
                   help="cifar10, cifar100, fashionmnist or mnist; optional (the tickets record it), must agree")
    p.add_argument("--model", default=None, help="optional; must agree with the tickets' model")
    p.add_argument("--seed", type=int, default=17,
                   help="seed of the OoD subsets and noise, generated corruptions and the t-SNE subset (default 17)")
    p.add_argument("--test-batch-size", type=int, default=128, help="evaluation batch size (default 128)")
    p.add_argument("--data-dir", default=None, help="datasets in torchvision's layout (default ./data)")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="never download a missing dataset (by default it is downloaded into --data-dir)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--ece-bins", type=int, default=15, help="equal-width ECE bins (default 15; ece_ft14 is "
                                                            "always reported too)")
    p.add_argument("--ood-data", default=None,
                   help="comma-separated OoD sets: svhn, cifar10, cifar100, mnist, fashionmnist, gaussian, uniform "
                        "(default: cifar10 -> svhn,cifar100,gaussian,uniform; cifar100 -> svhn,cifar10,gaussian,"
                        "uniform; fashionmnist -> mnist,gaussian,uniform; defaults that cannot be loaded are skipped)")
    p.add_argument("--ood-score", default="msp",
                   help="comma-separated OoD scores: msp (default), entropy, mi (ensemble only), energy, or all")
    p.add_argument("--cf_c_path", "--cf-c-path", dest="cf_c_path", default=None, metavar="DIR",
                   help="CIFAR-10-C / CIFAR-100-C folder (<corruption>.npy files and labels.npy)")
    p.add_argument("--corruptions", default=None, metavar="generated|standard|all|NAMES",
                   help="corruption mode input: the files in --cf_c_path (standard: the 15 benchmark corruptions; "
                        "all: every file present) or corruptions generated on the fly at 5 severities (generated); "
                        "or comma-separated corruption names (files in --cf_c_path when given, else generated). "
                        "Default: all when --cf_c_path is given, else generated")
    p.add_argument("--tsne-samples", type=int, default=1000, help="fixed test images for t-SNE (default 1000)")
    p.add_argument("--output-dir", default=None, help="where results, plots and the logit cache go "
                                                      "(default <resume>/eval)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the logit cache")
    p.add_argument("--no-cuda", action="store_true", help="same as --device cpu (original flag)")

    g = p.add_argument_group("ignored", "accepted so the original script's command lines still parse; they do "
                                        "nothing here")
    for flag, kw in [
        ("--batch-size", dict(type=int)), ("--epochs", dict(type=int)), ("--lr", dict(type=float)),
        ("--momentum", dict(type=float)), ("--log-interval", dict(type=int)), ("--optimizer", {}),
        ("--l1", dict(type=float)), ("--l2", dict(type=float)), ("--fp16", dict(action="store_true")),
        ("--valid_split", dict(type=float)), ("--start-epoch", dict(type=int)), ("--iters", dict(type=int)),
        ("--save-features", dict(action="store_true")), ("--bench", dict(action="store_true")),
        ("--max-threads", dict(type=int)), ("--decay-schedule", {}), ("--nolrsche", dict(action="store_true")),
        ("--nolr_scheduler", dict(action="store_true")), ("--world-size", dict(type=int)),
        ("--mgpu", dict(action="store_true")), ("--multiplier", dict(type=int)),
        ("--no_rewire_extend", dict(action="store_true")), ("--save", {}), ("--decay_frequency", dict(type=int)),
        ("--batch-size-jac", dict(type=int)), ("--print_freq", dict(type=int)), ("--ensemble_size", dict(type=int)),
        ("--output_file", {}), ("--l2_regu", dict(action="store_true")), ("--grow-switch", {}),
        ("--grow-zero", dict(action="store_true")), ("--grow-max", dict(type=float)), ("--start_iter", dict(type=int)),
        ("--growth", {}), ("--death", {}), ("--redistribution", {}), ("--death-rate", dict(type=float)),
        ("--large-death-rate", dict(type=float)), ("--PF-rate", dict(type=float)), ("--density", dict(type=float)),
        ("--sparse", dict(action="store_true")), ("--fix", dict(action="store_true")), ("--sparse-init", {}),
        ("--update-frequency", dict(type=int)),
    ]:
        if kw.get("action") != "store_true":
            kw = {**kw, "metavar": "V"}
        g.add_argument(flag, dest=f"ignored_{flag.strip('-').replace('-', '_')}", help="ignored", **kw)
    g.add_argument("-j", "--workers", dest="ignored_workers", type=int, metavar="V", help="ignored")
    return p


def config_from_args(args, argv: Sequence[str] | None = None) -> EvalConfig:
    modes, explicit = parse_modes(args.mode)
    scores = _comma_list(args.ood_score) or ["msp"]
    if "all" in scores:
        scores = list(Mx.OOD_SCORES)
    device = "cpu" if args.no_cuda else args.device
    return EvalConfig(
        resume=args.resume, modes=modes, dataset=args.dataset, model=args.model, seed=args.seed,
        test_batch_size=args.test_batch_size, data_dir=args.data_dir, device=device, ece_bins=args.ece_bins,
        ood_data=_comma_list(args.ood_data), ood_score=list(dict.fromkeys(scores)), cf_c_path=args.cf_c_path,
        corruptions=args.corruptions, tsne_samples=args.tsne_samples, output_dir=args.output_dir,
        no_cache=args.no_cache, download=args.download,
        command=list(sys.argv[1:] if argv is None else argv), modes_explicit=explicit,
    )


def main(argv: Sequence[str] | None = None) -> dict:
    """Entry point of ``ensemble_freetickets.py`` (wrap with :func:`sparselearning.errors.run_cli`)."""
    args = build_parser().parse_args(argv)
    return evaluate(config_from_args(args, argv))
