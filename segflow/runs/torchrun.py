"""The processes of one ``torchrun`` job (Lightning's torchelastic environment) agree on
their folders: each process runs the whole command, Hydra included, so global rank 0
claims the run folder and hands its path to the others through torchrun's own key-value
store (the agent's store at ``MASTER_ADDR:MASTER_PORT``, which every worker of the job can
reach, on any node).

Used by :func:`segflow.runs.layout.shared_claims`.
"""

from __future__ import annotations

import os
from datetime import timedelta

#: How long a rank > 0 waits for rank 0's folder (rank 0 may start later on another node).
WAIT_S = 300


def torchrun_rank() -> int | None:
    """This process's global rank when ``torchrun`` started it (with its agent store), else
    None."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" not in env or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    rank = env.get("RANK", "")
    return int(rank) if rank.isdigit() else None


def _key(name: str) -> str:
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"segflow/{name}/attempt_{attempt}"


def _store(timeout_s: float):
    from torch.distributed import TCPStore

    return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                    timeout=timedelta(seconds=timeout_s))


def publish(name: str, value: str) -> None:
    """Rank 0: make ``value`` known to the job's other ranks under ``name``."""
    _store(60).set(_key(name), value)


def receive(name: str) -> str:
    """Ranks > 0: the value rank 0 published under ``name`` (waits up to :data:`WAIT_S`)."""
    return _store(WAIT_S).get(_key(name)).decode()
