"""Small building blocks shared by the networks."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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


class ResBlock(nn.Module):
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
