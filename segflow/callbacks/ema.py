"""Exponential moving average of the weights, on Lightning's weight-averaging callback."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch import Tensor


class EMA(WeightAveraging):
    """EMA of the model weights with a warm-up of the decay.

    The averaged weights are used for validation, written as ``state_dict`` into every
    checkpoint (the raw weights go to ``current_model_state``, restored on resume), and
    copied into the model when training ends — Lightning's ``WeightAveraging`` mechanics.

    The decay at update *n* is ``min(decay, (1 + n) / (10 + n))`` (the warm-up used by
    e.g. TensorFlow's ExponentialMovingAverage with ``num_updates``), so a 0.9999 EMA is
    meaningful after a few hundred steps instead of lagging at the random initialisation
    for tens of thousands.

    Args:
        decay: the target decay (e.g. 0.999 or 0.9999).
        warmup: apply the decay warm-up above.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, **kwargs: Any):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"model.ema_decay must be in (0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup

        def avg_fn(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
            if not averaged.is_floating_point():  # e.g. BatchNorm's num_batches_tracked
                return current.clone()
            n = float(num_averaged)
            d = min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay
            return torch.lerp(averaged, current, 1.0 - d)

        super().__init__(use_buffers=True, avg_fn=avg_fn, **kwargs)
