"""Discrete Gaussian noise schedules and the conversions between what a denoiser may predict.

Notation (Ho et al. 2020; Kingma et al. 2021): for a training step ``k`` in ``0..T-1``,
``ᾱ_k = ∏_{j≤k} (1 - β_j)``, ``alpha_k = sqrt(ᾱ_k)``, ``sigma_k = sqrt(1 - ᾱ_k)`` and

    x_k = alpha_k · x0 + sigma_k · eps,      eps ~ N(0, I).

A network may predict ``eps``, ``x0`` or the velocity ``v = alpha · eps - sigma · x0``
(Salimans & Ho 2022); since ``alpha² + sigma² = 1`` each is a linear function of any other
and ``x_k``, which is all the samplers need.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")


def make_betas(schedule: str, timesteps: int) -> Tensor:
    """β_k for k = 0..T-1 (float64).

    * ``linear``: Ho et al. 2020 (β from 1e-4 to 0.02 for T = 1000), with both ends scaled
      by ``1000 / T`` as in Nichol & Dhariwal 2021 so that ᾱ_{T-1} ≈ 0 for any T.
    * ``cosine``: Nichol & Dhariwal 2021, ``ᾱ(t) = f(t) / f(0)`` with
      ``f(t) = cos²(π/2 · (t/T + s) / (1 + s))``, s = 0.008, β clipped at 0.999.

    Raises:
        ValueError: unknown schedule or T < 2.
    """
    if timesteps < 2:
        raise ValueError(f"diffusion timesteps must be >= 2, got {timesteps}")
    if schedule == "linear":
        scale = 1000.0 / timesteps
        return torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), timesteps, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown diffusion schedule {schedule!r}: use one of {list(SCHEDULES)}")


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """β rescaled to zero terminal SNR (Lin et al., "Common Diffusion Noise Schedules and
    Sample Steps are Flawed", WACV 2024, Algorithm 1): ``√ᾱ`` is shifted so that its last
    value is 0 and scaled so that its first is unchanged,
    ``√ᾱ'_k = (√ᾱ_k − √ᾱ_{T-1}) · √ᾱ_0 / (√ᾱ_0 − √ᾱ_{T-1})``, and β is read back from
    ``ᾱ'``: the last step is pure noise (β_{T-1} = 1), as the sampler's start assumes."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    ab = root**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


class NoiseSchedule:
    """ᾱ table of a discrete diffusion plus the forward process and prediction conversions.

    Args:
        schedule: ``linear`` or ``cosine`` (see :func:`make_betas`).
        timesteps: number of training steps T.
        zero_terminal_snr: rescale β so that ᾱ_{T-1} = 0 (:func:`rescale_zero_terminal_snr`).

    Attributes:
        alphas_cumprod: (T,) float64 ᾱ_k, strictly decreasing from ≈ 1 to ≈ 0 (to exactly
            0 with ``zero_terminal_snr``).
    """

    def __init__(self, schedule: str = "linear", timesteps: int = 1000,
                 zero_terminal_snr: bool = False):
        self.schedule, self.timesteps = schedule, int(timesteps)
        self.zero_terminal_snr = bool(zero_terminal_snr)
        betas = make_betas(schedule, self.timesteps)
        self.betas = rescale_zero_terminal_snr(betas) if self.zero_terminal_snr else betas
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        if self.zero_terminal_snr:
            self.alphas_cumprod[-1] = 0.0  # exactly, not a rounding residue

    @property
    def log_snr(self) -> Tensor:
        """(T,) float64 λ_k = log(alpha_k / sigma_k), decreasing in k (−∞ at a zero terminal SNR)."""
        return 0.5 * (torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod))

    def alpha_bar(self, step: int | None) -> float:
        """ᾱ at one step; ``None`` is the clean end (ᾱ = 1) the samplers finish at."""
        return 1.0 if step is None else float(self.alphas_cumprod[step])

    def alpha_sigma(self, step: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample ``alpha``, ``sigma`` for integer ``step`` (B,), shaped (B, 1, ..., 1)
        to broadcast against ``like`` and in its dtype/device."""
        ab = self.alphas_cumprod.to(like.device)[step.to(like.device)]
        shape = (-1,) + (1,) * (like.ndim - 1)
        return ab.sqrt().to(like.dtype).view(shape), (1 - ab).sqrt().to(like.dtype).view(shape)

    def q_sample(self, x0: Tensor, step: Tensor, noise: Tensor) -> Tensor:
        """Forward process: ``x_k = alpha_k x0 + sigma_k eps`` (x0, noise: (B, ...); step: (B,))."""
        alpha, sigma = self.alpha_sigma(step, x0)
        return alpha * x0 + sigma * noise

    def time(self, step: Tensor | int, batch: int | None = None, device=None) -> Tensor:
        """The network's time input: ``t = step / T`` as float (B,) in [0, 1)."""
        if not torch.is_tensor(step):
            step = torch.full((batch or 1,), int(step), device=device)
        return step.float() / self.timesteps


def target_of(prediction: str, x0: Tensor, eps: Tensor, alpha: Tensor | float,
              sigma: Tensor | float) -> Tensor:
    """What a network trained for ``prediction`` should output at ``x = alpha x0 + sigma eps``."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    raise ValueError(f"unknown prediction {prediction!r}: use one of {list(PREDICTIONS)}")


def x0_eps_of(prediction: str, out: Tensor, x_t: Tensor, alpha: Tensor | float,
              sigma: Tensor | float) -> tuple[Tensor, Tensor]:
    """Invert :func:`target_of`: the network output ``out`` at ``x_t`` → ``(x0, eps)``.

    ``eps`` from an ``x0`` output divides by sigma and ``x0`` from an ``eps`` output by
    alpha; both are > 0 at every training step, so the conversions are finite — except
    alpha = 0 at a zero terminal SNR, where an ``eps`` output says nothing about x0 (the
    diffusion refuses that combination).
    """
    if prediction == "eps":
        return (x_t - sigma * out) / alpha, out
    if prediction == "x0":
        return out, (x_t - alpha * out) / sigma
    if prediction == "v":
        # From x_t = a x0 + s eps and v = a eps - s x0 with a² + s² = 1.
        return alpha * x_t - sigma * out, sigma * x_t + alpha * out
    raise ValueError(f"unknown prediction {prediction!r}: use one of {list(PREDICTIONS)}")
