"""Networks: plain ``nn.Module``s of two shapes, :class:`SegNet` and :class:`Denoiser`."""

from segflow.networks.adm_unet import ADMConcatUNet
from segflow.networks.base import Denoiser, SegNet
from segflow.networks.csnet import CSNet
from segflow.networks.medsegdiff import MedSegDiff
from segflow.networks.unet import UNet

__all__ = ["ADMConcatUNet", "CSNet", "Denoiser", "MedSegDiff", "SegNet", "UNet"]
