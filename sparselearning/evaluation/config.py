"""What an evaluation run is asked to do: the modes, :class:`EvalConfig` and the checks of its values."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import UsageError
from .metrics import OOD_SCORES

__all__ = ["MODES", "RESULT_COLUMNS", "DEFAULT_OOD", "OOD_METRICS", "ECE_BINS_RANGE", "EvalConfig", "parse_modes",
           "validate_config", "choose_device"]

MODES: tuple[str, ...] = ("predict", "disagreement", "calibration", "KD", "ood", "corruption", "tsne")
_MODE_ALIASES = {m.lower(): m for m in MODES} | {"kl": "KD"}
RESULT_COLUMNS = ("run_id", "mode", "dataset", "split", "corruption", "severity", "member", "metric", "value")
DEFAULT_OOD = {
    "cifar10": ("svhn", "cifar100", "gaussian", "uniform"),
    "cifar100": ("svhn", "cifar10", "gaussian", "uniform"),
    "fashionmnist": ("mnist", "gaussian", "uniform"),
    "mnist": ("fashionmnist", "gaussian", "uniform"),
}
OOD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95_oodpos", "fpr95_idpos")
# More bins than test images only makes empty bins; the bound keeps a typo (1e8) from allocating for minutes.
ECE_BINS_RANGE = (1, 10000)


@dataclass
class EvalConfig:
    resume: str
    modes: Sequence[str] = ("predict",)
    dataset: str | None = None
    model: str | None = None
    seed: int = 17
    test_batch_size: int = 128
    workers: int = 4  # data-loading processes for ImageNet's val/ (streamed from its files)
    progress: bool = True
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
    return [m for m in MODES if m in chosen], explicit


def choose_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:<k>, with the training engine's rule (auto = CUDA when present)."""
    from ..loop import pick_device

    dev = str(name).lower()
    if dev not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", dev):
        raise UsageError(f"--device must be auto, cpu or cuda, got {name!r}")
    base = pick_device(dev.split(":")[0])  # raises the one-line error when CUDA is missing
    return torch.device(dev) if ":" in dev else base


def _positive_int(value, flag: str, example: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UsageError(f"{flag} must be a positive integer, got {value}; e.g. {example}")


def validate_config(cfg: EvalConfig) -> torch.device:
    """Check the flags' values (nothing read or written yet); returns the device to run on."""
    lo, hi = ECE_BINS_RANGE
    _positive_int(cfg.ece_bins, "--ece-bins", "15")
    if cfg.ece_bins > hi:
        raise UsageError(f"--ece-bins {cfg.ece_bins} is too many; use {lo}..{hi} bins (e.g. 15)")
    _positive_int(cfg.test_batch_size, "--test-batch-size", "128")
    if not isinstance(cfg.workers, int) or cfg.workers < 0:
        raise UsageError(f"-j/--workers must be 0 or more, got {cfg.workers}; e.g. -j 4")
    _positive_int(cfg.tsne_samples, "--tsne-samples", "1000")
    for s in cfg.ood_score:
        if s not in OOD_SCORES:
            raise UsageError(f"unknown --ood-score {s!r}; use {', '.join(OOD_SCORES)} or all")
    unknown = [m for m in cfg.modes if m not in MODES]
    if unknown or not cfg.modes:
        raise UsageError(f"unknown mode(s) {unknown}; use {', '.join(MODES)}")
    return choose_device(cfg.device)
