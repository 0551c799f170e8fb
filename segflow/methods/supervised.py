"""Supervised segmentation: one forward pass, BCE + Dice (+ clDice) loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segflow.methods.base import Method, Prediction, StepNoise
from segflow.methods.losses import bce_loss, soft_cldice_loss, soft_dice_loss
from segflow.networks.base import SegNet


class Supervised(Method):
    """Pixel-wise supervised training of a :class:`~segflow.networks.SegNet`.

    Loss = ``bce_weight`` · BCE + ``dice_weight`` · (1 − soft Dice)
    + ``cldice_weight`` · (1 − soft clDice) (clDice: Shit et al., CVPR 2021),
    all restricted to valid pixels. Prediction is ``sigmoid(net(image))``.

    Args:
        bce_weight: weight of binary cross-entropy.
        dice_weight: weight of the soft Dice loss.
        cldice_weight: weight of the soft clDice loss (0 disables it).
        cldice_iters: skeletonisation iterations (≈ the largest vessel radius in pixels).
        pos_weight: BCE weight of foreground pixels (None = 1).
    """

    net_type = SegNet

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0,
                 cldice_weight: float = 0.0, cldice_iters: int = 10,
                 pos_weight: float | None = None):
        super().__init__()
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.cldice_weight, self.cldice_iters = cldice_weight, cldice_iters
        self.pos_weight = pos_weight
        self.validate()

    def validate(self) -> None:
        if min(self.bce_weight, self.dice_weight, self.cldice_weight) < 0:
            raise ValueError("Supervised loss weights must be >= 0")
        if self.bce_weight + self.dice_weight + self.cldice_weight == 0:
            raise ValueError("Supervised: at least one of bce_weight, dice_weight, cldice_weight must be > 0")

    def loss(self, net: nn.Module, image: Tensor, mask: Tensor,
             valid: Tensor | None = None) -> dict[str, Tensor]:
        logits = net(image)
        # Losses in float32: under autocast, sigmoid/Dice sums lose precision in fp16.
        logits = logits.float()
        probs = torch.sigmoid(logits)
        parts: dict[str, Tensor] = {}
        total = logits.new_zeros(())
        if self.bce_weight:
            parts["bce"] = bce_loss(logits, mask, valid, self.pos_weight)
            total = total + self.bce_weight * parts["bce"]
        if self.dice_weight:
            parts["dice"] = soft_dice_loss(probs, mask, valid)
            total = total + self.dice_weight * parts["dice"]
        if self.cldice_weight:
            parts["cldice"] = soft_cldice_loss(probs, mask, valid, self.cldice_iters)
            total = total + self.cldice_weight * parts["cldice"]
        return {"loss": total, **parts}

    @torch.no_grad()
    def predict(self, net: nn.Module, image: Tensor, generator: torch.Generator | None = None,
                noise: Tensor | None = None, step_noise: StepNoise | None = None) -> Prediction:
        return Prediction(probs=torch.sigmoid(net(image).float()), nfe=1)
