"""Atomic file writes: a crash or a full disk never leaves a truncated file under a real name.

Every result file (``metrics.json``, CSVs, manifests) and every checkpoint is written to a
temporary file in the same folder, flushed, ``fsync``-ed and renamed over the real name
(``os.replace`` is atomic on POSIX and Windows within one file system). Readers see either
the previous complete file or the new complete one.

:class:`AtomicCheckpointIO` is the Lightning ``CheckpointIO`` that does this for
``best.ckpt`` / ``last.ckpt`` and turns a damaged checkpoint into one sentence naming it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from segflow.infra.errors import DataError

log = logging.getLogger(__name__)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (the folder entry); not possible on every platform."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)`` that publishes the file only when the block ends without error.

    The data goes to ``.<name>.<random>.tmp`` beside ``path``; on success it is flushed,
    fsync-ed and renamed to ``path``; on any error the temporary file is removed and
    ``path`` (if it existed) is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if path.exists():  # keep the permissions of the file being replaced
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, data: Any, indent: int = 2) -> Path:
    return write_text(path, json.dumps(data, indent=indent, default=str))


# -- checkpoints -----------------------------------------------------------------------

def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (None when it looks complete).

    A torch checkpoint is a zip archive whose directory sits at the end of the file, so a
    truncated file (full disk, killed copy) has none; this reads only that directory.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if size == 0:
        return "is empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            head = f.read(2)
        if head == b"\x80\x02":  # legacy (non-zip) torch.save format: cannot check cheaply
            return None
        return f"is truncated or not a checkpoint ({size} bytes, no archive directory)"
    try:
        with zipfile.ZipFile(path) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        return f"is damaged ({exc})"
    return None


def damaged_checkpoint_error(path: str | Path, reason: str) -> DataError:
    return DataError(f"checkpoint {path} {reason}: it was probably cut short by a full disk or an "
                     f"interrupted copy; use another checkpoint (e.g. which=last or an earlier "
                     f"run's checkpoints/last.ckpt) or copy it again")


def torch_load_checked(path: str | Path, loader: Callable[[], Any]) -> Any:
    """Run ``loader`` (a ``torch.load`` of ``path``); a damaged file becomes one DataError."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise damaged_checkpoint_error(path, problem)
    try:
        return loader()
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            pickle.UnpicklingError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise damaged_checkpoint_error(path, f"cannot be loaded ({first})") from None


try:  # Lightning is not needed to write result files
    from pytorch_lightning.plugins.io import TorchCheckpointIO
except ImportError:  # pragma: no cover
    TorchCheckpointIO = object  # type: ignore[assignment,misc]


class AtomicCheckpointIO(TorchCheckpointIO):  # type: ignore[misc,valid-type]
    """Lightning ``CheckpointIO``: checkpoints are written atomically (temporary file in the
    same folder, fsync, rename), so ``best.ckpt`` / ``last.ckpt`` are always either the
    previous complete file or the new one; loading a damaged file is one sentence."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        import torch

        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return torch_load_checked(path, lambda: super(AtomicCheckpointIO, self).load_checkpoint(
            path, map_location=map_location, weights_only=weights_only))
