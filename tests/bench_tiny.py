"""Test-only generative model for the benchmark tests: a tiny denoiser and a rectified-flow
method with an Euler sampler, so the sampling benchmark can be checked before the real
flow-matching and diffusion models exist. Not collected by pytest (no ``test_`` prefix);
the benchmark subprocess imports it through ``PYTHONPATH``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segflow.methods.base import GenerativeMethod
from segflow.networks.base import Denoiser


class TinyDenoiser(Denoiser):
    """Two 3×3 convolutions on [x_t, image, t] → a tensor of the mask's shape."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 4):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.body = nn.Sequential(nn.Conv2d(out_channels + in_channels + 1, width, 3, padding=1),
                                  nn.SiLU(), nn.Conv2d(width, out_channels, 3, padding=1))

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> Tensor:
        """x_t (B, C_out, H, W), t (B,), image (B, C_in, H, W) → (B, C_out, H, W)."""
        t_map = t.view(-1, 1, 1, 1).to(x_t.dtype).expand(-1, 1, *x_t.shape[-2:])
        return self.body(torch.cat([x_t, image.to(x_t.dtype), t_map], dim=1))


class TinyFlow(GenerativeMethod):
    """Rectified flow (Liu et al., ICLR 2023): x_t = (1 - t)·noise + t·x, the network
    regresses the velocity x - noise; sampling integrates it with ``steps`` Euler steps
    from t = 0 (noise) to t = 1 (mask)."""

    sampling_keys = ("n_samples", "steps")

    def __init__(self, steps: int = 2, n_samples: int = 1):
        super().__init__(n_samples)
        self.steps = steps
        self.validate()

    def validate(self) -> None:
        super().validate()
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def loss(self, net: nn.Module, image: Tensor, mask: Tensor,
             valid: Tensor | None = None) -> dict[str, Tensor]:
        x = self.mask_to_x(mask)
        noise = torch.randn_like(x)
        t = torch.rand(x.shape[0], device=x.device)
        x_t = (1 - t.view(-1, 1, 1, 1)) * noise + t.view(-1, 1, 1, 1) * x
        loss = (net(x_t, t, image).float() - (x - noise)).pow(2).mean()
        return {"loss": loss}

    def sample(self, net: nn.Module, image: Tensor, noise: Tensor,
               generator: torch.Generator | None = None, step_noise=None) -> tuple[Tensor, int]:
        x, steps = noise, int(self.steps)
        for i in range(steps):
            t = torch.full((x.shape[0],), i / steps, device=x.device)
            x = x + net(x, t, image).float() / steps
        return x, steps
