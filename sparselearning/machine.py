"""What machine a benchmark ran on (printed beside every figure)."""
from __future__ import annotations

import os
import platform

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                        platform.processor() or platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def machine_info() -> str:
    load = "/".join(f"{v:.2f}" for v in load_average()) or "?"
    return (f"{os.cpu_count()} CPUs ({cpu_name()}), load average {load} (1/5/15 min), torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads")
