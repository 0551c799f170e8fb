"""Every OmegaConf resolver the configs use, registered by :func:`register_resolvers`; each
one a call into :mod:`segflow.runs.layout`, the owner of where outputs go.

Each command calls it before Hydra composes its config (nothing is registered on import).
A user error inside a resolver is printed as its one sentence and exits with status 2
(:func:`~segflow.runs.layout.exit_in_resolver`).

* ``segflow_run_dir:<root>,<experiment>,<time>`` / ``segflow_sweep_dir:<root>,<sweep>,<time>``:
  a new run / sweep folder (``hydra/default.yaml``);
* ``segflow_sweep_name:<experiment>,<data>,<hydra.overrides.task>``: ``sweep_name``'s default, from the keys a
  multirun sweeps (``train.yaml``);
* ``segflow_tool_dir:<root>,<kind>,<time>``: a new benchmark folder (``bench.yaml``);
* ``segflow_eval_logs:<output_dir>,<run_dir>,<time>``: an evaluation's log folder (``eval.yaml``);
* ``segflow_predict_dir:<output_dir>,<run_dir>,<input_dir>,<overwrite>``: the folder of a
  prediction, refused before anything is written in it (``predict.yaml``);
* ``segflow_export_dir:<output_dir>,<run_dir>,<format>,<overwrite>``: the folder of an export,
  refused when it holds an earlier export (``export.yaml``);
* ``segflow.rank0_only:<value>`` / ``segflow.rank_log:<stem>``: ``.hydra/`` and the log file
  of global rank 0 only, where every task of a job runs Hydra (``launcher=slurm``, torchrun);
* ``segflow.slurm_*``: the sbatch request and Trainer devices of ``slurm.*``
  (:mod:`segflow.conf.slurm_keys`).
"""

from __future__ import annotations

from omegaconf import OmegaConf

from segflow.conf.slurm_keys import RESOLVERS as SLURM_RESOLVERS
from segflow.runs import layout as L


def _rank() -> int:
    from segflow.engine.distributed import env_global_rank  # torch: imported when used

    return env_global_rank()


def _export_dir(output_dir: str | None, run_dir: str, fmt: str, overwrite: bool = False) -> str:
    from segflow.inference.export import export_folder  # torch: imported when used

    return str(export_folder(output_dir, run_dir, fmt, overwrite))  # checks, then the layout's folder


def register_resolvers() -> None:
    """Register (or re-register) the resolvers above; idempotent."""
    def add(name, fn, cache=False):
        OmegaConf.register_new_resolver(name, fn, replace=True, use_cache=cache)

    add("segflow_run_dir", L.exit_in_resolver(L.run_dir), cache=True)
    add("segflow_sweep_dir", L.exit_in_resolver(L.sweep_dir), cache=True)
    add("segflow_tool_dir", L.exit_in_resolver(L.tool_dir), cache=True)
    add("segflow_eval_logs", L.exit_in_resolver(L.eval_logs_dir), cache=True)
    add("segflow_predict_dir", L.exit_in_resolver(lambda *a: str(L.prediction_dir(*a))), cache=True)
    add("segflow_export_dir", L.exit_in_resolver(_export_dir), cache=True)
    add("segflow_sweep_name", L.sweep_name)
    add("segflow.rank0_only", lambda value: value if _rank() == 0 else None)
    add("segflow.rank_log", lambda stem: L.log_name(stem, _rank()))
    for name, fn in SLURM_RESOLVERS.items():
        add(name, L.exit_in_resolver(fn))
