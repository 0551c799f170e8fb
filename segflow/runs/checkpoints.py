"""A run's checkpoints: find them and rebuild the trained model (:func:`load_model`, the one
loader of the API, ``SegModule.load_from_checkpoint``, evaluation and prediction).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segflow.infra.atomic import torch_load_checked
from segflow.infra.errors import ConfigError, find_user_error
from segflow.infra.version import VERSION, newer_than_this
from segflow.runs.layout import RunFolder
from segflow.runs.records import upgrade_targets

log = logging.getLogger(__name__)

def best_val_score(ckpt: dict[str, Any]) -> float | None:
    """The monitored validation score saved by ``ModelCheckpoint`` in a checkpoint."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and state.get("best_model_score") is not None:
            return float(state["best_model_score"])
    return None


def checkpoint_path(path: str | Path, which: str = "best") -> Path:
    """Resolve a checkpoint file from a file or a run folder (``<run>/checkpoints/<which>.ckpt``).

    Raises:
        ConfigError: nothing to load there, with what was looked for.
    """
    path = Path(path)
    if path.is_file():
        return path
    run = RunFolder(path)
    candidates = [run.checkpoint(which), path / f"{which}.ckpt"]
    if which == "best":
        candidates.append(run.checkpoint("last"))
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(
        f"no checkpoint at {path}: looked for {', '.join(str(c) for c in candidates)}; "
        f"pass a .ckpt file or a run folder from outputs/runs/..."
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a segflow checkpoint (on CPU)."""
    # weights_only=False: Lightning checkpoints hold optimizer/loop state objects; these are
    # files this project wrote, not untrusted downloads.
    return torch_load_checked(path, lambda: torch.load(path, map_location="cpu", weights_only=False))


def written_by(ckpt: dict[str, Any]) -> str:
    """Which segflow wrote the checkpoint, in words."""
    version = ckpt.get("segflow_version")
    return f"segflow {version}" if version else "a segflow that recorded no version (0.1.0 or older)"


def check_written_by(ckpt: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint written by a newer segflow (its config may hold keys and classes
    this one does not know).

    Raises:
        ConfigError: naming both versions.
    """
    written = ckpt.get("segflow_version")
    if newer_than_this(written):
        raise ConfigError(f"{path} was written by segflow {written}, newer than this segflow "
                          f"{VERSION}: its settings may not exist here; upgrade segflow "
                          f"(pip install -U segflow) to load or resume it")


def load_model(path: str | Path, which: str = "best", weights: str = "ema",
               overrides: dict[str, Any] | None = None) -> tuple[Any, DictConfig, dict[str, Any]]:
    """Rebuild a trained :class:`~segflow.engine.module.SegModule` from a checkpoint or run folder.

    The network and method are rebuilt from the resolved config stored in the checkpoint
    (no pickled modules), then the weights are loaded; the file is read once.

    Args:
        path: a ``.ckpt`` file or a run folder.
        which: ``best`` or ``last`` (for a run folder).
        weights: ``ema`` (the checkpoint's weights: the average when training kept one) or
            ``raw`` (the weights before averaging, where an EMA run kept them).
        overrides: dotted keys merged into the stored ``model`` config first
            (e.g. ``{"method.steps": 10}``).

    Returns:
        (module in eval mode, the run's config, checkpoint metadata for ``metrics.json``).

    Raises:
        ConfigError: no checkpoint there, not one written by segflow, or overrides that do
            not fit the trained network.
    """
    if weights not in ("ema", "raw"):
        raise ConfigError(f"weights must be 'ema' or 'raw', got {weights!r}")
    ckpt_file = checkpoint_path(path, which)
    ckpt = load_checkpoint(ckpt_file)
    if "segflow_config" not in ckpt:
        raise ConfigError(f"{ckpt_file} has no segflow config (not written by segflow.train?)")
    check_written_by(ckpt, ckpt_file)
    cfg = OmegaConf.create(upgrade_targets(ckpt["segflow_config"]))  # older module paths too
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        OmegaConf.update(cfg.model, key, value, merge=True)
    flat = OmegaConf.to_container(OmegaConf.create(overrides))
    given = ", ".join(f"model.{k}={v}" for k, v in _flatten(flat).items()) or "none"
    try:
        module = instantiate(cfg.model)
    except Exception as exc:  # noqa: BLE001 - a bad override deep inside a network/method
        if find_user_error(exc) is not None:
            raise
        cause = exc.__cause__ or exc
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        if not overrides:  # the stored config itself: another segflow wrote it
            raise ConfigError(f"the model of {ckpt_file} cannot be built by segflow {VERSION}: "
                              f"{first[:200]}; it was written by {written_by(ckpt)}: load it with "
                              f"that segflow version") from None
        raise ConfigError(f"the model of {ckpt_file} cannot be built with the overrides "
                          f"({given}): {first[:200]}; drop or fix them") from None
    state = ckpt["state_dict"]
    if weights == "raw":
        if "current_model_state" in ckpt:  # EMA runs keep the raw weights beside the average
            state = ckpt["current_model_state"]
        else:
            log.info("%s kept no EMA: its weights are the raw weights", ckpt_file)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else "").rstrip(".")
        raise ConfigError(f"the weights in {ckpt_file} do not fit the model built with the "
                          f"overrides ({given}): {detail[:200]}; model.net.* must match the "
                          f"trained network, drop those overrides") from None
    module.run_config = ckpt["segflow_config"]
    module.eval()
    log.info("loaded %s (epoch %s, step %s)", ckpt_file, ckpt.get("epoch"), ckpt.get("global_step"))
    meta = {"checkpoint": str(ckpt_file), "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"), "best_val_score": best_val_score(ckpt)}
    return module, cfg, meta


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"net": {"base_channels": 8}}`` → ``{"net.base_channels": 8}``."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def load_prior(run: str | Path | None):
    """The supervised prior of a refinement model (``model.method.prior``): the network and
    method of the trained run ``run``, built here so that ``segflow.methods`` never loads runs.

    Raises:
        ConfigError: ``run`` unset or missing, or a generative run.
    """
    from segflow.methods.flow.prior import PRIOR_FIX, SupervisedPrior

    if not run:
        raise ConfigError(f"model.method.prior_run is not set; {PRIOR_FIX}")
    path = Path(str(run)).expanduser()
    if not path.exists():
        raise ConfigError(f"model.method.prior_run={run} does not exist; {PRIOR_FIX}")
    module, _, _ = load_model(path)
    return SupervisedPrior(module.net, module.method, source=str(run))
