"""CS-Net: channel and spatial attention for curvilinear structures."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segflow.networks.layers import ConvBlock, ConvResBlock, EncoderDecoder, UpBlock


class SpatialAttention(nn.Module):
    """Spatial attention block of CS-Net.

    Queries and keys come from 1×3 and 3×1 convolutions (elongated kernels suited to
    thin structures, as the paper motivates); the affinity between every pair of
    positions, softmax-normalised, re-weights a 1×1 value projection. A learnable
    scale initialised to 0 makes the block start as the identity.
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        inner = max(channels // reduction, 1)
        self.query = nn.Sequential(
            nn.Conv2d(channels, inner, (1, 3), padding=(0, 1)), nn.BatchNorm2d(inner), nn.ReLU(True)
        )
        self.key = nn.Sequential(
            nn.Conv2d(channels, inner, (3, 1), padding=(1, 0)), nn.BatchNorm2d(inner), nn.ReLU(True)
        )
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (B, C, H, W). Returns: (B, C, H, W)."""
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        k = self.key(x).flatten(2)  # (B, C', HW)
        affinity = torch.softmax(q @ k, dim=-1)  # (B, HW, HW)
        v = self.value(x).flatten(2)  # (B, C, HW)
        out = (v @ affinity.transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + x


class ChannelAttention(nn.Module):
    """Channel attention block of CS-Net: a C×C affinity between feature maps
    (softmax of the Gram matrix) re-weights the channels; learnable scale starts at 0."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (B, C, H, W). Returns: (B, C, H, W)."""
        b, c, h, w = x.shape
        flat = x.flatten(2)  # (B, C, HW)
        # Computed in float32: the Gram matrix of un-normalised features overflows fp16.
        gram = flat.float() @ flat.float().transpose(1, 2)
        affinity = torch.softmax(gram, dim=-1).to(x.dtype)  # (B, C, C)
        out = (affinity @ flat).view(b, c, h, w)
        return self.beta * out + x


class AffinityAttention(nn.Module):
    """Spatial and channel attention in parallel, fused by summation with the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.spatial = SpatialAttention(channels)
        self.channel = ChannelAttention()

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(x) + self.channel(x) - x  # each branch already adds x once


class CSNet(EncoderDecoder):
    """CS-Net (Mou et al., "CS-Net: Channel and Spatial Attention Network for Curvilinear
    Structure Segmentation", MICCAI 2019; journal version CS²-Net, MedIA 2021).

    A residual encoder (four 2× max-pool downsamplings; widths ``base_channels`` × 1, 2,
    4, 8, 16), an affinity attention module at the bottleneck (spatial attention with
    1×3 / 3×1 query/key kernels and channel attention, fused by summation), and a
    decoder with transposed-conv upsampling and skip connections. H and W must be
    divisible by 16.

    Args:
        in_channels: image channels.
        out_channels: mask channels.
        base_channels: width of the first stage (32 in the paper).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 32):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        widths = [base_channels * 2**i for i in range(5)]
        self.size_multiple = 2 ** (len(widths) - 1)
        chans = [in_channels, *widths]
        self.encoder = nn.ModuleList(ConvResBlock(chans[i], chans[i + 1]) for i in range(len(widths)))
        self.attention = AffinityAttention(widths[-1])
        self.decoder = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], widths[i], block=ConvBlock(2 * widths[i], widths[i]))
            for i in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def bottleneck(self, x: Tensor) -> Tensor:
        return self.attention(x)
