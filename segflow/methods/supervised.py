"""Supervised segmentation: one forward pass, BCE + Dice (+ clDice) loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segflow.methods.base import Method, Prediction, StepNoise
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
        super().validate()
        if min(self.bce_weight, self.dice_weight, self.cldice_weight) < 0:
            raise ValueError("Supervised loss weights must be >= 0")
        if self.bce_weight + self.dice_weight + self.cldice_weight == 0:
            raise ValueError("Supervised: at least one of bce_weight, dice_weight, cldice_weight must be > 0")

    def loss(self, net: nn.Module, image: Tensor, mask: Tensor,
             valid: Tensor | None = None) -> dict[str, Tensor]:
        # Losses in float32: under autocast, sigmoid/Dice sums lose precision in fp16.
        total, parts = self.segmentation_loss(mask, valid, logits=net(image))
        return {"loss": total, **parts}

    @torch.no_grad()
    def predict(self, net: nn.Module, image: Tensor, generator: torch.Generator | None = None,
                noise: Tensor | None = None, step_noise: StepNoise | None = None) -> Prediction:
        return Prediction(probs=torch.sigmoid(net(image).float()), nfe=1)
