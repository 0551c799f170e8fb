"""MedSegDiff: a diffusion denoiser on the mask with a parallel image-condition encoder."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.networks import layers
from segflow.networks.base import Denoiser

# MedSegDiff's parameterisation of the shared blocks: GroupNorm with the largest divisor
# of the width up to 32 groups, and 4 attention heads where the width allows.
NORM_RULE = "divisor"
ResBlock = partial(layers.ResBlock, norm_rule=NORM_RULE)


def group_norm(channels: int) -> nn.GroupNorm:
    return layers.GroupNorm32(channels, NORM_RULE)


def SelfAttention(channels: int) -> layers.AttentionBlock:  # noqa: N802 - a block's name
    return layers.AttentionBlock(channels, 4 if channels % 4 == 0 else 1, norm_rule=NORM_RULE)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel (independent of the image size)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FFParser(nn.Module):
    """Feature Frequency Parser (Wu et al., MedSegDiff, MIDL 2023): ``m' = iFFT(A ⊙ FFT(m))``
    with a learnable complex, per-channel attentive map ``A`` over the 2-D spectrum,
    initialised to 1 (identity).

    ``A = 1 + delta`` with the learnable ``delta`` starting at 0, so weight decay pulls
    the filter towards the identity rather than towards suppressing every frequency.
    The paper's ``A`` has the feature map's shape. Here it is stored at the spectrum shape
    of a ``size`` × ``size`` feature (the training crop at this level) and resized
    bilinearly over the frequency grid (zero frequency centred) when whole images of
    another size are segmented; at ``size`` itself the resize is exact.

    Args:
        channels: feature channels.
        size: the nominal feature side the map is stored at.
    """

    def __init__(self, channels: int, size: int):
        super().__init__()
        size = max(2, int(size))
        # (C, real/imag, rows with zero frequency centred, cols 0..size/2) as rfft2 gives.
        self.delta = nn.Parameter(torch.zeros(channels, 2, size, size // 2 + 1))

    def attentive_map(self, h: int, w: int) -> Tensor:
        """Complex (C, h, w // 2 + 1) map ``A`` in the layout of ``torch.fft.rfft2`` output."""
        c, _, rows, cols = self.delta.shape
        delta = self.delta
        if (rows, cols) != (h, w // 2 + 1):
            delta = F.interpolate(delta.reshape(1, 2 * c, rows, cols), size=(h, w // 2 + 1),
                                  mode="bilinear", align_corners=True).reshape(c, 2, h, w // 2 + 1)
        delta = torch.fft.ifftshift(delta.float(), dim=-2)  # centred rows → FFT order
        return torch.complex(1.0 + delta[:, 0], delta[:, 1])

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (B, C, H, W). Returns: filtered (B, C, H, W), same dtype."""
        h, w = x.shape[-2:]
        # FFT in float32: half-precision cuFFT only handles power-of-two sizes.
        spec = torch.fft.rfft2(x.float(), norm="ortho") * self.attentive_map(h, w)
        return torch.fft.irfft2(spec, s=(h, w), norm="ortho").to(x.dtype)


class ConditionFusion(nn.Module):
    """Dynamic conditional encoding at one scale (Wu et al., MedSegDiff, MIDL 2023).

    The mask features ``m_x`` pass the FF-Parser; the image-condition features ``m_I`` are
    re-weighted by their agreement with them, ``A = (LN(m_I) ⊙ LN(m_x)) ⊙ m_I``, and the
    attended condition is added to the mask features: ``m_x ← FF(m_x) + A``. The condition
    therefore adapts to the current noisy estimate at every sampling step.
    """

    def __init__(self, channels: int, fft_size: int):
        super().__init__()
        self.ff_parser = FFParser(channels, fft_size)
        self.norm_mask = ChannelLayerNorm(channels)
        self.norm_cond = ChannelLayerNorm(channels)

    def forward(self, mask_feat: Tensor, cond_feat: Tensor) -> Tensor:
        mask_feat = self.ff_parser(mask_feat)
        attended = self.norm_cond(cond_feat) * self.norm_mask(mask_feat) * cond_feat
        return mask_feat + attended


class MedSegDiff(Denoiser):
    """MedSegDiff denoiser (Wu, Fu, Fang, Zhang, Yang, Xiong, Liu & Xu, "MedSegDiff:
    Medical Image Segmentation with Diffusion Probabilistic Model", MIDL 2023).

    Two encoders run side by side: a time-conditioned one on the noisy mask ``x_t`` and a
    condition encoder on the image. At each scale in ``dce_levels`` the image features are
    fused into the mask features by :class:`ConditionFusion` (dynamic conditional encoding
    with the FF-Parser); at the bottleneck both encodings are summed, passed through two
    residual blocks around self-attention, and decoded with skip connections from the mask
    encoder. Widths: ``base_channels · channel_mult[k]`` at level k; H and W must be
    multiples of ``2 ** (len(channel_mult) - 1)`` (the caller pads).

    Args:
        in_channels: image channels.
        out_channels: mask channels.
        base_channels: width of the first level.
        channel_mult: width multiplier per level (its length is the depth).
        num_res_blocks: residual blocks per level in each encoder and the decoder.
        dce_levels: levels with conditional fusion (None = all; the paper fuses in the
            middle stages, e.g. ``[1, 2]``).
        attention: self-attention at the bottleneck.
        dropout: dropout inside the residual blocks.
        fft_size: the training crop side; sets the FF-Parser map size per level.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 1,
                 dce_levels: Sequence[int] | None = None, attention: bool = True,
                 dropout: float = 0.0, fft_size: int = 128):
        super().__init__()
        mult = [int(m) for m in channel_mult]
        if not mult or min(mult) < 1 or base_channels < 1 or num_res_blocks < 1:
            raise ValueError("MedSegDiff needs base_channels >= 1, num_res_blocks >= 1 and a "
                             f"non-empty channel_mult of positive ints, got {base_channels}, "
                             f"{num_res_blocks}, {list(channel_mult)}")
        levels = len(mult)
        dce = list(range(levels)) if dce_levels is None else [int(k) for k in dce_levels]
        if any(not 0 <= k < levels for k in dce):
            raise ValueError(f"MedSegDiff dce_levels must be in [0, {levels - 1}], got {dce}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.size_multiple = 2 ** (levels - 1)
        widths = [base_channels * m for m in mult]
        emb_dim = 4 * base_channels
        self.emb_dim = emb_dim
        self.time_mlp = layers.TimeEmbedding(emb_dim, emb_dim, time_scale=1000.0)

        self.mask_in = nn.Conv2d(out_channels, widths[0], 3, padding=1)
        self.cond_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.mask_enc, self.cond_enc = nn.ModuleList(), nn.ModuleList()
        self.mask_down, self.cond_down = nn.ModuleList(), nn.ModuleList()
        self.fusion = nn.ModuleDict()
        ch = widths[0]
        for k, w in enumerate(widths):
            self.mask_enc.append(nn.ModuleList(
                ResBlock(ch if j == 0 else w, w, emb_dim, dropout) for j in range(num_res_blocks)))
            self.cond_enc.append(nn.ModuleList(
                ResBlock(ch if j == 0 else w, w, None, dropout) for j in range(num_res_blocks)))
            if k in dce:
                self.fusion[str(k)] = ConditionFusion(w, max(2, fft_size // 2**k))
            if k < levels - 1:
                self.mask_down.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
                self.cond_down.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
            ch = w

        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = SelfAttention(ch) if attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)

        self.dec, self.up = nn.ModuleList(), nn.ModuleList()
        for k in reversed(range(levels)):
            w = widths[k]
            self.dec.append(nn.ModuleList(
                ResBlock((ch + w) if j == 0 else w, w, emb_dim, dropout) for j in range(num_res_blocks)))
            ch = w
            if k > 0:
                self.up.append(nn.Conv2d(w, widths[k - 1], 3, padding=1))
                ch = widths[k - 1]
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> Tensor:
        """Args: x_t (B, C_out, H, W) noisy mask, t (B,) in [0, 1], image (B, C_in, H, W).

        Returns: (B, C_out, H, W), what the method trains it for (eps, x0 or v).
        """
        emb = self.time_mlp(t, x_t.dtype)
        h, c = self.mask_in(x_t), self.cond_in(image)
        skips: list[Tensor] = []
        for k, (mask_blocks, cond_blocks) in enumerate(zip(self.mask_enc, self.cond_enc, strict=True)):
            for mb, cb in zip(mask_blocks, cond_blocks, strict=True):
                h, c = mb(h, emb), cb(c)
            if str(k) in self.fusion:
                h = self.fusion[str(k)](h, c)
            skips.append(h)
            if k < len(self.mask_down):
                h, c = self.mask_down[k](h), self.cond_down[k](c)
        h = self.mid2(self.mid_attn(self.mid1(h + c, emb)), emb)
        for i, blocks in enumerate(self.dec):
            h = torch.cat([h, skips.pop()], dim=1)
            for blk in blocks:
                h = blk(h, emb)
            if i < len(self.up):
                h = self.up[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)
