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


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's or SLURM's
    share), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_cpu_threads() -> tuple[int, str]:
    """torch's intra-op threads for a run: ``OMP_NUM_THREADS`` when set, else one per
    usable core (:func:`usable_cores`), shared among the processes of one node
    (``LOCAL_WORLD_SIZE``) — never more threads than cores, which on a small shared machine
    makes every step slower. Returns (threads, where the number came from)."""
    import torch

    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        torch.set_num_threads(int(given))
        return int(given), "OMP_NUM_THREADS"
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    procs = int(local) if local.isdigit() and int(local) > 0 else 1
    n = max(1, usable_cores() // procs)
    torch.set_num_threads(n)
    share = f" / {procs} processes" if procs > 1 else ""
    return n, f"{usable_cores()} usable cores{share}; OMP_NUM_THREADS=<n> sets another number"
