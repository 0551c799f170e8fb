"""Progress bars (rich, the library of Lightning's own bar) for the long loops outside a Trainer:
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


def _forced() -> bool | None:
    """None (= on only when stderr is a terminal), or forced on/off by ``SEGFLOW_PROGRESS``."""
    forced = os.environ.get("SEGFLOW_PROGRESS")
    if forced is None or forced.strip() == "":
        return None
    return forced.strip().lower() not in ("0", "false", "no", "off")


def _progress(unit: str, leave: bool) -> Any:
    """A rich ``Progress`` on stderr (the library of Lightning's own bar), shown as the
    module docstring says."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    forced = _forced()
    console = Console(stderr=True, force_terminal=forced or None)
    disable = forced is False or (forced is None and not console.is_terminal)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=not leave, disable=disable)


def bar(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
        leave: bool = True) -> Iterator[T]:
    """``iterable`` with a progress bar (see the module docstring for when it shows);
    ``leave=False`` erases it when done."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]

    def steps() -> Iterator[T]:
        with _progress(unit, leave) as progress:
            task = progress.add_task(desc, total=total)
            for item in iterable:
                yield item
                progress.advance(task)

    return steps()


class counter:  # noqa: N801 - used like a function: ``with counter(n, "x") as c``
    """A bar to advance by hand (``with counter(n, "x") as c: ... c.update(1)``)."""

    def __init__(self, total: int, desc: str, unit: str = "it"):
        self._progress = _progress(unit, leave=True)
        self._progress.start()
        self._task = self._progress.add_task(desc, total=total)

    def update(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.stop()

    def __enter__(self) -> counter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
