"""The method interface: a training objective plus a sampler, knowing nothing of Lightning.

``SegModule`` drives any (method, network) pair through exactly two calls:

* ``method.loss(net, image, mask, valid)`` → dict with a scalar ``"loss"`` (and parts to log);
* ``method.predict(net, image, generator=, noise=, step_noise=)`` → :class:`Prediction`
  (probabilities in [0, 1], and for generative methods the ensemble spread as an
  uncertainty map).

Callers that need more than that ask the method, never the network's class:
:meth:`Method.net_inputs` gives the arguments of one network evaluation as the method
makes it (benchmarks, FLOP counts), :meth:`Method.noise_shape` the starting noise a
prediction draws (``None`` for one-pass methods; sliding-window inference crops one
whole-image field of it per tile).

A method is an ``nn.Module``: modules and buffers it registers (a frozen teacher network
for distillation, schedule tensors) move with the model to its device and are saved in,
and restored from, the checkpoint (``method.*`` keys of the ``state_dict``). Only the
network is optimised; freeze what the method owns (``requires_grad_(False)``).

Sampling settings (solver, steps, ensemble size, ...) are plain attributes listed in
``sampling_keys``; :meth:`Method.with_settings` returns a copy with some of them
changed, so one checkpoint can be evaluated under many settings without retraining.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from segflow.infra.errors import NetworkMismatchError
from segflow.methods.losses import (
    bce_loss,
    masked_bce_on_probs,
    soft_cldice_loss,
    soft_dice_loss,
)
from segflow.networks.base import Denoiser

#: Sampling settings whose default is left out of an evaluation's name and settings (every
#: run has them): one pass, and the full-scale starting noise.
UNNAMED_DEFAULTS: dict[str, float] = {"tta": 1, "temperature": 1.0, "min_component": 0}

TTA_PASSES = (1, 2, 4, 8)
"""Test-time augmentation sizes: identity, + horizontal flip, + vertical flip and half turn,
+ the quarter turns and transposes (the dihedral group of the square)."""

StepNoise = Callable[[], Tensor]
"""A per-step noise source of stochastic samplers: each call returns the next stochastic
step's standard Gaussian noise, shaped like the state (the sliding window passes crops of
one whole-image field per step)."""


@dataclass
class Prediction:
    """What ``Method.predict`` returns.

    Attributes:
        probs: (B, C, H, W) foreground probability in [0, 1] (ensemble mean where sampled).
        uncertainty: (B, C, H, W) per-pixel standard deviation over the ensemble, or
            ``None`` for one-pass methods.
        samples: (B, N, C, H, W) the N ensemble members (each in [0, 1]), or ``None``.
        nfe: network evaluations used per ensemble member (1 for one-pass methods).
    """

    probs: Tensor
    uncertainty: Tensor | None = None
    samples: Tensor | None = None
    nfe: int = 1


class Method(nn.Module, ABC):
    """Base class of training objectives with a matching sampler.

    Subclasses set ``net_type`` (the network shape they drive: ``SegNet`` or
    ``Denoiser``) and ``sampling_keys`` (attributes that may change at evaluation time),
    and call ``super().__init__()`` before registering modules or buffers.
    """

    net_type: ClassVar[type[nn.Module]] = nn.Module
    sampling_keys: ClassVar[tuple[str, ...]] = ("tta", "min_component")
    #: Test-time augmentation: passes over the image's flips / quarter turns whose
    #: probabilities are averaged (:func:`segflow.inference.window.predict_image`); 1 = none.
    tta: int = 1
    #: Small-component removal (one-pass methods): connected foreground components
    #: (8-connected, at probability 0.5) smaller than this many pixels are set to
    #: probability 0 (:func:`segflow.inference.window.remove_small_components`); 0 = off.
    #: The size is chosen on val (``segflow.eval split=val grid.min_component=[0,16,64]``).
    min_component: int = 0
    #: Whether the method samples (starting noise, steps, an ensemble) rather than predicting
    #: in one pass; benchmarks and the comparison ask this, never the class.
    generative: ClassVar[bool] = False
    # Segmentation-loss weights read by :meth:`segmentation_loss` (subclasses set them).
    bce_weight: float = 0.0
    dice_weight: float = 0.0
    cldice_weight: float = 0.0
    cldice_iters: int = 10
    pos_weight: float | None = None

    def check_net(self, net: nn.Module) -> None:
        """Raise ``TypeError`` (:class:`NetworkMismatchError`) when ``net`` is not the shape
        this method drives."""
        if not isinstance(net, self.net_type):
            raise NetworkMismatchError(
                f"{type(self).__name__} needs a {self.net_type.__name__} network, got "
                f"{type(net).__name__}; pick a model preset whose `net` matches its `method` "
                f"(see conf/model/)."
            )

    @abstractmethod
    def loss(self, net: nn.Module, image: Tensor, mask: Tensor,
             valid: Tensor | None = None) -> dict[str, Tensor]:
        """Training objective.

        Args:
            net: the network.
            image: (B, C_in, H, W) normalised image.
            mask: (B, C, H, W) binary mask in {0, 1} (float).
            valid: (B, 1, H, W) 1 where pixels count (field of view, not padding), or None.

        Returns:
            dict with the scalar total ``"loss"`` and any named parts to log.
        """

    @abstractmethod
    def predict(self, net: nn.Module, image: Tensor, generator: torch.Generator | None = None,
                noise: Tensor | None = None, step_noise: StepNoise | None = None) -> Prediction:
        """Segment ``image`` (B, C_in, H, W) → :class:`Prediction`.

        Args:
            generator: makes sampling reproducible.
            noise: the starting noise, of :meth:`noise_shape` (drawn from ``generator``
                when None).
            step_noise: the noise of stochastic sampler steps (drawn from ``generator``
                when None).

        One-pass methods ignore the three.
        """

    def noise_shape(self, net: nn.Module, image: Tensor) -> tuple[int, ...] | None:
        """The shape of the starting noise :meth:`predict` draws for ``image``, or None
        when it draws none (one-pass methods)."""
        return None

    def stochastic_steps(self) -> bool:
        """Whether sampling draws fresh noise at its steps (beyond the starting noise) with
        the current settings; such methods take a ``step_noise`` source (:data:`StepNoise`)."""
        return False

    def net_inputs(self, net: nn.Module, image: Tensor) -> tuple[Tensor, ...]:
        """The arguments of one network evaluation for ``image`` (B, C_in, H, W), as this
        method calls the network: ``net(*method.net_inputs(net, image))``."""
        return (image,)

    def sampling_settings(self) -> dict[str, Any]:
        """The current values of the settings that may change at evaluation time (``tta``
        and ``temperature`` only when they are not their defaults, one pass and 1)."""
        return {k: getattr(self, k) for k in self.sampling_keys
                if k not in UNNAMED_DEFAULTS or float(getattr(self, k)) != UNNAMED_DEFAULTS[k]}

    def with_settings(self, **settings: Any) -> Method:
        """A copy of this method with some sampling settings changed.

        Raises:
            ValueError: on a name that is not one of ``sampling_keys``.
        """
        unknown = sorted(set(settings) - set(self.sampling_keys))
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no sampling setting {unknown}; "
                f"valid: {list(self.sampling_keys) or 'none (one-pass method)'}"
            )
        new = copy.copy(self)
        # Own registries (the same modules and buffers, shared, not copied).
        for registry in ("_parameters", "_buffers", "_modules"):
            new.__dict__[registry] = dict(self.__dict__[registry])
        for key, value in settings.items():
            setattr(new, key, value)
        new.validate()
        return new

    def capped(self, **caps: Any) -> tuple[Method, dict[str, tuple[Any, Any]]]:
        """A copy with numeric sampling settings at most ``caps`` (e.g. ``steps=2,
        n_samples=1`` for a smoke check), through :meth:`with_settings`.

        Caps naming settings this method does not have are ignored (one config caps every
        family); a setting of ``None`` (e.g. diffusion's full chain) counts as unbounded.

        Returns:
            (method, {setting: (old value, new value)} for each setting lowered).
        """
        lowered = {}
        for key, cap in caps.items():
            if key not in self.sampling_keys or cap is None:
                continue
            value = getattr(self, key)
            if value is None or float(value) > float(cap):
                lowered[key] = (value, cap)
        new = self.with_settings(**{k: v for k, (_, v) in lowered.items()}) if lowered else self
        return new, lowered

    def validate(self) -> None:
        """Check the settings; raise ``ValueError`` naming the bad one. Overrides call it."""
        if int(getattr(self, "min_component", 0)) < 0:
            raise ValueError(f"min_component (pixels) must be >= 0, got {self.min_component}")
        if int(self.tta) not in TTA_PASSES:
            raise ValueError(f"tta (test-time augmentation passes) must be one of "
                             f"{list(TTA_PASSES)}, got {self.tta}")

    def segmentation_loss(self, mask: Tensor, valid: Tensor | None, *, logits: Tensor | None = None,
                          probs: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``bce_weight`` · BCE + ``dice_weight`` · soft Dice (+ ``cldice_weight`` · soft
        clDice) of a foreground estimate against the {0, 1} ``mask`` inside ``valid``.

        The estimate is ``logits`` (BCE with logits, the stable form; probabilities by the
        sigmoid) or ``probs`` that need not be a sigmoid's (e.g. (x̂ + 1) / 2 of a generative
        method: BCE on them clamped to [1e-4, 1 − 1e-4], Dice and clDice on them clamped to
        [0, 1]). Losses in float32.

        Returns:
            (the weighted sum, {name: detached part} of each non-zero weight).
        """
        if (logits is None) == (probs is None):
            raise ValueError("segmentation_loss takes exactly one of logits and probs")
        mask = mask.float()
        if logits is not None:
            logits = logits.float()
            probs = torch.sigmoid(logits)
        else:
            probs = probs.float()
        bounded = probs.clamp(0.0, 1.0)
        parts: dict[str, Tensor] = {}
        if self.bce_weight:
            parts["bce"] = (bce_loss(logits, mask, valid, self.pos_weight) if logits is not None
                            else masked_bce_on_probs(probs, mask, valid))
        if self.dice_weight:
            parts["dice"] = soft_dice_loss(bounded, mask, valid)
        if self.cldice_weight:
            parts["cldice"] = soft_cldice_loss(bounded, mask, valid, self.cldice_iters)
        weights = {"bce": self.bce_weight, "dice": self.dice_weight, "cldice": self.cldice_weight}
        total = sum((weights[k] * v for k, v in parts.items()), probs.new_zeros(()))
        return total, {k: v.detach() for k, v in parts.items()}


class GenerativeMethod(Method):
    """Shared ensemble logic of the generative methods (diffusion, flow matching).

    The mask is generated in {-1, 1} space (``mask_to_x``) by :meth:`sample` from
    Gaussian noise, conditioned on the image. :meth:`predict` draws ``n_samples`` masks
    per image in one batch through the network; the mean of the members' probabilities
    ``(x + 1) / 2`` is the prediction and their per-pixel standard deviation the
    uncertainty map.

    Subclasses implement :meth:`loss` and :meth:`sample`, and extend ``sampling_keys``
    (always including ``n_samples``).
    """

    net_type: ClassVar[type[nn.Module]] = Denoiser
    sampling_keys: ClassVar[tuple[str, ...]] = ("n_samples", "temperature", "tta")
    generative: ClassVar[bool] = True
    PARAMETERIZATIONS: ClassVar[tuple[str, ...]] = ("linear", "logit")
    #: Scale of the starting noise (reduced-temperature sampling, Kingma & Dhariwal,
    #: "Glow", NeurIPS 2018): 1 samples the learned distribution; below 1 the deterministic
    #: samplers start nearer the source's mean and the answer moves from a sample towards the
    #: posterior mean (0: every member starts at the mean, the ensemble collapses to one
    #: answer and its spread is 0). An evaluation-time setting.
    temperature: float = 1.0

    def __init__(self, n_samples: int = 1, temperature: float = 1.0):
        super().__init__()
        self.n_samples = n_samples
        self.temperature = temperature

    def validate(self) -> None:
        super().validate()
        if int(self.n_samples) < 1:
            raise ValueError(f"n_samples (ensemble size) must be >= 1, got {self.n_samples}")
        if not 0.0 <= float(self.temperature) <= 1.0:
            raise ValueError(f"temperature (scale of the starting noise) must be in [0, 1], "
                             f"got {self.temperature}")

    @staticmethod
    def recycled_rows(batch: int, fraction: float, device: torch.device) -> Tensor | None:
        """Indices of the batch rows to rebuild on the model's own estimate (recycling, Fu
        et al. 2023): each row with probability ``fraction``; None when none is drawn."""
        pick = torch.rand(batch, device=device) < fraction
        return pick.nonzero().flatten() if bool(pick.any()) else None

    @staticmethod
    def mask_to_x(mask: Tensor) -> Tensor:
        """{0, 1} mask → {-1, 1} generation target."""
        return 2.0 * mask - 1.0

    @staticmethod
    def x_to_probs(x: Tensor) -> Tensor:
        """Generated x (≈ [-1, 1]) → probability in [0, 1]."""
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def noise_shape(self, net: nn.Module, image: Tensor) -> tuple[int, ...]:
        """(B·N, C_out, H, W): one noise field per ensemble member."""
        b, _, h, w = image.shape
        return (b * int(self.n_samples), net.out_channels, h, w)

    def net_inputs(self, net: nn.Module, image: Tensor) -> tuple[Tensor, ...]:
        """``(x_t, t, image)`` at mid-path ``t = 0.5`` with Gaussian ``x_t``."""
        x_t = torch.randn(image.shape[0], net.out_channels, *image.shape[-2:],
                          device=image.device, dtype=image.dtype)
        return x_t, torch.full((image.shape[0],), 0.5, device=image.device), image

    @abstractmethod
    def sample(self, net: nn.Module, image: Tensor, noise: Tensor,
               generator: torch.Generator | None = None, step_noise: StepNoise | None = None
               ) -> tuple[Tensor, int]:
        """Generate masks from ``noise``.

        Args:
            net: the denoiser.
            image: (B, C_in, H, W) conditioning images (already repeated per member).
            noise: (B, C, H, W) the starting Gaussian noise.
            generator: for any further randomness (stochastic samplers).
            step_noise: the noise of stochastic steps (``generator`` when None);
                deterministic samplers never call it.

        Returns:
            (x, nfe): generated masks (B, C, H, W) in ≈ [-1, 1] and the network
            evaluations used.
        """

    @torch.no_grad()
    def predict(self, net: nn.Module, image: Tensor, generator: torch.Generator | None = None,
                noise: Tensor | None = None, step_noise: StepNoise | None = None) -> Prediction:
        """Ensemble prediction.

        Args:
            image: (B, C_in, H, W).
            noise: optional (B·N, C, H, W) starting noise (e.g. one field shared by
                overlapping sliding-window tiles); drawn from ``generator`` when None.
            step_noise: optional per-step noise source for methods whose
                :meth:`stochastic_steps` is True: each call returns the next stochastic
                step's (B·N, C, H, W) standard Gaussian noise (members in the order of
                ``noise``); drawn from ``generator`` when None, ignored by deterministic
                samplers.
        """
        n = int(self.n_samples)
        b, _, h, w = image.shape
        c = net.out_channels
        shape = self.noise_shape(net, image)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=image.device, dtype=image.dtype)
        elif noise.shape != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        if float(self.temperature) != 1.0:
            noise = noise * float(self.temperature)
        use_steps = step_noise is not None and self.stochastic_steps()
        x, nfe = self.sample(net, image.repeat_interleave(n, dim=0), noise, generator,
                             step_noise if use_steps else None)
        members = self.x_to_probs(x).view(b, n, c, h, w)
        return Prediction(
            probs=members.mean(dim=1),
            uncertainty=members.std(dim=1, unbiased=False) if n > 1 else None,
            samples=members,
            nfe=nfe,
        )
