"""Config helpers: build objects from a composed config, rebuild a trained model.

Hydra/OmegaConf are used here and in the entry points only.
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


def build_many(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a group holding named ``_target_`` configs (callbacks,
    loggers); entries set to ``null`` are skipped so a user can disable one by name."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


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


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
