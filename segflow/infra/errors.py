"""Errors that mean "the user must change something": caught by the entry points and
printed as one sentence naming the file or key and the fix (no stack trace)."""

from __future__ import annotations

import errno
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class SegflowError(Exception):
    """Base class of user-facing errors (printed as their sentence; the process exits with
    ``exit_code``: 2, the user must change something; 1, a fault such as a lost DDP rank)."""

    exit_code = 2


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


#: errno values that mean "this place cannot be written": the user must free space or
#: choose another folder (not a bug).
_DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}


def disk_error(exc: BaseException) -> SegflowError | None:
    """A write that failed for lack of space or permission, as one sentence naming the file
    (atomic writes leave the previous file in place)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError) and cur.errno in _DISK_ERRNOS:
            where = cur.filename or "a result file"
            return SegflowError(f"cannot write {where}: {_DISK_ERRNOS[cur.errno]}; free space or "
                                f"choose a writable folder (paths.output_root=..., output_dir=...); "
                                f"files written before are intact")
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def user_error(exc: BaseException) -> SegflowError | None:
    """The user's mistake behind ``exc`` (a :class:`SegflowError` anywhere in its chain, or a
    disk that is full or read-only), or None: then it is a bug."""
    return find_user_error(exc) or disk_error(exc)


@contextmanager
def exit_on_user_error(log: logging.Logger | None = None) -> Iterator[None]:
    """Every command's error handling: a user error (:func:`user_error`) is logged (``log``:
    also into the run's log file) or printed as its one sentence, and the process exits with
    its ``exit_code`` (2: the user must change something; ``SystemExit`` passes through
    Hydra); anything else is a bug and propagates with its traceback."""
    try:
        yield
    except Exception as exc:
        error = user_error(exc)
        if error is None:
            raise
        if log is not None:
            log.error("%s", error)
        else:
            print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(getattr(error, "exit_code", 2))


def command(main: Callable[..., int | None]) -> Callable[..., int]:
    """The wrapper of every command's ``main``: runs it under :func:`exit_on_user_error`
    and returns the exit status (0, or the user error's ``exit_code``) instead of raising
    it, so ``sys.exit(main())`` and a test's ``main([...]) == 2`` see the same status."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            with exit_on_user_error():
                return int(main(*args, **kwargs) or 0)
        except SystemExit as stop:
            if isinstance(stop.code, int) and stop.code not in (0, 2):
                raise  # a fault's own status (a lost rank, a signal): the caller sees it
            return 0 if stop.code is None else int(stop.code) if isinstance(stop.code, int) else 1

    return wrapper
