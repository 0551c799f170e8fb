"""The building blocks of every network, each written once.

* Supervised networks (U-Net, CS-Net): :class:`ConvBlock`, :class:`ConvResBlock`,
  :class:`UpBlock` and the U-shaped :class:`EncoderDecoder`, with a choice of normalisation (:func:`norm_layer`).
* Time-conditioned denoisers (ADM U-Net, MedSegDiff): :func:`timestep_embedding`,
  :class:`TimeEmbedding`, :class:`GroupNorm32` (group count by :func:`norm_groups`),
  :class:`ResBlock` (scale-shift time conditioning, optional resampling) and
  :class:`AttentionBlock`.

Where the networks differ in a detail (how GroupNorm picks its group count, how many
attention heads), the detail is a parameter, so each network keeps its parameterisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from segflow.networks.base import SegNet

# -- supervised blocks -----------------------------------------------------------------------


def norm_layer(kind: str, channels: int, groups: int = 8) -> nn.Module:
    """A normalisation layer by name: ``batch``, ``group``, ``instance`` or ``none``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(groups, channels), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: use one of batch, group, instance, none")


class ConvBlock(nn.Sequential):
    """Two (3×3 conv → norm → ReLU) layers: the classic U-Net stage."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", dropout: float = 0.0):
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=norm == "none"),
            norm_layer(norm, out_ch),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        layers += [
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=norm == "none"),
            norm_layer(norm, out_ch),
            nn.ReLU(inplace=True),
        ]
        super().__init__(*layers)


class ConvResBlock(nn.Module):
    """Residual block: (3×3 conv → norm → ReLU → 3×3 conv → norm) + 1×1 projected shortcut."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch"):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            norm_layer(norm, out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            norm_layer(norm, out_ch),
        )
        self.shortcut = (
            nn.Identity()
            if in_ch == out_ch
            else nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), norm_layer(norm, out_ch))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class UpBlock(nn.Module):
    """2× transposed-conv upsampling, concatenation with the skip, then a decoder stage."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, block: nn.Module | None = None,
                 norm: str = "batch"):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        self.block = block if block is not None else ConvBlock(out_ch + skip_ch, out_ch, norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class EncoderDecoder(SegNet):
    """The U-shaped forward pass of the supervised networks: encoder stages with 2× max
    pooling between them (the output before each pooling kept as a skip), the
    :meth:`bottleneck`, decoder :class:`UpBlock` s on the skips, and a 1×1 head.

    Subclasses fill ``encoder``, ``decoder`` and ``head``, and may override :meth:`bottleneck`.
    """

    encoder: nn.ModuleList
    decoder: nn.ModuleList
    head: nn.Module

    def bottleneck(self, x: Tensor) -> Tensor:
        """Applied to the deepest features (identity here)."""
        return x

    def forward(self, image: Tensor) -> Tensor:
        """Args: image (B, C_in, H, W). Returns: logits (B, C_out, H, W)."""
        skips: list[Tensor] = []
        x = image
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            if i < len(self.encoder) - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.head(x)


# -- time-conditioned blocks -----------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017) of (B,) times → (B, dim), unscaled.

    Frequencies are geometric from 1 to 1/max_period; cos and sin halves (zero-padded to an
    odd ``dim``). Callers scale ``t`` first (see :class:`TimeEmbedding`).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimeEmbedding(nn.Sequential):
    """t (B,) in [0, 1] → ``t · time_scale`` embedded sinusoidally in ``freq_dim``
    dimensions → Linear → SiLU → Linear → (B, emb_dim). ``time_scale=1000`` gives the
    frequencies DDPM and ADM use for integer steps 0..999."""

    def __init__(self, freq_dim: int, emb_dim: int, time_scale: float = 1000.0):
        super().__init__(nn.Linear(freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.freq_dim, self.time_scale = freq_dim, time_scale

    def forward(self, t: Tensor, dtype: torch.dtype | None = None) -> Tensor:  # type: ignore[override]
        """``dtype``: cast the sinusoids to it before the MLP (None: float32)."""
        emb = timestep_embedding(t * self.time_scale, self.freq_dim)
        return super().forward(emb if dtype is None else emb.to(dtype))


NORM_GROUP_RULES = ("gcd", "divisor")


def norm_groups(channels: int, rule: str = "gcd", max_groups: int = 32) -> int:
    """GroupNorm's group count for ``channels``, at most ``max_groups``.

    ``gcd``: ``gcd(max_groups, channels)`` (ADM's 32 groups, or a power-of-two divisor at
    small widths). ``divisor``: the largest divisor of ``channels`` up to ``max_groups``.
    The two agree on powers of two and differ elsewhere (48 channels: 16 vs 24 groups).
    """
    if rule == "gcd":
        return math.gcd(max_groups, channels)
    if rule == "divisor":
        return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)
    raise ValueError(f"unknown GroupNorm rule {rule!r}: use one of {', '.join(NORM_GROUP_RULES)}")


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (mixed precision loses the statistics in fp16), with
    the group count of :func:`norm_groups`."""

    def __init__(self, channels: int, rule: str = "gcd"):
        super().__init__(norm_groups(channels, rule), channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: residual branches and the output start as identity / zero."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Pre-activation residual block of ADM (Dhariwal & Nichol 2021): GN → SiLU →
    [resample] → 3×3 conv, then adaptive group norm ``GN(h)·(1 + scale) + shift`` with
    (scale, shift) from the time embedding (plain GN when ``emb_dim`` is None), SiLU,
    dropout, zero-initialised 3×3 conv; skip = identity or 1×1 conv. ``up``/``down`` make
    it a BigGAN-style resampling block (nearest ×2 / average-pool ÷2 on both branches).

    Args:
        in_ch, out_ch: channels.
        emb_dim: time-embedding width, or None for a block without time input.
        dropout: dropout before the last conv.
        up, down: resample by 2.
        use_checkpoint: gradient checkpointing (saves memory, costs time).
        norm_rule: GroupNorm's group rule (:func:`norm_groups`).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None = None, dropout: float = 0.0,
                 up: bool = False, down: bool = False, use_checkpoint: bool = False,
                 norm_rule: str = "gcd"):
        super().__init__()
        assert not (up and down)
        self.up, self.down, self.use_checkpoint = up, down, use_checkpoint
        self.in_norm = GroupNorm32(in_ch, norm_rule)
        self.in_conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch)) if emb_dim else None
        self.out_norm = GroupNorm32(out_ch, norm_rule)
        self.out = nn.Sequential(nn.SiLU(), nn.Dropout(dropout),
                                 zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def _forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = F.silu(self.in_norm(x))
        # Resample after the activation, before the conv (as in ADM's up/down blocks).
        h, x = self._resample(h), self._resample(x)
        h = self.out_norm(self.in_conv(h))
        if self.emb is not None:
            scale, shift = self.emb(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return self.skip(x) + self.out(h)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """Args: x (B, in_ch, H, W), emb (B, emb_dim) or None. Returns (B, out_ch, H', W')."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels, residual, zero-initialised projection.

    Args:
        channels: feature channels (divisible by ``heads``).
        heads: attention heads.
        use_checkpoint: gradient checkpointing.
        norm_rule: GroupNorm's group rule (:func:`norm_groups`).
    """

    def __init__(self, channels: int, heads: int = 1, use_checkpoint: bool = False,
                 norm_rule: str = "gcd"):
        super().__init__()
        if heads < 1 or channels % heads:
            raise ValueError(f"attention: {channels} channels do not split into {heads} heads")
        self.heads, self.use_checkpoint = heads, use_checkpoint
        self.norm = GroupNorm32(channels, norm_rule)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv1d(channels, channels, 1))

    def _forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n, d = h * w, c // self.heads
        # Pixels as tokens (B, N, C): a view of a channels-last input, one copy otherwise.
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, n, c)
        # The 1x1 projections as matmuls over the token rows (weights kept as Conv1d's).
        qkv = F.linear(tokens, self.qkv.weight[..., 0], self.qkv.bias)          # (B, N, 3C)
        # q, k, v contiguous (B, heads, N, d): the layout the fused (flash and
        # memory-efficient) kernels of scaled_dot_product_attention take without a copy.
        q, k, v = qkv.reshape(b, n, 3, self.heads, d).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)                             # (B, heads, N, d)
        out = F.linear(out.transpose(1, 2).reshape(b, n, c), self.proj.weight[..., 0],
                       self.proj.bias)                                           # (B, N, C)
        # Back to (B, C, H, W) as a channels-last view (no copy).
        return x + out.reshape(b, h, w, c).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)
