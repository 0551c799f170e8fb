"""Child processes end with their parent.

:func:`run_child` runs a command (``segflow.compare``'s trainings and evaluations) in its own
process group and waits for it: a SIGTERM or SIGINT (Ctrl+C) the parent receives is passed
on to the whole group, and the parent then exits as killed by that signal (128 + its
number); on Linux the child also gets SIGTERM when the parent dies without a word
(``kill -9``), so no evaluation keeps running with parent 1.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # in the child, before exec
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass


def run_child(cmd: Sequence[str]) -> int:
    """Run ``cmd`` to its end and return its exit status; a SIGTERM / SIGINT meanwhile is
    forwarded to it and ends this process too (``SystemExit(128 + signal)``)."""
    proc = subprocess.Popen(list(cmd), start_new_session=True, preexec_fn=_die_with_parent)
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise SystemExit(128 + received[0])
    return code
