"""The two shapes of network segflow knows.

Networks are plain ``nn.Module``s (no Lightning, no Hydra). A *method* (see
``segflow.methods``) decides which shape it needs and refuses the other with a
``TypeError``:

* :class:`SegNet` — ``forward(image) -> logits``: one pass from image to mask logits
  (supervised models such as U-Net and CS-Net).
* :class:`Denoiser` — ``forward(x_t, t, image) -> tensor``: a network on a noisy mask
  ``x_t`` at time ``t`` (float, shape ``(B,)``, in [0, 1]) conditioned on the image
  (diffusion and flow-matching models).
"""

from __future__ import annotations

from torch import Tensor, nn


class SegNet(nn.Module):
    """Image → mask logits.

    Subclasses set ``in_channels`` (image channels), ``out_channels`` (mask channels)
    and ``size_multiple`` (H and W must be divisible by it; the caller pads).
    """

    in_channels: int
    out_channels: int
    size_multiple: int = 1

    def forward(self, image: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Args: image (B, C_in, H, W). Returns: logits (B, C_out, H, W)."""
        raise NotImplementedError


class Denoiser(nn.Module):
    """(noisy mask, time, image) → tensor of the mask's shape.

    Subclasses set ``in_channels`` (image channels), ``out_channels`` (mask channels)
    and ``size_multiple``.
    """

    in_channels: int
    out_channels: int
    size_multiple: int = 1

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> Tensor:  # pragma: no cover
        """Args: x_t (B, C_out, H, W), t (B,) in [0, 1], image (B, C_in, H, W).

        Returns: (B, C_out, H, W) — what the method asks for (velocity, noise, x0, ...).
        """
        raise NotImplementedError
