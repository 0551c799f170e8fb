"""segflow's ``launcher=slurm`` Hydra plugin: hydra-submitit-launcher's SLURM launcher with
the checks of :mod:`segflow.engine.slurm_launcher` (Hydra takes launchers from the
``hydra_plugins`` package only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _Submitit


class SlurmLauncher(_Submitit):
    """A refused sbatch as one sentence (exit 2, no folder left); job states from squeue on
    clusters without accounting."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from segflow.engine.slurm_launcher import checked_launch

        return checked_launch(self, lambda: super(SlurmLauncher, self).launch(
            job_overrides, initial_job_idx))
