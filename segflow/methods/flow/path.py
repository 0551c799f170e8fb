"""The probability path of conditional flow matching and its training-time distribution.

Pure functions of tensors (no network): the interpolant ``x_t`` between noise ``x0`` (t = 0)
and the mask ``x1`` (t = 1), its time derivative, the bridge noise, and where training draws
``t``. :class:`~segflow.methods.flow.method.FlowMatching` composes them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TIME_SAMPLINGS = ("uniform", "logit_normal")


def bcast(t: Tensor, like: Tensor) -> Tensor:
    """Times (B,) shaped to broadcast against a (B, ...) tensor."""
    return t.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def noise_scale(t: Tensor, sigma: float, schedule: str) -> tuple[Tensor, Tensor]:
    """(s(t), s'(t)) of the path noise for times t (B,): bridge ``σ·√(t(1 − t))`` or
    constant ``σ``."""
    if sigma == 0:
        return torch.zeros_like(t), torch.zeros_like(t)
    if schedule == "constant":
        return torch.full_like(t, sigma), torch.zeros_like(t)
    root = torch.sqrt(t * (1 - t))
    return sigma * root, sigma * (1 - 2 * t) / (2 * root.clamp_min(1e-12))


def interpolate(x0: Tensor, x1: Tensor, t: Tensor, sigma_min: float = 0.0) -> Tensor:
    """The mean path ``(1 − (1 − σ_min)·t)·x0 + t·x1`` for times t (B,)."""
    tb = bcast(t, x0)
    return (1 - (1 - sigma_min) * tb) * x0 + tb * x1


def sample_time(n: int, device: torch.device, sampling: str = "uniform", logit_mean: float = 0.0,
                logit_std: float = 1.0, uniform_fraction: float = 0.0,
                generator: torch.Generator | None = None) -> Tensor:
    """Training times (n,) in [0, 1].

    ``uniform``; or ``logit_normal`` (Esser et al., "Scaling Rectified Flow Transformers for
    High-Resolution Image Synthesis", ICML 2024): ``t = sigmoid(m + s·n)``, n ~ N(0, 1). A
    ``uniform_fraction`` u > 0 mixes in U(0, 1): each time is uniform with probability u, so
    every time a sampler's grid can visit keeps a density of at least u (a logit-normal with
    m < 0 alone leaves the later Euler steps' times almost untrained).
    """
    if sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time sampling must be one of {', '.join(TIME_SAMPLINGS)}, got {sampling!r}")
    if sampling == "uniform":
        return torch.rand(n, device=device, generator=generator)
    t = torch.sigmoid(logit_mean + logit_std * torch.randn(n, device=device, generator=generator))
    if uniform_fraction > 0:
        pick = torch.rand(n, device=device, generator=generator) < uniform_fraction
        t = torch.where(pick, torch.rand(n, device=device, generator=generator), t)
    return t


def time_density(t: float, sampling: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0, uniform_fraction: float = 0.0) -> float:
    """The density of :func:`sample_time`'s distribution at ``t`` in (0, 1)."""
    if sampling == "uniform":
        return 1.0
    z = (math.log(t / (1 - t)) - logit_mean) / logit_std
    logit_normal = math.exp(-0.5 * z * z) / (logit_std * math.sqrt(2 * math.pi) * t * (1 - t))
    return uniform_fraction + (1 - uniform_fraction) * logit_normal
