"""Reverse-process update rules on a sub-grid of the training steps.

Every sampler walks the same descending grid ``k_1 = T-1 > ... > k_S = 0`` (S network
evaluations) and finishes with a jump from ``k_S`` to the clean end (ᾱ = 1), where
each rule below reduces to "return the predicted x0". Each step function maps the state
at one grid step to the next, given the denoiser's ``(x0, eps)`` there, with
``ab``/``ab_next`` the ᾱ of the two steps (``ab_next = 1`` at the clean end).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from segflow.methods.base import StepNoise

SAMPLERS = ("ddpm", "ddim", "dpm_solver")
SPACINGS = ("uniform", "logsnr", "trailing", "trailing_logsnr")


def step_grid(timesteps: int, steps: int | None, spacing: str = "uniform",
              log_snr: Tensor | None = None) -> list[int]:
    """The descending training steps a sampler evaluates the network at.

    ``steps = None`` (or T) is the full chain ``T-1, ..., 0``. Fewer steps always start at
    ``T-1`` (closest to pure noise, so the first input really is ≈ N(0, I)) and are spread

    * ``uniform``: evenly over the step index, ending at 0 (DDIM's "linear" selection;
      DDPM respacing);
    * ``logsnr``: evenly over λ = log(alpha/sigma), ending at 0, the spacing Lu et al.
      recommend for DPM-Solver; needs ``log_snr`` (T,). Near step 0, λ changes fast per
      step, and the multistep solver's extrapolation is unstable on index-uniform grids;
    * ``trailing`` / ``trailing_logsnr``: S of S + 1 even positions in the index / in λ,
      without the last one (Lin et al., "Common Diffusion Noise Schedules and Sample Steps
      are Flawed", WACV 2024, "trailing" spacing). The grid ends one interval before step 0
      and the sampler's final jump to the clean end covers it: 2 steps are ``[T-1, T/2-1]``
      (index), so the second network call still sees real noise. Grids that end at 0 spend
      their last call at ᾱ ≈ 1, where the state already is the previous x0 prediction
      and the call changes nothing (2 steps there are 1 step at twice the cost).

    Rounded to integers and made strictly decreasing, so there are exactly ``steps`` NFE.

    Raises:
        ValueError: steps < 1 or > T, or an unknown spacing.
    """
    if steps is None:
        steps = timesteps
    steps = int(steps)
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampling steps must be in [1, {timesteps}] (the training timesteps), got {steps}")
    if spacing not in SPACINGS:
        raise ValueError(f"sampling spacing must be one of {list(SPACINGS)}, got {spacing!r}")
    if steps == 1:
        return [timesteps - 1]
    if spacing == "uniform":
        positions = np.linspace(timesteps - 1, 0, steps)
    elif spacing == "trailing":
        positions = timesteps * (1.0 - np.arange(steps) / steps) - 1.0
    else:
        assert log_snr is not None and log_snr.shape == (timesteps,)
        lam = log_snr.double().numpy().copy()  # decreasing in the step index
        if not np.isfinite(lam[-1]):
            # Zero terminal SNR: λ_{T-1} = −∞; place the steps as if λ went on linearly
            # (the grid always starts at T-1 anyway).
            lam[-1] = 2 * lam[-2] - lam[-3]
        targets = (np.linspace(lam[-1], lam[0], steps) if spacing == "logsnr"
                   else np.linspace(lam[-1], lam[0], steps + 1)[:-1])
        positions = np.interp(targets, lam[::-1], np.arange(timesteps)[::-1])
    grid = [timesteps - 1]
    for i, pos in enumerate(positions[1:], start=1):
        # Strictly below the previous step, and leave room for the steps still to come.
        grid.append(max(min(int(round(pos)), grid[-1] - 1), steps - 1 - i))
    return grid


def _gaussian(x_t: Tensor, generator: torch.Generator | None, step_noise: StepNoise | None
              ) -> Tensor:
    """The step's noise z: from ``step_noise`` when given, else drawn from ``generator``."""
    if step_noise is None:
        return torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
    z = step_noise()
    if z.shape != x_t.shape:
        raise ValueError(f"step_noise returned shape {tuple(z.shape)}, the state has "
                         f"{tuple(x_t.shape)}")
    return z.to(device=x_t.device, dtype=x_t.dtype)


def ddpm_step(x_t: Tensor, x0: Tensor, ab: float, ab_next: float,
              generator: torch.Generator | None = None, step_noise: StepNoise | None = None
              ) -> Tensor:
    """Ancestral sampling from the posterior q(x_next | x_t, x0) (Ho et al. 2020, eqs. 6-7).

    On a respaced grid the step's β is ``1 - ab / ab_next`` (Nichol & Dhariwal 2021), so
    the full chain and shorter chains share one formula. Posterior mean
    ``sqrt(ab_next) β / (1-ab) · x0 + sqrt(1-β) (1-ab_next) / (1-ab) · x_t`` and variance
    ``β (1-ab_next) / (1-ab)`` (zero at the clean end, where no noise is drawn). The noise
    comes from ``step_noise`` when given (see :data:`StepNoise`), else from ``generator``.
    """
    beta = 1.0 - ab / ab_next
    mean = (math.sqrt(ab_next) * beta / (1 - ab)) * x0 \
        + (math.sqrt(1 - beta) * (1 - ab_next) / (1 - ab)) * x_t
    var = beta * (1 - ab_next) / (1 - ab)
    if var <= 0:
        return mean
    return mean + math.sqrt(var) * _gaussian(x_t, generator, step_noise)


def ddim_step(x_t: Tensor, x0: Tensor, eps: Tensor, ab: float, ab_next: float, eta: float = 0.0,
              generator: torch.Generator | None = None, step_noise: StepNoise | None = None
              ) -> Tensor:
    """DDIM (Song, Meng & Ermon, ICLR 2021, eq. 12).

    ``x_next = sqrt(ab_next) x0 + sqrt(1 - ab_next - s²) eps + s z`` with
    ``s = eta · sqrt((1-ab_next)/(1-ab)) · sqrt(1 - ab/ab_next)``: deterministic for
    ``eta = 0`` (no noise drawn); ``eta = 1`` is the DDPM posterior (same mean and variance
    as :func:`ddpm_step`). ``z`` comes from ``step_noise`` when given, else from ``generator``.
    """
    s2 = eta**2 * (1 - ab_next) / (1 - ab) * (1 - ab / ab_next)
    out = math.sqrt(ab_next) * x0 + math.sqrt(max(1 - ab_next - s2, 0.0)) * eps
    if s2 <= 0:
        return out
    return out + math.sqrt(s2) * _gaussian(x_t, generator, step_noise)


def log_snr_half(ab: float) -> float:
    """λ = log(alpha / sigma) = ½ log(ᾱ / (1 - ᾱ)), the DPM-Solver time variable; −∞ at
    ᾱ = 0 (a zero-terminal-SNR schedule's last step)."""
    if ab <= 0.0:
        return -math.inf
    return 0.5 * (math.log(ab) - math.log1p(-ab))


class DPMSolverPP2M:
    """DPM-Solver++(2M): multistep second-order solver of the diffusion ODE in data
    prediction (Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models", 2022, Algorithm 2).

    With ``λ = log(alpha/sigma)`` and ``h = λ_next - λ``, one step is
    ``x_next = (sigma_next / sigma) x - alpha_next (e^{-h} - 1) D``, where ``D`` is the
    current x0 prediction for the first step (first order, = DDIM) and
    ``(1 + 1/(2r)) x0 - 1/(2r) x0_prev`` with ``r = h_prev / h`` afterwards. The final
    jump to the clean end (λ = ∞) is first order: it returns the current x0 prediction.

    Lower-order final step (Lu et al.'s ``lower_order_final``): with few steps the last
    update, where λ moves fastest, is unstable at second order, and Lu et al. take it first
    order. Here the last update is always the jump to the clean end, which has no
    second-order form (``r = h_prev / h → 0``), so it is the one lower-order final step; the
    update into the last grid point before it is second order like every update after the
    first. (Taking that one first order as well would make two lower-order final steps: a
    3-step run would be DDIM.)

    A zero-terminal-SNR grid starts at ᾱ = 0 (λ = −∞): the first update, first order, is
    DDIM's from pure noise, ``alpha_next·x0 + sigma_next·x``, and the next one has
    ``r = ∞``, i.e. first order as well — the extrapolation has no finite previous λ.

    Stateful across one trajectory: make a new instance per sampling run.

    Args:
        steps: network evaluations of the run (the grid's length); accepted for the
            callers' sake, the step rule does not depend on it.
        lower_order_final: accepted for configuration compatibility; the final jump is
            first order either way (see above), so both values give the same solver.
    """

    def __init__(self, steps: int | None = None, lower_order_final: bool = True) -> None:
        self.prev_x0: Tensor | None = None
        self.prev_h: float | None = None
        self.updates = 0
        self.steps, self.lower_order_final = steps, bool(lower_order_final)

    def step(self, x_t: Tensor, x0: Tensor, ab: float, ab_next: float) -> Tensor:
        self.updates += 1
        if ab_next >= 1.0:
            return x0  # the lower-order final step
        lam, lam_next = log_snr_half(ab), log_snr_half(ab_next)
        h = lam_next - lam
        if self.prev_x0 is None or self.prev_h is None or not math.isfinite(self.prev_h):
            d = x0
        else:
            r = self.prev_h / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * self.prev_x0
        self.prev_x0, self.prev_h = x0, h
        sigma_ratio = math.sqrt((1 - ab_next) / (1 - ab))
        return sigma_ratio * x_t - math.sqrt(ab_next) * math.expm1(-h) * d  # expm1(−∞) = −1
