"""The probability path of conditional flow matching and its training-time distribution.

Pure functions of tensors (no network): the interpolant ``x_t`` between noise ``x0`` (t = 0)
and the mask ``x1`` (t = 1), its time derivative, the bridge noise, the gain of the exact
marginal velocity given a clean-mask estimate (:func:`field_gain`), and where training draws
``t`` (:func:`sample_time`, :func:`grid_times`).
:class:`~segflow.methods.flow.method.FlowMatching` composes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import Tensor

TIME_SAMPLINGS = ("uniform", "logit_normal")
GRID_SOLVERS = ("euler", "midpoint", "heun")


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


def noise_moments(t: Tensor, sigma: float, schedule: str) -> tuple[Tensor, Tensor]:
    """(s(t)², s(t)·s'(t)) of the path noise in closed form, finite at both ends:
    bridge ``σ²·t(1 − t)`` and ``σ²·(1 − 2t)/2`` (the limits at t = 0 and 1 included, where
    s' alone is infinite); constant ``σ²`` and 0."""
    if sigma == 0:
        return torch.zeros_like(t), torch.zeros_like(t)
    if schedule == "constant":
        return torch.full_like(t, sigma**2), torch.zeros_like(t)
    return sigma**2 * t * (1 - t), 0.5 * sigma**2 * (1 - 2 * t)


def field_gain(t: Tensor | float, sigma: float, schedule: str, sigma_min: float = 0.0,
               source_std: float = 1.0, delta: float = 1e-2) -> Tensor:
    """The gain k(t) of the exact marginal velocity given the clean-mask posterior mean.

    For the path ``x_t = c·x0 + t·x1 + s·ε`` (c = 1 − a·t, a = 1 − σ_min), a source
    ``x0 = μ + τ·z`` (z, ε ~ N(0, I) independent of each other and of x1) and the target
    ``u_t = x1 − a·x0 + s'·ε``: given x1, the residual ``r = x_t − t·x1 − c·μ = c·τ·z + s·ε``
    is Gaussian with variance ``D = c²τ² + s²``, and the noise part of u_t, ``−a·τ·z + s'·ε``,
    has covariance ``N = s·s' − a·c·τ²`` with it, so ``E[u_t | x_t, x1] = x1 − a·μ + (N/D)·r``
    — linear in x1. Averaging over x1 given x_t (Lipman et al., "Flow Matching for Generative
    Modeling", ICLR 2023: the marginal field is the conditional expectation of u_t) replaces
    x1 by x̂1 = E[x1 | x_t]::

        v(x, t) = x̂1 − a·μ + k·(x − t·x̂1 − c·μ),   k = (s·s' − a·c·τ²) / (c²·τ² + s²),

    exact for every σ, σ_min and noise schedule (Tong et al., "Improving and generalizing
    flow-based generative models with minibatch optimal transport", TMLR 2024, for the
    bridge and constant noise). σ = 0, τ = 1 gives k = −a/c, the mean-path field.

    ``D`` vanishes only at t = 1 with σ_min = 0 (and at t = 0 for a noiseless source); there
    the exact k is unbounded (as ``−1/(2(1 − t))`` for the bridge) although ``k·r`` has mean
    zero. For ``D < δ²`` the factor ``1/D`` is replaced by ``D/δ⁴`` (continuous at D = δ², 0
    at D = 0), so a solver that evaluates the field at t = 1 (Heun, dopri5) gets
    ``v = x̂1 − a·μ`` instead of an amplified residual; Euler grids never get there.

    Args:
        t: a time or times in [0, 1] (any shape).
        sigma, schedule: the path noise (see :func:`noise_moments`).
        sigma_min: σ_min of the mean path.
        source_std: τ, the standard deviation of the source around its mean.
        delta: the taper's scale δ.

    Returns:
        k(t), float64, the shape of ``t``.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    a = 1.0 - sigma_min
    c = 1.0 - a * t
    s2, ss = noise_moments(t, sigma, schedule)
    tau2 = float(source_std) ** 2
    num = ss - a * c * tau2
    den = c * c * tau2 + s2
    inv = torch.where(den >= delta**2, 1.0 / den.clamp_min(delta**2), den / delta**4)
    return num * inv


def interpolate(x0: Tensor, x1: Tensor, t: Tensor, sigma_min: float = 0.0) -> Tensor:
    """The mean path ``(1 − (1 − σ_min)·t)·x0 + t·x1`` for times t (B,)."""
    tb = bcast(t, x0)
    return (1 - (1 - sigma_min) * tb) * x0 + tb * x1


def grid_times(steps: Sequence[int], solver: str = "euler") -> tuple[Tensor, Tensor]:
    """The times fixed-step samplers evaluate the field at, and how often.

    For each step count n in ``steps``, the n-step ``solver`` grid on [0, 1] with h = 1/n:
    Euler evaluates at ``i·h``; midpoint at ``i·h`` and ``(i + ½)·h``; Heun at ``i·h`` and
    ``(i + 1)·h`` (i = 0..n − 1). Each step count gets weight 1/len(steps), shared equally by
    its evaluations, and coinciding times add up: with Euler and steps (1, 2, 4, 8), t = 0 —
    the only time a one-step sampler sees — carries 15/32 of the mass, t = 1/2 7/32.

    Returns:
        (times, probabilities): float64 (G,), sorted, distinct; the probabilities sum to 1.

    Raises:
        ValueError: an empty ``steps``, a count < 1, or a solver without a fixed grid.
    """
    if solver not in GRID_SOLVERS:
        raise ValueError(f"grid times need a fixed-step solver ({', '.join(GRID_SOLVERS)}), "
                         f"got {solver!r}")
    counts = [int(n) for n in steps]
    if not counts or min(counts) < 1:
        raise ValueError(f"grid time steps must be a non-empty list of counts >= 1, got {list(steps)}")
    mass: dict[Fraction, float] = {}
    for n in counts:
        nodes = [Fraction(i, n) for i in range(n)]
        if solver == "midpoint":
            nodes += [Fraction(2 * i + 1, 2 * n) for i in range(n)]
        elif solver == "heun":
            nodes += [Fraction(i + 1, n) for i in range(n)]
        for node in nodes:
            mass[node] = mass.get(node, 0.0) + 1.0 / (len(counts) * len(nodes))
    times = sorted(mass)
    return (torch.tensor([float(x) for x in times], dtype=torch.float64),
            torch.tensor([mass[x] for x in times], dtype=torch.float64))


def sample_time(n: int, device: torch.device, sampling: str = "uniform", logit_mean: float = 0.0,
                logit_std: float = 1.0, uniform_fraction: float = 0.0,
                generator: torch.Generator | None = None, grid_share: float = 0.0,
                grid: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Training times (n,) in [0, 1].

    ``uniform``; or ``logit_normal`` (Esser et al., "Scaling Rectified Flow Transformers for
    High-Resolution Image Synthesis", ICML 2024): ``t = sigmoid(m + s·n)``, n ~ N(0, 1). A
    ``uniform_fraction`` u > 0 mixes in U(0, 1): each time is uniform with probability u, so
    every time a sampler's grid can visit keeps a density of at least u (a logit-normal with
    m < 0 alone leaves the later Euler steps' times almost untrained).

    A ``grid_share`` g > 0 with ``grid`` = (times, probabilities) (:func:`grid_times`) puts
    point masses on the sampler's grid: each time is, with probability g, drawn from the grid
    times — exactly, t = 0 included — and otherwise from the continuous mixture above. A
    continuous density alone gives the times a few-step sampler really uses (a one-step
    sampler: t = 0 only) no more weight than their neighbours.
    """
    if sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time sampling must be one of {', '.join(TIME_SAMPLINGS)}, got {sampling!r}")
    if sampling == "uniform":
        t = torch.rand(n, device=device, generator=generator)
    else:
        t = torch.sigmoid(logit_mean + logit_std * torch.randn(n, device=device, generator=generator))
        if uniform_fraction > 0:
            pick = torch.rand(n, device=device, generator=generator) < uniform_fraction
            t = torch.where(pick, torch.rand(n, device=device, generator=generator), t)
    if grid_share > 0 and grid is not None:
        times, probs = grid
        pick = torch.rand(n, device=device, generator=generator) < grid_share
        which = torch.multinomial(probs.to(device=device, dtype=torch.float32), n, replacement=True,
                                  generator=generator)
        t = torch.where(pick, times.to(device=device, dtype=t.dtype)[which], t)
    return t


def time_density(t: float, sampling: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0, uniform_fraction: float = 0.0) -> float:
    """The density of :func:`sample_time`'s distribution at ``t`` in (0, 1)."""
    if sampling == "uniform":
        return 1.0
    z = (math.log(t / (1 - t)) - logit_mean) / logit_std
    logit_normal = math.exp(-0.5 * z * z) / (logit_std * math.sqrt(2 * math.pi) * t * (1 - t))
    return uniform_fraction + (1 - uniform_fraction) * logit_normal
