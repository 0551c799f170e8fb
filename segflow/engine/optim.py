"""The optimisation recipe, configured: optimiser and learning-rate schedule factories.

The model config names them as ``_partial_`` targets (``conf/model/optimizer/``,
``conf/model/scheduler/``); :class:`~segflow.engine.module.SegModule` and the training
benchmark both build them here, so a run and its benchmark optimise alike.

* ``model.optimizer``: any ``torch.optim`` class (or callable) taking parameter groups
  first; it gets the network's parameters in two groups, the second (biases and norm
  parameters) without weight decay.
* ``model.scheduler``: a callable ``(optimizer, total_steps) → LR scheduler`` stepped once
  per optimiser step, e.g. :func:`warmup_schedule` (the default).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
DECAYS = ("cosine", "constant")


def optimizer_factory(optimizer: OptimizerFactory | None = None, learning_rate: float = 1e-3,
                      weight_decay: float = 1e-4) -> OptimizerFactory:
    """``optimizer``, or, when None (a module or benchmark built without a config), the
    default optimiser as ``conf/model/optimizer/adamw.yaml`` says it, at ``learning_rate``
    and ``weight_decay``."""
    if optimizer is not None:
        return optimizer
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / "optimizer" / "adamw.yaml")
    node.lr, node.weight_decay = learning_rate, weight_decay
    return instantiate(node)


def param_groups(net: nn.Module) -> list[dict[str, Any]]:
    """The trainable parameters in two groups: weights (decayed with the optimiser's
    ``weight_decay``) and biases / norm parameters (``ndim <= 1``, never decayed)."""
    params = [p for p in net.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    func = factory.func if isinstance(factory, functools.partial) else factory
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def build_optimizer(factory: OptimizerFactory, net: nn.Module, fused: bool = False
                    ) -> torch.optim.Optimizer:
    """``factory(param_groups(net))``; ``fused=True`` asks a CUDA-fused implementation of
    optimisers that have one (AdamW, Adam, SGD), on a network whose parameters are on CUDA."""
    kwargs: dict[str, Any] = {}
    on_cuda = any(p.is_cuda for p in net.parameters())
    if fused and on_cuda and _accepts(factory, "fused"):
        kwargs["fused"] = True
    return factory(param_groups(net), **kwargs)


def build_scheduler(factory: SchedulerFactory, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """``factory(optimizer, total_steps=...)``; ``total_steps`` only when it takes one."""
    if _accepts(factory, "total_steps"):
        return factory(optimizer, total_steps=total_steps)
    return factory(optimizer)


def warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.05,
                    decay: str = "cosine", min_lr_ratio: float = 0.01
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay (or a constant rate).

    Args:
        total_steps: optimiser steps of the whole run.
        warmup: warm-up length: a fraction of ``total_steps`` (< 1) or a step count (≥ 1).
        decay: ``cosine`` (to ``min_lr_ratio`` · lr at the last step) or ``constant``.
        min_lr_ratio: the final learning rate as a fraction of the peak.
    """
    if decay not in DECAYS:
        raise ValueError(f"model.scheduler.decay must be one of {', '.join(DECAYS)}, got {decay!r}")
    total = max(1, int(total_steps))
    steps = int(warmup * total) if warmup < 1 else int(warmup)

    def lr_factor(step: int) -> float:
        if step < steps:
            return (step + 1) / steps
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - steps) / max(1, total - steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
