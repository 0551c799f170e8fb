"""Progress bars (tqdm, as Lightning's default bar) for the long loops outside a Trainer:
dataset preparation, synthetic data generation, and sampling loops of generative models.

Shown on a terminal only (no carriage-return clutter in logs or CI); ``SEGFLOW_PROGRESS=1``
forces them on, ``SEGFLOW_PROGRESS=0`` off. No dependency beyond the standard library at
import: methods (torch-only code) call :func:`sampling_steps`, which stays a plain
iterator unless an entry point opened :func:`sampling_progress`.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_SAMPLING: contextvars.ContextVar[int | None] = contextvars.ContextVar("segflow_sampling_bar",
                                                                       default=None)


def _disable() -> bool | None:
    """tqdm's ``disable``: None (= off unless stderr is a terminal), or forced by the env."""
    forced = os.environ.get("SEGFLOW_PROGRESS")
    if forced is None or forced == "":
        return None
    return forced.strip().lower() in ("0", "false", "no", "off")


def bar(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
        leave: bool = True) -> Iterator[T]:
    """``iterable`` with a progress bar (see the module docstring for when it shows)."""
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave,
                     disable=_disable(), dynamic_ncols=True))


def counter(total: int, desc: str, unit: str = "it") -> Any:
    """A bar to advance by hand (``with counter(n, "x") as c: ... c.update(1)``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=_disable(), dynamic_ncols=True)


@contextmanager
def sampling_progress(min_steps: int = 50) -> Iterator[None]:
    """Within this block, sampling loops of at least ``min_steps`` steps show a bar."""
    token = _SAMPLING.set(int(min_steps))
    try:
        yield
    finally:
        _SAMPLING.reset(token)


def sampling_steps(steps: Iterable[T], desc: str = "sampling", total: int | None = None
                   ) -> Iterable[T]:
    """A sampler's step loop: unchanged, or with a transient bar inside
    :func:`sampling_progress` when it is long enough."""
    min_steps = _SAMPLING.get()
    if min_steps is None:
        return steps
    n = total if total is not None else (len(steps) if hasattr(steps, "__len__") else None)
    if n is None or n < min_steps:
        return steps
    return bar(steps, desc, total=n, unit="step", leave=False)


def describe(**kwargs: Any) -> str:
    """``steps=1000 sampler=ddpm`` for a bar's description."""
    return " ".join(f"{k}={v}" for k, v in kwargs.items())
