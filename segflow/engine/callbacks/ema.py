"""Exponential moving average of the weights, on Lightning's weight-averaging callback."""

from __future__ import annotations

import itertools
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from segflow.infra.compat import WeightAveraging, install_average_model, weight_averaging_device


def ema_decay_at(n: int, decay: float, warmup: bool = True) -> float:
    """The decay of update ``n`` (``n`` earlier updates): ``min(decay, (1 + n) / (10 + n))``
    with the warm-up, else ``decay``."""
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay


class EMAModel(AveragedModel):
    """An ``AveragedModel`` whose update never waits for the device.

    ``AveragedModel.update_parameters`` reads its ``n_averaged`` counter (a tensor on the
    model's device) with ``bool(...)`` twice per update, and a per-parameter ``avg_fn``
    that needs the count as a number adds a ``float(...)``: each is a device→host sync
    that stalls a GPU's queue every training step. Here the count is mirrored on the
    host (read from the buffer once, after a checkpoint load), the decay is a Python
    float, and the floating-point tensors are updated with one ``torch._foreach_lerp_``
    per dtype; the ``n_averaged`` buffer is still advanced (on the device, no sync) so
    checkpoints stay those of Lightning's ``WeightAveraging``.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True,
                 device: torch.device | str | None = None):
        super().__init__(model, device=device, use_buffers=True)
        self.decay, self.warmup = float(decay), bool(warmup)
        self._count: int | None = 0

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._count = None  # re-read n_averaged once, at the next update

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self._count is None:
            self._count = int(self.n_averaged)  # one sync after a checkpoint load
        averaged = itertools.chain(self.module.parameters(), self.module.buffers())
        current = itertools.chain(model.parameters(), model.buffers())
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
        for p_avg, p_cur in zip(averaged, current, strict=True):
            p_avg, p_cur = p_avg.detach(), p_cur.detach().to(p_avg.device)
            if self._count == 0 or not p_avg.is_floating_point():
                p_avg.copy_(p_cur)  # the first update, and counters such as num_batches_tracked
                continue
            pair = groups.setdefault((p_avg.device, p_avg.dtype), ([], []))
            pair[0].append(p_avg)
            pair[1].append(p_cur)
        weight = 1.0 - ema_decay_at(self._count, self.decay, self.warmup)
        for avg_list, cur_list in groups.values():
            torch._foreach_lerp_(avg_list, cur_list, weight)
        self.n_averaged += 1
        self._count += 1


class EMA(WeightAveraging):
    """EMA of the model weights with a warm-up of the decay.

    The averaged weights are used for validation, written as ``state_dict`` into every
    checkpoint (the raw weights go to ``current_model_state``, restored on resume), and
    copied into the model when training ends — Lightning's ``WeightAveraging`` mechanics.
    The update itself is :class:`EMAModel`'s: no device→host synchronisation per step.

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
        super().__init__(use_buffers=True, **kwargs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        device = weight_averaging_device(self) or pl_module.device
        install_average_model(self, EMAModel(pl_module, self.decay, self.warmup, device))
