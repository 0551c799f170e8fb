"""Device, precision and memory helpers shared by the benchmarks (pure torch)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import torch

from segflow.infra.errors import ConfigError

# Lightning's precision names → autocast dtype (None: plain float32).
PRECISIONS: dict[str, torch.dtype | None] = {
    "32-true": None, "32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16,
}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision name.

    Raises:
        ConfigError: an unknown name.
    """
    key = str(precision)
    if key not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use one of {sorted(PRECISIONS)}")
    return PRECISIONS[key]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for ``precision`` (a no-op for 32-true)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def sync(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def stopwatch(device: torch.device) -> Iterator[list[float]]:
    """``with stopwatch(dev) as t: ...`` → ``t[0]`` seconds, synchronised at both ends."""
    out = [0.0]
    sync(device)
    start = time.perf_counter()
    yield out
    sync(device)
    out[0] = time.perf_counter() - start


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> tuple[float | None, str]:
    """(MiB, what it is): CUDA peak allocated since the last reset, or on CPU the process's
    maximum resident set size so far (cumulative over the whole run: an upper bound for
    the case just measured), or None where neither can be read."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_peak_allocated"
    try:
        import resource
    except ImportError:  # not on Unix
        return None, "n/a"
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if os.uname().sysname == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "cpu_max_rss_process"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


class Row:
    """A benchmark table row (a dataclass): ``as_dict`` for ``bench.json``."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters) for a table's error column."""
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"
