"""U-Net baseline."""

from __future__ import annotations

from torch import nn

from segflow.networks.layers import ConvBlock, EncoderDecoder, UpBlock


class UNet(EncoderDecoder):
    """U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical
    Image Segmentation", MICCAI 2015), with padded convolutions and normalisation.

    ``depth`` stages of two 3×3 conv layers; each of the ``depth - 1`` downsamplings
    halves H, W and doubles the width; the decoder mirrors it with transposed-conv
    upsampling and skip concatenation. H and W must be divisible by ``2**(depth-1)``.

    Args:
        in_channels: image channels.
        out_channels: mask channels (1 for binary vessel masks).
        base_channels: width of the first stage.
        depth: number of resolution levels.
        norm: ``batch``, ``group``, ``instance`` or ``none``.
        dropout: dropout in the bottleneck stage.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 32,
                 depth: int = 4, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        if depth < 2:
            raise ValueError(f"UNet depth must be >= 2, got {depth}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.size_multiple = 2 ** (depth - 1)
        widths = [base_channels * 2**i for i in range(depth)]
        self.encoder = nn.ModuleList()
        ch = in_channels
        for i, w in enumerate(widths):
            self.encoder.append(ConvBlock(ch, w, norm, dropout if i == depth - 1 else 0.0))
            ch = w
        self.decoder = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], widths[i], norm=norm) for i in reversed(range(depth - 1))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)
