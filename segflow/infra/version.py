"""The segflow version, recorded in every checkpoint (``segflow_version``) so that a
checkpoint written by a newer or another segflow is named as such when it does not load."""

from __future__ import annotations

VERSION = "0.1.0"


def version_tuple(text: object) -> tuple[int, ...]:
    """``"0.10.2"`` → ``(0, 10, 2)`` (non-numeric parts end it)."""
    out = []
    for part in str(text).split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def newer_than_this(written: object) -> bool:
    """Whether a checkpoint written by segflow ``written`` comes from a newer segflow."""
    return written is not None and version_tuple(written) > version_tuple(VERSION)
