"""Strict decoding: a truncated or corrupt image is an error naming the file, never pixels.

OpenCV decodes a truncated JPEG without failing: libjpeg prints "Premature end of JPEG
file" (or "Corrupt JPEG data: ...") on the process's standard error, which names no file,
and the missing rows come back as a constant. Here JPEG files are decoded with that
output captured, and any libjpeg warning becomes a :class:`~segflow.infra.errors.DataError`
naming the file and quoting the warning. PNG files must end with their ``IEND`` chunk
(a truncated PNG does not); libpng's own errors already make OpenCV return nothing.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from segflow.infra.errors import DataError

JPEG_EXTS = (".jpg", ".jpeg", ".jpe", ".jfif")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"IEND\xaeB`\x82"
#: libjpeg messages that mean the pixels are not what the file was meant to hold.
LIBJPEG_DAMAGE = ("Premature end of JPEG file", "Corrupt JPEG data", "Invalid JPEG file",
                  "Bogus", "Unsupported marker", "JPEG datastream contains no image",
                  "Not a JPEG file", "Huffman table")

_lock = threading.Lock()


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture what C libraries write to file descriptor 2 inside the block (the list gets
    the text when the block ends)."""
    out: list[str] = []
    with _lock, tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def damaged(path: Path, what: str) -> DataError:
    return DataError(f"{path} is damaged ({what}); re-export or re-download it, or remove it "
                     f"from the folder")


def imread_strict(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray | None:
    """``cv2.imread`` that refuses truncated or corrupt JPEG and PNG files.

    Returns:
        the array, or None when OpenCV cannot decode the file (the caller falls back).

    Raises:
        DataError: a JPEG that libjpeg warns about, or a PNG without its end chunk.
    """
    with path.open("rb") as f:
        head = f.read(8)
    if head == PNG_SIGNATURE:
        data = path.read_bytes()
        if PNG_IEND not in data[-64:]:
            raise damaged(path, f"truncated PNG: {len(data)} bytes and no end chunk")
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if head[:2] == b"\xff\xd8" or path.suffix.lower() in JPEG_EXTS:
        with captured_stderr() as messages:
            arr = cv2.imread(str(path), flags)
        text = "".join(messages).strip()
        if text and any(m in text for m in LIBJPEG_DAMAGE):
            raise damaged(path, f"libjpeg: {' '.join(text.split())[:160]}")
        if text:  # something else: pass it on
            print(text, file=sys.stderr)
        if arr is None and head[:2] == b"\xff\xd8":
            raise damaged(path, "libjpeg could not decode it")
        return arr
    return cv2.imread(str(path), flags)
