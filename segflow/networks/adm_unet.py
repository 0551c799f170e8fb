"""ADM U-Net with image conditioning by concatenation ("dhariwal_concat_unet")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segflow.networks.base import Denoiser
from segflow.networks.layers import (
    AttentionBlock,
    GroupNorm32,
    ResBlock,
    TimeEmbedding,
    zero_module,
)


class EmbedSequential(nn.ModuleList):
    """Applies its layers in order, giving the time embedding to the residual blocks."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMConcatUNet(Denoiser):
    """The ADM U-Net of Dhariwal & Nichol, "Diffusion Models Beat GANs on Image
    Synthesis" (NeurIPS 2021), conditioned on the image by concatenation.

    Input ``concat(x_t, image)`` → 3×3 conv → per level ``num_blocks`` residual blocks
    (with self-attention where the level's resolution is in ``attn_resolutions``) and a
    down-sampling residual block → middle (res, attention, res) → the mirrored decoder
    with ``num_blocks + 1`` blocks per level on concatenated skips and up-sampling
    residual blocks → GN, SiLU, zero-initialised 3×3 conv to the mask's channels. The
    time ``t`` (B,) in [0, 1] is scaled by ``time_scale`` (ADM's timesteps run to 1000),
    embedded sinusoidally, passed through a 2-layer MLP and injected into every residual
    block by scale-shift (adaptive group norm).

    ``attn_resolutions`` are feature-map sides at the reference training size
    ``image_size`` (ADM's convention): with ``image_size=320`` and ``channel_mult`` of 4
    levels the sides are 320, 160, 80, 40, so ``[80, 40]`` means the two deepest levels.
    The network itself runs on any H, W divisible by ``2**(len(channel_mult) - 1)``, so
    whole images can be segmented; attention stays at the same levels.

    Args:
        in_channels: image channels.
        out_channels: mask channels.
        model_channels: width of the first level.
        channel_mult: width multiplier per level.
        channel_mult_emb: time-embedding width as a multiple of ``model_channels``.
        num_blocks: residual blocks per level (encoder; the decoder has one more).
        attn_resolutions: feature sides (at ``image_size``) with self-attention.
        image_size: the reference size ``attn_resolutions`` refer to.
        dropout: dropout inside the residual blocks.
        num_head_channels: channels per attention head.
        mid_attention: self-attention in the middle block (as in ADM).
        time_scale: multiplier of ``t`` before the sinusoidal embedding.
        use_checkpoint: gradient checkpointing of every block (saves memory, costs time).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, model_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2, 4, 8), channel_mult_emb: int = 4,
                 num_blocks: int = 2, attn_resolutions: Sequence[int] = (),
                 image_size: int = 128, dropout: float = 0.0, num_head_channels: int = 64,
                 mid_attention: bool = True, time_scale: float = 1000.0,
                 use_checkpoint: bool = False):
        super().__init__()
        channel_mult = [int(m) for m in channel_mult]
        if not channel_mult or min(channel_mult) < 1 or model_channels < 1 or num_blocks < 1:
            raise ValueError("ADMConcatUNet: model_channels, num_blocks and every channel_mult "
                             "entry must be >= 1")
        levels = len(channel_mult)
        sides = [image_size // 2**i for i in range(levels)]
        unknown = sorted(set(int(r) for r in attn_resolutions) - set(sides))
        if unknown:
            raise ValueError(f"attn_resolutions {unknown} are not feature sides of this network at "
                             f"image_size={image_size} (its levels are {sides})")
        attn = {i for i, s in enumerate(sides) if s in set(int(r) for r in attn_resolutions)}
        self.in_channels, self.out_channels = in_channels, out_channels
        self.size_multiple = 2 ** (levels - 1)
        self.model_channels, self.time_scale = model_channels, time_scale
        emb_dim = model_channels * channel_mult_emb
        self.time_embed = TimeEmbedding(model_channels, emb_dim, time_scale)

        def res(i: int, o: int, **kw: bool) -> ResBlock:
            return ResBlock(i, o, emb_dim, dropout, use_checkpoint=use_checkpoint, **kw)

        def att(c: int) -> AttentionBlock:
            # ADM's rule: heads of num_head_channels channels each.
            return AttentionBlock(c, max(1, c // num_head_channels), use_checkpoint)

        self.input = nn.Conv2d(out_channels + in_channels, model_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels, ch = [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                block = EmbedSequential([res(ch, mult * model_channels)])
                ch = mult * model_channels
                if level in attn:
                    block.append(att(ch))
                self.down.append(block)
                skip_channels.append(ch)
            if level < levels - 1:
                self.down.append(EmbedSequential([res(ch, ch, down=True)]))
                skip_channels.append(ch)
        self.middle = EmbedSequential([res(ch, ch), *([att(ch)] if mid_attention else []), res(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_blocks + 1):
                block = EmbedSequential([res(ch + skip_channels.pop(), mult * model_channels)])
                ch = mult * model_channels
                if level in attn:
                    block.append(att(ch))
                if level > 0 and i == num_blocks:
                    block.append(res(ch, ch, up=True))
                self.up.append(block)
        assert not skip_channels
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> Tensor:
        """Args: x_t (B, C_out, H, W), t (B,) in [0, 1], image (B, C_in, H, W).

        Returns: (B, C_out, H, W); H and W must be divisible by ``size_multiple``.
        """
        h_in, w_in = x_t.shape[-2:]
        if h_in % self.size_multiple or w_in % self.size_multiple:
            raise ValueError(f"ADMConcatUNet needs H, W divisible by {self.size_multiple}, "
                             f"got {h_in}x{w_in} (pad the input; segflow.inference.window does)")
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        emb = self.time_embed(t)
        h = self.input(torch.cat([x_t, image.to(x_t.dtype)], dim=1))
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
