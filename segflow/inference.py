"""Whole-image inference helpers (pure torch): pad to the network's multiple, crop back."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.methods.base import Method, Prediction


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) at the bottom/right so H and W are multiples of ``multiple``.

    Reflection padding (edge replication when the image is too small to reflect), so the
    network sees plausible context rather than a black border. Returns the padded
    tensor and the original (H, W).
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def _crop(x: Tensor | None, hw: tuple[int, int]) -> Tensor | None:
    return None if x is None else x[..., : hw[0], : hw[1]]


def predict_whole(method: Method, net: nn.Module, image: Tensor,
                  generator: torch.Generator | None = None) -> Prediction:
    """Segment whole images of any size: pad to ``net.size_multiple``, predict, crop back.

    Args:
        image: (B, C, H, W) normalised images.
    Returns:
        :class:`Prediction` at the input's (H, W).
    """
    padded, hw = pad_to_multiple(image, getattr(net, "size_multiple", 1))
    pred = method.predict(net, padded, generator=generator)
    return Prediction(probs=_crop(pred.probs, hw), uncertainty=_crop(pred.uncertainty, hw),
                      samples=_crop(pred.samples, hw), nfe=pred.nfe)
