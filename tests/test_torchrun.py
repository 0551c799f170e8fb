"""``torchrun --nnodes=2 --nproc-per-node=1`` on this host (Lightning's torchelastic
environment): every process runs the whole command, Hydra included, and the job still has
one run folder, rank 0's, with a log per rank."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, run_dirs

pytestmark = pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent))
                                is None, reason="torchrun is not installed beside this Python")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_nodes_one_run_folder(workdir):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    port = _free_port()
    args = [*TINY, "trainer=debug", "trainer.accelerator=cpu", "trainer.strategy=ddp",
            "trainer.devices=1", "trainer.num_nodes=2"]
    env = {**os.environ, "SEGFLOW_OUTPUT_DIR": str(workdir / "outputs"),
           "SEGFLOW_DATA_DIR": str(workdir / "data"), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    nodes = [subprocess.Popen(
        [torchrun, "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
         "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "segflow.train", *args],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (1, 0)]  # the second node may well start first
    outs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    (run,) = run_dirs(workdir)  # one folder for the job, not one per process
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["effective_batch_size"] == 8  # 2 crops x 2 samples x world size 2
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in (run / "train.log").read_text()
    rank1 = (run / "train_rank1.log").read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in rank1
    assert sorted(p.name for p in run.rglob(".hydra")) == [".hydra"]
    assert len(list((run / "tensorboard").glob("events*"))) == 1
