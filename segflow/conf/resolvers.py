"""Every OmegaConf resolver the configs use, registered by :func:`register_resolvers`.

Each entry point calls it before Hydra composes its config (nothing is registered on
import). A user error inside a resolver (:class:`~segflow.errors.SegflowError`) is printed
as its one sentence and exits with status 2 (:func:`~segflow.runs.folders.exit_in_resolver`).

* ``segflow_unique:<path>``: claim ``<path>`` (or the next free ``_1``, ``_2``): run and
  sweep folders (``hydra/default.yaml``, ``bench.yaml``);
* ``segflow_name:<key>,<value>``: ``value`` when it can be one folder name;
* ``segflow_eval_root:<output_dir>,<run_dir>``: where an evaluation writes (``eval.yaml``);
* ``segflow_predict_dir:<output_dir>,<run_dir>,<input_dir>,<overwrite>``: the folder of a
  prediction, refused before anything is written in it (``predict.yaml``);
* ``segflow_export_dir:<output_dir>,<run_dir>,<format>``: the folder of an export
  (``export.yaml``);
* ``segflow.rank0_only:<value>`` / ``segflow.rank_log:<stem>``: ``.hydra/`` and the log file
  of global rank 0 only, where every task of a job runs Hydra (``launcher=slurm``, torchrun);
* ``segflow.slurm_*``: the sbatch request and Trainer devices of ``slurm.*``
  (:mod:`segflow.conf.slurm_keys`).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from segflow.conf.slurm_keys import RESOLVERS as SLURM_RESOLVERS
from segflow.runs.folders import (
    check_name,
    check_writable,
    eval_root,
    exit_in_resolver,
    shared_claims,
)


def _global_rank() -> int:
    from segflow.distributed import env_global_rank  # torch: imported when used

    return env_global_rank()


def _predict_dir(output_dir: str | None, run_dir: str, input_dir: str,
                 overwrite: bool = False) -> str:
    from segflow.data.io import list_images  # reads images: imported when used
    from segflow.prediction import check_overwrites, output_folder

    folder = output_folder(output_dir, run_dir, input_dir)
    if output_dir:  # refused before Hydra writes .hydra/ into it: a refused folder stays as it was
        check_overwrites(folder, list(list_images(Path(input_dir))), bool(overwrite))
        check_writable(folder)
    return str(folder)


def _export_dir(output_dir: str | None, run_dir: str, fmt: str) -> str:
    from segflow.cli.export import output_folder  # torch: imported when used

    return str(output_folder(output_dir, run_dir, fmt))


def register_resolvers() -> None:
    """Register (or re-register) the resolvers above; idempotent."""
    OmegaConf.register_new_resolver(
        "segflow_unique", exit_in_resolver(lambda path: str(shared_claims("run_dir", [Path(path)])[0])),
        replace=True, use_cache=True)
    OmegaConf.register_new_resolver("segflow_name", exit_in_resolver(check_name), replace=True)
    OmegaConf.register_new_resolver(
        "segflow_eval_root", exit_in_resolver(lambda out, run: str(eval_root(out, run))),
        replace=True)
    OmegaConf.register_new_resolver("segflow_predict_dir", exit_in_resolver(_predict_dir),
                                    replace=True, use_cache=True)
    OmegaConf.register_new_resolver("segflow_export_dir", exit_in_resolver(_export_dir),
                                    replace=True, use_cache=True)
    OmegaConf.register_new_resolver(
        "segflow.rank0_only", lambda value: value if _global_rank() == 0 else None, replace=True)
    OmegaConf.register_new_resolver(
        "segflow.rank_log",
        lambda stem: f"{stem}.log" if _global_rank() == 0 else f"{stem}_rank{_global_rank()}.log",
        replace=True)
    for name, fn in SLURM_RESOLVERS.items():
        OmegaConf.register_new_resolver(name, exit_in_resolver(fn), replace=True)
