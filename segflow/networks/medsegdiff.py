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


class LayerNorm2d(nn.Module):
    """Layer normalisation of a feature map (Ba, Kiros & Hinton 2016): each sample is
    normalised over all its units (channels × pixels), as the ``LN`` of MedSegDiff's Eq. 4,
    with a per-channel gain and bias (a per-pixel one would tie the layer to one image
    size). Equivalent to ``GroupNorm`` with a single group."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


def _resample_matrix(src_bins: int, src_side: int, src_zero: int,
                     tgt_bins: int, tgt_side: int, tgt_zero: int) -> Tensor:
    """(tgt_bins, src_bins) linear interpolation over frequency for one spectrum axis.

    Bin ``i`` of an axis of a ``side``-sample signal is frequency ``(i - zero) / side``
    cycles per sample (``zero``: the zero-frequency bin). Each target bin takes the source
    value at its own frequency (clamped to the source's range), so zero frequency maps
    onto zero frequency exactly, whatever the two sizes.
    """
    freq = (torch.arange(tgt_bins, dtype=torch.float64) - tgt_zero) / tgt_side
    pos = (freq * src_side + src_zero).clamp(0, src_bins - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=src_bins - 1)
    frac = pos - lo.double()
    mat = torch.zeros(tgt_bins, src_bins, dtype=torch.float64)
    rows = torch.arange(tgt_bins)
    mat.index_put_((rows, lo), 1 - frac, accumulate=True)
    mat.index_put_((rows, hi), frac, accumulate=True)
    return mat.float()


class FFParser(nn.Module):
    """Feature Frequency Parser (Wu et al., MedSegDiff, MIDL 2023): ``m' = iFFT(A ⊙ FFT(m))``
    with a learnable complex, per-channel attentive map ``A`` over the 2-D spectrum,
    initialised to 1 (identity).

    ``A = 1 + delta`` with the learnable ``delta`` starting at 0, so weight decay pulls
    the filter towards the identity rather than towards suppressing every frequency.
    The paper's ``A`` has the feature map's shape. Here it is stored at the spectrum shape
    of a ``size`` × ``size`` feature (the training crop at this level) and, for features
    of another size (whole images), resampled linearly **over physical frequency**: each
    bin of the new spectrum takes the map's value at its own frequency (cycles per
    sample), so the zero-frequency (DC) weight stays on the DC bin and a given spatial
    frequency keeps its weight at every size. At ``size`` itself the map is used as is.

    Args:
        channels: feature channels.
        size: the nominal feature side the map is stored at.
    """

    def __init__(self, channels: int, size: int):
        super().__init__()
        size = max(2, int(size))
        # (C, real/imag, rows with zero frequency centred at size // 2, cols 0..size/2) —
        # the rows of torch.fft.rfft2's output after fftshift, its columns as they are.
        self.delta = nn.Parameter(torch.zeros(channels, 2, size, size // 2 + 1))

    def attentive_map(self, h: int, w: int) -> Tensor:
        """Complex (C, h, w // 2 + 1) map ``A`` in the layout of ``torch.fft.rfft2`` output."""
        c, _, rows, cols = self.delta.shape
        delta = self.delta.float()
        if (rows, cols) != (h, w // 2 + 1):
            size = rows  # stored for a size × size feature: cols = size // 2 + 1
            row_mat = _resample_matrix(size, size, size // 2, h, h, h // 2).to(delta.device)
            col_mat = _resample_matrix(cols, size, 0, w // 2 + 1, w, 0).to(delta.device)
            delta = torch.einsum("hr,cirk,wk->cihw", row_mat, delta, col_mat)
        delta = torch.fft.ifftshift(delta, dim=-2)  # centred rows → FFT order
        return torch.complex(1.0 + delta[:, 0], delta[:, 1])

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (B, C, H, W). Returns: filtered (B, C, H, W), same dtype."""
        h, w = x.shape[-2:]
        # FFT in float32, outside autocast: half-precision cuFFT only handles power-of-two
        # sizes, and under bf16 autocast the map's resize (einsum) would come out in
        # bfloat16, which torch.complex does not take.
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.fft.rfft2(x.float(), norm="ortho") * self.attentive_map(h, w)
            out = torch.fft.irfft2(spec, s=(h, w), norm="ortho")
        return out.to(x.dtype)


class ConditionFusion(nn.Module):
    """Dynamic conditional encoding at one scale (Wu et al., MedSegDiff, MIDL 2023, Eq. 4).

    The noisy-mask features ``m_x`` pass the FF-Parser and then modulate the image-condition
    features ``m_I``: the two are layer-normalised and multiplied into an affine map, which
    re-weights the condition features, ``A(m_I, m_x) = (LN(m_I) ⊙ LN(FF(m_x))) ⊙ m_I``.
    The condition stream continues with ``m_I + A`` (the attentive regions enhanced, the
    rest kept), so the condition encoder's features depend on ``x_t`` and adapt to the
    current estimate at every sampling step. The mask features themselves pass on
    unchanged; the FF-Parser sits on the connection between the two encoders.
    """

    def __init__(self, channels: int, fft_size: int):
        super().__init__()
        self.ff_parser = FFParser(channels, fft_size)
        self.norm_mask = LayerNorm2d(channels)
        self.norm_cond = LayerNorm2d(channels)

    def forward(self, cond_feat: Tensor, mask_feat: Tensor) -> Tensor:
        """Args: cond_feat ``m_I`` and mask_feat ``m_x``, both (B, C, H, W).

        Returns: the modulated condition features ``m_I + A(m_I, m_x)``.
        """
        affine = self.norm_cond(cond_feat) * self.norm_mask(self.ff_parser(mask_feat))
        return cond_feat + affine * cond_feat


class MedSegDiff(Denoiser):
    """MedSegDiff denoiser (Wu, Fu, Fang, Zhang, Yang, Xiong, Liu & Xu, "MedSegDiff:
    Medical Image Segmentation with Diffusion Probabilistic Model", MIDL 2023).

    Two encoders run side by side: a time-conditioned one on the noisy mask ``x_t`` and a
    condition encoder on the image. At each scale in ``dce_levels`` the mask features,
    passed through the FF-Parser, modulate the **condition** features by dynamic
    conditional encoding (:class:`ConditionFusion`, the paper's Eq. 4), so the condition
    encoder's features from that scale on depend on ``x_t``. The two encodings are then
    fused by summation, ``E_I + E_x`` (the paper's Eq. 3): at the bottleneck, which passes
    two residual blocks around self-attention, and in each skip connection the decoder
    reads, so the decoder sees the image features at every resolution. Widths:
    ``base_channels · channel_mult[k]`` at level k; H and W must be multiples of
    ``2 ** (len(channel_mult) - 1)`` (the caller pads).

    Args:
        in_channels: image channels.
        out_channels: mask channels.
        base_channels: width of the first level.
        channel_mult: width multiplier per level (its length is the depth).
        num_res_blocks: residual blocks per level in each encoder and the decoder.
        dce_levels: levels with dynamic conditional encoding (None = all; the paper
            applies it in the middle two stages of its encoder, e.g. ``[1, 2]``).
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
            if str(k) in self.fusion:  # the condition adapts to the current x_t (Eq. 4)
                c = self.fusion[str(k)](c, h)
            skips.append(h + c)  # E_I + E_x, read by the decoder at this scale (Eq. 3)
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
