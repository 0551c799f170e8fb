"""The ``slurm.*`` keys of ``launcher=slurm`` / ``trainer=slurm`` turned into the sbatch
request and the Trainer's devices, as OmegaConf resolvers (registered by
:func:`segflow.conf.resolvers.register_resolvers`).

``slurm.gpus_per_node`` 0 is a CPU partition: no GPU request (no ``--gpus-per-node``, so
no gres), ``trainer.accelerator=cpu``, 32-bit precision. ``slurm.tasks_per_node`` is the
number of processes (Lightning ranks) per node: by default one per GPU, or one on CPU;
set it for DDP over CPU processes (``slurm.gpus_per_node=0 slurm.tasks_per_node=2``).

* ``segflow.slurm_gpus:<gpus_per_node>``: the launcher's ``gpus_per_node`` (null for 0);
* ``segflow.slurm_tasks:<gpus_per_node>,<tasks_per_node>``: tasks per node = Trainer devices;
* ``segflow.slurm_accelerator:<gpus_per_node>``: ``gpu`` or ``cpu``;
* ``segflow.slurm_precision:<gpus_per_node>,<gpu precision>``: ``32-true`` on CPU.
"""

from __future__ import annotations

from typing import Any

from segflow.infra.errors import ConfigError


def _count(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "0 for a CPU partition, or the GPUs of each node" if key == "gpus_per_node" \
            else "the processes per node, or null for one per GPU (one on CPU)"
        raise ConfigError(f"slurm.{key}={value!r} is not valid: give a whole number >= {minimum} "
                          f"({what})")
    return value


def launcher_gpus(gpus: Any) -> int | None:
    """What the launcher asks sbatch for per node: None (no ``--gpus-per-node``) for 0."""
    return _count("gpus_per_node", gpus, 0) or None


def tasks(gpus: Any, tasks_per_node: Any) -> int:
    """Tasks per node (= ``trainer.devices``): ``tasks_per_node``, else one per GPU, else 1."""
    gpus = _count("gpus_per_node", gpus, 0)
    if tasks_per_node is None:
        return gpus or 1
    tasks_per_node = _count("tasks_per_node", tasks_per_node, 1)
    if gpus and tasks_per_node != gpus:
        raise ConfigError(f"slurm.tasks_per_node={tasks_per_node} with slurm.gpus_per_node={gpus}: "
                          f"Lightning runs one process per GPU; leave slurm.tasks_per_node unset "
                          f"(null) or set it to {gpus}")
    return tasks_per_node


def accelerator(gpus: Any) -> str:
    """``gpu`` when the job asks for GPUs, ``cpu`` on a CPU partition."""
    return "gpu" if _count("gpus_per_node", gpus, 0) else "cpu"


def precision(gpus: Any, gpu_precision: Any) -> Any:
    """``gpu_precision`` on GPUs; ``32-true`` on CPU."""
    return gpu_precision if _count("gpus_per_node", gpus, 0) else "32-true"


RESOLVERS = {
    "segflow.slurm_gpus": launcher_gpus,
    "segflow.slurm_tasks": tasks,
    "segflow.slurm_accelerator": accelerator,
    "segflow.slurm_precision": precision,
}
