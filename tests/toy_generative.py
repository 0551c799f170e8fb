"""A tiny test-only generative model: a conv Denoiser and a minimal flow-matching method.

Stands in for the real diffusion / flow-matching models so that the evaluation grid,
prediction and reports can be tested on the ``GenerativeMethod`` interface alone:
sampling settings ``n_samples``, ``steps`` and ``solver`` (Euler / Heun).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.methods.base import GenerativeMethod
from segflow.networks.base import Denoiser


class ToyDenoiser(Denoiser):
    """(x_t, t, image) → velocity with two 3×3 convolutions (t broadcast as a channel)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 4,
                 first_call_delay: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels, self.size_multiple = in_channels, out_channels, 1
        # Seconds the first call takes longer: a one-off start-up cost (lazy initialisation,
        # autotuning) that timings must not charge to any setting.
        self.first_call_delay = float(first_call_delay)
        self.body = nn.Sequential(
            nn.Conv2d(out_channels + in_channels + 1, base_channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(base_channels, out_channels, 3, padding=1))

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> Tensor:
        if self.first_call_delay:
            time.sleep(self.first_call_delay)
            self.first_call_delay = 0.0
        t_map = t.view(-1, 1, 1, 1).expand(-1, 1, *x_t.shape[-2:]).to(x_t.dtype)
        return self.body(torch.cat([x_t, image, t_map], dim=1))


class ToyFlow(GenerativeMethod):
    """Rectified-flow toy: x_t = (1 − t)·noise + t·x, target velocity x − noise."""

    sampling_keys = ("n_samples", "steps", "solver")

    def __init__(self, n_samples: int = 1, steps: int = 2, solver: str = "euler"):
        super().__init__(n_samples)
        self.steps, self.solver = steps, solver
        self.validate()

    def validate(self) -> None:
        super().validate()
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.solver not in ("euler", "heun"):
            raise ValueError(f"solver must be euler or heun, got {self.solver!r}")

    def loss(self, net: nn.Module, image: Tensor, mask: Tensor,
             valid: Tensor | None = None) -> dict[str, Tensor]:
        x1 = self.mask_to_x(mask)
        noise = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], device=x1.device)
        tb = t.view(-1, 1, 1, 1)
        velocity = net((1 - tb) * noise + tb * x1, t, image)
        err = F.mse_loss(velocity, x1 - noise, reduction="none")
        if valid is not None:
            err = err * valid
        return {"loss": err.mean()}

    @torch.no_grad()
    def sample(self, net: nn.Module, image: Tensor, noise: Tensor,
               generator: torch.Generator | None = None, step_noise=None) -> tuple[Tensor, int]:
        x, n, dt = noise, int(self.steps), 1.0 / int(self.steps)
        nfe = 0
        for i in range(n):
            t = torch.full((x.shape[0],), i * dt, device=x.device)
            v = net(x, t, image)
            nfe += 1
            if self.solver == "heun":
                x_next = x + dt * v
                v2 = net(x_next, t + dt, image)
                nfe += 1
                v = 0.5 * (v + v2)
            x = x + dt * v
        return x, nfe
