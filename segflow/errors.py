"""Errors that mean "the user must change something": caught by the entry points and
printed as one sentence naming the file or key and the fix (no stack trace)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class SegflowError(Exception):
    """Base class of user-facing errors."""


class DataError(SegflowError, ValueError):
    """Bad or missing data: names the file/folder and the fix."""


class ConfigError(SegflowError, ValueError):
    """A config value that cannot work: names the key and the fix."""


class NetworkMismatchError(SegflowError, TypeError):
    """A method was given a network of the wrong shape (``SegNet`` vs ``Denoiser``)."""


class OutOfMemoryAdvice(SegflowError, RuntimeError):
    """CUDA ran out of memory: names the config keys that reduce memory and their values."""


def find_user_error(exc: BaseException) -> SegflowError | None:
    """The user-facing error behind ``exc``, looking through wrappers such as Hydra's
    ``InstantiationException`` (which chains the original as ``__cause__``)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, SegflowError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


@contextmanager
def exit_on_user_error(log: logging.Logger) -> Iterator[None]:
    """The entry points' error handling: a user error (anywhere in the exception chain) is
    logged as its one sentence and the process exits with status 2; anything else is a bug
    and propagates with its traceback."""
    try:
        yield
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        log.error("%s", user_error)
        sys.exit(2)
