"""nnU-Net's network as a supervised baseline (MONAI's ``DynUNet``), an optional dependency."""

from __future__ import annotations

from torch import Tensor

from segflow.infra.errors import ConfigError
from segflow.networks.base import SegNet


class DynUNet(SegNet):
    """The U-Net that nnU-Net configures (Isensee et al., "nnU-Net: a self-configuring
    method for deep learning-based biomedical image segmentation", Nature Methods 2021),
    built by MONAI's ``DynUNet`` (``pip install 'segflow[monai]'``, imported only when this
    network is chosen).

    nnU-Net's 2-D rules, for a crop of side ``image_size``: 3×3 convolutions; the first stage
    at full resolution, then stride-2 stages until the feature map would fall below
    ``min_size`` px or ``max_stages`` stages; widths ``base_channels · 2^i`` capped at
    ``max_channels``; instance norm and leaky ReLU (MONAI's defaults for DynUNet). Deep
    supervision is off (segflow trains one output). H and W must be divisible by the
    total stride (``size_multiple``).

    Args:
        in_channels: image channels.
        out_channels: mask channels.
        image_size: the training crop side the stages are planned for.
        base_channels, max_channels: width of the first stage, and the cap.
        min_size: the smallest feature map side.
        max_stages: the most resolution stages.
        norm: MONAI's ``norm_name`` (``instance``, ``batch``).

    Raises:
        ConfigError: MONAI is not installed.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, image_size: int = 128,
                 base_channels: int = 32, max_channels: int = 480, min_size: int = 4,
                 max_stages: int = 6, norm: str = "instance"):
        super().__init__()
        try:
            from monai.networks.nets import DynUNet as MonaiDynUNet
        except ImportError:
            raise ConfigError("model=dynunet needs MONAI; install it with "
                              "pip install 'segflow[monai]' (or pip install monai)") from None
        strides, size = [1], int(image_size)
        while len(strides) < max_stages and size // 2 >= min_size:
            strides.append(2)
            size //= 2
        if len(strides) < 2:
            raise ConfigError(f"model.net.image_size={image_size} is too small for DynUNet "
                              f"(min_size={min_size}): give crops of at least {2 * min_size} px")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.size_multiple = 2 ** (len(strides) - 1)
        filters = [min(base_channels * 2**i, max_channels) for i in range(len(strides))]
        self.net = MonaiDynUNet(2, in_channels, out_channels, kernel_size=[3] * len(strides),
                                strides=strides, upsample_kernel_size=strides[1:],
                                filters=filters, norm_name=norm, deep_supervision=False)

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)
