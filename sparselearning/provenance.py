"""Where a result came from: command line, library versions, device, git commit and host.

The evaluation writes :func:`provenance` into its results JSON; the training engine can record the
same dictionary in ``summary.json``. Every lookup degrades to ``None`` rather than failing: a result
is worth keeping even when git is missing or the code is not a git checkout.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["provenance", "git_state", "device_name"]

_REPO = Path(__file__).resolve().parents[1]
_GIT_TIMEOUT_S = 5.0


def _git(repo: Path, *args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                             timeout=_GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return res.stdout if res.returncode == 0 else None


def git_state(repo: str | Path = _REPO) -> dict:
    """``{"git_commit": sha or None, "git_dirty": bool or None}`` of the checkout holding ``repo``."""
    head = _git(Path(repo), "rev-parse", "HEAD")
    if head is None:
        return {"git_commit": None, "git_dirty": None}
    status = _git(Path(repo), "status", "--porcelain")
    return {"git_commit": head.strip(), "git_dirty": None if status is None else bool(status.strip())}


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (empty where the OS has none)."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def machine_info() -> str:
    """One line on the machine a benchmark ran on (printed beside every figure)."""
    load = "/".join(f"{v:.2f}" for v in load_average()) or "?"
    return (f"{os.cpu_count()} CPUs ({cpu_name()}), load average {load} (1/5/15 min), torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads")


def device_name(device: "torch.device | str | None") -> str | None:
    """A human-readable name of ``device``: the GPU's model for CUDA, the CPU's model otherwise."""
    if device is None:
        return None
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            return torch.cuda.get_device_name(dev)
        except (RuntimeError, AssertionError, ValueError):
            return None
    if dev.type == "cpu":
        return f"cpu ({cpu_name()})"
    return str(dev)


def _torchvision_version() -> str | None:
    try:
        import torchvision
    except ImportError:
        return None
    return torchvision.__version__


def provenance(argv: list[str] | None = None, device: "torch.device | str | None" = None) -> dict:
    """Command line (``argv``, default ``sys.argv``), versions, device, git commit and host, as plain JSON data."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "command": [str(a) for a in (sys.argv if argv is None else argv)],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "device": None if device is None else str(torch.device(device)),
        "device_name": device_name(device),
        **git_state(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }
