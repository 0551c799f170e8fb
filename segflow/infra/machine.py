"""The machine in words, as result tables state it once (CPU model and cores, the GPU)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def hardware(device: Any = None) -> str:
    """``device``'s name (a CUDA GPU, or the CPU with its logical cores and torch threads);
    without a device: the CPU and cores, and the first GPU when one is visible."""
    import torch

    if device is not None:
        if getattr(device, "type", str(device)) == "cuda":
            return torch.cuda.get_device_name(device)
        return f"{cpu_name()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_name()}, {os.cpu_count()} cores; {gpu}"
