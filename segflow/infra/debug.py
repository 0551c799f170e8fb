"""The ``debug`` config group applied to a run: the smoke-check limits that are not
Trainer arguments.

``debug=default|fdr|overfit|profile`` (``conf/debug/``) sets ``trainer.*`` limits and a
``debug:`` node that is read here, never written into ``data.*`` or ``model.*``, so a run
trained under it stores its own data and model settings unchanged:

* ``debug.sampling``: upper bounds on a generative method's sampling settings in
  validation, test, ``segflow.eval`` and ``segflow.predict`` (:func:`debug_sampling`);
* ``debug.data``: datamodule settings used for this run only (small batches, no workers,
  validation/test on the central ``eval_crop`` pixels), :func:`debug_data`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segflow.infra.errors import ConfigError

log = logging.getLogger(__name__)


def debug_sampling(method: Any, cfg: DictConfig, logger: logging.Logger = log) -> Any:
    """The method with its sampling settings capped by ``cfg.debug.sampling`` (absent
    outside the debug group: the method is returned unchanged), and one log line saying
    what was capped."""
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
        logger.info("debug=default: sampling capped to %s (was %s); debug.sampling=null keeps "
                    "the model's own", ", ".join(f"{k}={v}" for k, (_, v) in lowered.items()),
                    ", ".join(f"{k}={old}" for k, (old, _) in lowered.items()))
    return new


def debug_data(cfg: DictConfig, data_cfg: DictConfig, given: Iterable[str] = ()) -> DictConfig:
    """``data_cfg`` with ``cfg.debug.data`` merged in, for this run's datamodule only; the
    data keys in ``given`` (set on the command line) win over the debug values, as they
    would over any config. Unchanged outside the debug group."""
    limits = OmegaConf.select(cfg, "debug.data", default=None)
    if not limits:
        return data_cfg
    extra = {k: v for k, v in OmegaConf.to_container(limits, resolve=True).items()
             if k not in set(given)}
    merged = OmegaConf.merge(data_cfg, {})
    OmegaConf.set_struct(merged, False)  # a composed data group need not declare eval_crop
    return OmegaConf.merge(merged, extra)


def data_keys(overrides: Iterable[str]) -> list[str]:
    """The ``data.<key>`` names among command-line overrides (``data.train_bs=4`` →
    ``train_bs``)."""
    keys = (o.lstrip("+~").split("=", 1)[0] for o in overrides)
    return [k.removeprefix("data.").split(".")[0] for k in keys if k.startswith("data.")]
