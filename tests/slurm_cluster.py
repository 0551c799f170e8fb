"""The local SLURM cluster of ``tests/slurm/cluster.sh`` as a session fixture for the tests
marked ``slurm``: started once (or reused when already up), stopped at the end when this
session started it. Where it cannot start (no slurm-wlm/munge and no root to install them,
a daemon that fails) the tests skip with the reason; ``SEGFLOW_REQUIRE_SLURM=1`` (set by
``.ci/run``) turns that skip into a failure."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "slurm" / "cluster.sh"


@dataclass
class SlurmCluster:
    """A running cluster: ``env`` is what a command needs to submit to it."""

    conf: Path

    @property
    def state(self) -> Path:
        """The cluster's folder (pid files under ``run/``, logs under ``log/``)."""
        return self.conf.parent

    def start(self) -> None:
        """Start whatever daemon of the cluster is not running (a node stopped by a test)."""
        done = _script("start", {**os.environ, "SEGFLOW_SLURM_DIR": str(self.state)}, 120)
        assert done.returncode == 0, done.stderr

    @property
    def env(self) -> dict[str, str]:
        # The node names n1/n2 resolve nowhere: DDP's rendezvous address is given as an IP.
        return {"SLURM_CONF": str(self.conf), "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A SLURM client command (squeue, scontrol, ...) against this cluster."""
        return subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True,
                              text=True, timeout=timeout)


def _unavailable(reason: str) -> None:
    if os.environ.get("SEGFLOW_REQUIRE_SLURM") == "1":
        pytest.fail(f"{reason}, but SEGFLOW_REQUIRE_SLURM=1 requires the local SLURM cluster")
    pytest.skip(reason)


def _script(command: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    env = dict(os.environ)
    state = Path(env.setdefault("SEGFLOW_SLURM_DIR", "/tmp/segflow-slurm"))
    was_up = _script("running", env, 10).returncode == 0
    try:
        started = _script("start", env, 120)
    except subprocess.TimeoutExpired:
        _script("stop", env, 60)
        _unavailable("the local SLURM cluster (tests/slurm/cluster.sh start) did not start in 120 s")
    if started.returncode != 0:
        if not was_up:
            _script("stop", env, 60)  # whatever part of it had started
        _unavailable(f"the local SLURM cluster cannot start: {started.stderr.strip()}")
    yield SlurmCluster(conf=state / "slurm.conf")
    if not was_up:
        _script("stop", env, 60)
