"""Networks: plain ``nn.Module``s of two shapes, :class:`SegNet` and :class:`Denoiser`."""

from segflow.networks.adm_unet import ADMConcatUNet
from segflow.networks.base import Denoiser, SegNet
from segflow.networks.csnet import CSNet
from segflow.networks.dynunet import DynUNet
from segflow.networks.medsegdiff import MedSegDiff
from segflow.networks.unet import UNet

__all__ = ["ADMConcatUNet", "CSNet", "Denoiser", "DynUNet", "MedSegDiff", "SegNet", "UNet"]
