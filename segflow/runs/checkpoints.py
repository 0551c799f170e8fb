"""A run's checkpoints: find them, rebuild the trained model, choose EMA or raw weights.

Used by ``segflow.eval``, ``segflow.predict`` and the benchmarks (Hydra/OmegaConf here and
in the entry points only).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segflow.atomic import torch_load_checked
from segflow.errors import ConfigError, find_user_error

log = logging.getLogger(__name__)

#: Config groups whose dotted keys are added to (not only overridden in) the config.
OPEN_KEYS = ("model.", "data.", "grid.")


def run_folder(path: str | Path) -> Path:
    """The run folder of a run folder or of ``<run>/checkpoints/<x>.ckpt``."""
    path = Path(path)
    if path.is_file():
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path


def open_key_overrides(argv: list[str]) -> list[str]:
    """Prefix ``model.*``, ``data.*`` and ``grid.*`` overrides with ``++``: these groups are
    empty in eval.yaml (the values come from the checkpoint), so Hydra would refuse keys
    it has not seen. Idempotent (DDP child processes re-run the same command line)."""
    return [f"++{a}" if a.startswith(OPEN_KEYS) and "=" in a else a for a in argv]


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
    candidates = [path / "checkpoints" / f"{which}.ckpt", path / f"{which}.ckpt"]
    if which == "best":
        candidates.append(path / "checkpoints" / "last.ckpt")
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


def load_module(path: str | Path, which: str = "best", overrides: dict[str, Any] | None = None):
    """Rebuild a :class:`~segflow.lit_module.SegModule` from a checkpoint or run folder.

    The network and method are rebuilt from the resolved config stored in the checkpoint
    (no pickled modules), then the weights are loaded.

    Args:
        path: a ``.ckpt`` file or a run folder.
        which: ``best`` or ``last`` (for a run folder).
        overrides: dotted keys merged into the stored ``model`` config first
            (e.g. ``{"method.steps": 10}``).

    Returns:
        (module, config) — the module in eval mode and the run's config (DictConfig).
    """
    ckpt_file = checkpoint_path(path, which)
    ckpt = load_checkpoint(ckpt_file)
    if "segflow_config" not in ckpt:
        raise ConfigError(f"{ckpt_file} has no segflow config (not written by segflow.train?)")
    cfg = OmegaConf.create(ckpt["segflow_config"])
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg.model, key, value, merge=True)
    flat = OmegaConf.to_container(OmegaConf.create(overrides or {}))
    given = ", ".join(f"model.{k}={v}" for k, v in _flatten(flat).items()) or "none"
    try:
        module = instantiate(cfg.model)
    except Exception as exc:  # noqa: BLE001 - a bad override deep inside a network/method
        if find_user_error(exc) is not None:
            raise
        cause = exc.__cause__ or exc
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ConfigError(f"the model of {ckpt_file} cannot be built with the overrides "
                          f"({given}): {first[:200]}; drop or fix them") from None
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else "").rstrip(".")
        raise ConfigError(f"the weights in {ckpt_file} do not fit the model built with the "
                          f"overrides ({given}): {detail[:200]}; model.net.* must match the "
                          f"trained network, drop those overrides") from None
    module.run_config = ckpt["segflow_config"]
    module.eval()
    log.info("loaded %s (epoch %s, step %s)", ckpt_file, ckpt.get("epoch"), ckpt.get("global_step"))
    return module, cfg


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"net": {"base_channels": 8}}`` → ``{"net.base_channels": 8}``."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def load_for_eval(cfg: DictConfig) -> tuple[Any, DictConfig, dict[str, Any]]:
    """Rebuild the module (``model.*`` overrides merged), choose EMA or raw weights.

    Returns:
        (module, stored run config, checkpoint metadata for metrics.json).
    """
    if cfg.weights not in ("ema", "raw"):
        raise ConfigError(f"weights must be 'ema' or 'raw', got {cfg.weights!r}")
    model_cfg = cfg.get("model")
    overrides = OmegaConf.to_container(model_cfg, resolve=True) if model_cfg is not None else {}
    module, stored = load_module(cfg.run_dir, cfg.which, overrides)
    ckpt_file = checkpoint_path(cfg.run_dir, cfg.which)
    ckpt = load_checkpoint(ckpt_file)
    if cfg.weights == "raw":
        if "current_model_state" in ckpt:  # EMA runs keep the raw weights beside the average
            module.load_state_dict(ckpt["current_model_state"])
        else:
            log.info("%s kept no EMA: its weights are the raw weights", ckpt_file)
    meta = {"checkpoint": str(ckpt_file), "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"), "best_val_score": best_val_score(ckpt)}
    return module, stored, meta


def debug_sampling(method: Any, cfg: DictConfig, logger: logging.Logger = log) -> Any:
    """The method with its sampling settings capped by ``cfg.debug.sampling`` (set by
    ``trainer=debug``; absent otherwise: the method is returned unchanged), and one log
    line saying what was capped."""
    caps = OmegaConf.select(cfg, "debug.sampling", default=None)
    if not caps:
        return method
    try:
        new, lowered = method.capped(**OmegaConf.to_container(caps, resolve=True))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"debug.sampling={OmegaConf.to_container(caps)} ({exc}): give numbers, "
                          f"the upper bounds of the sampling settings, e.g. "
                          f"debug.sampling.steps=2") from None
    if lowered:
        logger.info("trainer=debug: sampling capped to %s (was %s); debug.sampling=null keeps "
                    "the model's own", ", ".join(f"{k}={v}" for k, (_, v) in lowered.items()),
                    ", ".join(f"{k}={old}" for k, (old, _) in lowered.items()))
    return new
