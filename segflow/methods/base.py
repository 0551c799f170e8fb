"""The method interface: a training objective plus a sampler, knowing nothing of Lightning.

``SegModule`` drives any (method, network) pair through exactly two calls:

* ``method.loss(net, image, mask, valid)`` → dict with a scalar ``"loss"`` (and parts to log);
* ``method.predict(net, image)`` → :class:`Prediction` (probabilities in [0, 1], and for
  generative methods the ensemble spread as an uncertainty map).

Sampling settings (solver, steps, ensemble size, ...) are plain attributes listed in
``sampling_keys``; :meth:`Method.with_settings` returns a copy with some of them
changed, so one checkpoint can be evaluated under many settings without retraining.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from segflow.errors import NetworkMismatchError
from segflow.networks.base import Denoiser


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


class Method(ABC):
    """Base class of training objectives with a matching sampler.

    Subclasses set ``net_type`` (the network shape they drive: ``SegNet`` or
    ``Denoiser``) and ``sampling_keys`` (attributes that may change at evaluation time).
    """

    net_type: ClassVar[type[nn.Module]] = nn.Module
    sampling_keys: ClassVar[tuple[str, ...]] = ()

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
    def predict(self, net: nn.Module, image: Tensor, generator: torch.Generator | None = None
                ) -> Prediction:
        """Segment ``image`` (B, C_in, H, W) → :class:`Prediction`.

        ``generator`` makes sampling reproducible; one-pass methods ignore it.
        """

    def sampling_settings(self) -> dict[str, Any]:
        """The current values of the settings that may change at evaluation time."""
        return {k: getattr(self, k) for k in self.sampling_keys}

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

    def validate(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Check the settings; raise ``ValueError`` naming the bad one. Override as needed."""


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
    sampling_keys: ClassVar[tuple[str, ...]] = ("n_samples",)

    def __init__(self, n_samples: int = 1):
        self.n_samples = n_samples

    def validate(self) -> None:
        if int(self.n_samples) < 1:
            raise ValueError(f"n_samples (ensemble size) must be >= 1, got {self.n_samples}")

    @staticmethod
    def mask_to_x(mask: Tensor) -> Tensor:
        """{0, 1} mask → {-1, 1} generation target."""
        return 2.0 * mask - 1.0

    @staticmethod
    def x_to_probs(x: Tensor) -> Tensor:
        """Generated x (≈ [-1, 1]) → probability in [0, 1]."""
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    @abstractmethod
    def sample(self, net: nn.Module, image: Tensor, noise: Tensor,
               generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        """Generate masks from ``noise``.

        Args:
            net: the denoiser.
            image: (B, C_in, H, W) conditioning images (already repeated per member).
            noise: (B, C, H, W) the starting Gaussian noise.
            generator: for any further randomness (stochastic samplers).

        Returns:
            (x, nfe): generated masks (B, C, H, W) in ≈ [-1, 1] and the network
            evaluations used.
        """

    @torch.no_grad()
    def predict(self, net: nn.Module, image: Tensor, generator: torch.Generator | None = None,
                noise: Tensor | None = None) -> Prediction:
        """Ensemble prediction.

        Args:
            image: (B, C_in, H, W).
            noise: optional (B·N, C, H, W) starting noise (e.g. one field shared by
                overlapping sliding-window tiles); drawn from ``generator`` when None.
        """
        n = int(self.n_samples)
        b, _, h, w = image.shape
        c = net.out_channels
        if noise is None:
            noise = torch.randn((b * n, c, h, w), generator=generator, device=image.device,
                                dtype=image.dtype)
        elif noise.shape != (b * n, c, h, w):
            raise ValueError(f"noise must have shape {(b * n, c, h, w)}, got {tuple(noise.shape)}")
        x, nfe = self.sample(net, image.repeat_interleave(n, dim=0), noise, generator)
        members = self.x_to_probs(x).view(b, n, c, h, w)
        return Prediction(
            probs=members.mean(dim=1),
            uncertainty=members.std(dim=1, unbiased=False) if n > 1 else None,
            samples=members,
            nfe=nfe,
        )
