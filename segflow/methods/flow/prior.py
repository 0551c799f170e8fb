"""Flow matching that starts from a supervised run's probability map: steps that refine."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from segflow.infra.errors import ConfigError
from segflow.methods.flow.method import FlowMatching

#: What a user does when the prior is missing.
PRIOR_FIX = ("train a supervised run first (e.g. python -m segflow.train model=csnet ...) and "
             "pass its folder: model.method.prior_run=outputs/runs/<experiment>/<time>")


class SupervisedPrior:
    """A trained supervised segmenter (network + its method) used as a fixed prior.

    Raises:
        ConfigError: ``method`` samples (a generative run cannot be the prior).
    """

    def __init__(self, net: nn.Module, method: nn.Module, source: str | None = None):
        if getattr(method, "generative", False):
            raise ConfigError(f"model.method.prior_run={source} is a generative run "
                              f"({type(method).__name__}); the prior must be a supervised "
                              f"one (csnet, unet)")
        self.net, self.method, self.source = net, method, source


class PriorFlowMatching(FlowMatching):
    """Conditional flow matching from a supervised segmenter's answer to the mask.

    Conditional flow matching allows any source distribution (Tong et al., "Improving and
    generalizing flow-based generative models with minibatch optimal transport", TMLR
    2024); here the source is centred on a frozen supervised network's probability map p
    (a trained ``segflow.train`` run, e.g. CS-Net)::

        x0 = (2·p − 1) + prior_noise · ε,   ε ~ N(0, I),

    and the path, targets, losses and samplers are those of :class:`FlowMatching`. Its
    exact sampling field is FlowMatching's with the source's mean and spread: given
    x̂1 = E[x1 | x_t] and μ = 2·p − 1 (fixed by the image), τ = ``prior_noise``::

        v = x̂1 − a·μ + k·(x_t − t·x̂1 − c·μ),   k = (s·s' − a·c·τ²) / (c²·τ² + s²)

    (:func:`~segflow.methods.flow.path.field_gain`); the sampler computes μ once per run
    (one prior pass, the one counted in the NFE). The
    flow starts where the supervised net already is, so its steps only have to repair what
    the net got wrong (gaps, spurs, missed thin vessels) instead of drawing the whole mask
    from noise — the "refinement" reading of diffusion segmentation in Fu et al., "Importance
    of aligning training strategy with evaluation for diffusion models in 3D multiclass
    segmentation" (2023), with the supervised answer as the first state. ``prior_noise``
    sets how far samples spread around it (the ensemble's uncertainty).

    The prior is handed in built (:class:`SupervisedPrior`: the config's ``method.prior``,
    which :func:`segflow.runs.checkpoints.load_prior` loads from ``prior_run``, its best
    EMA checkpoint); it is frozen, run in eval mode, and saved with this model's checkpoint
    (``method.prior_net.*``). It must see images prepared as this run's (same data
    preset). The prior runs **once per image**, its map shared by every ensemble member, and
    counts as one network evaluation per image in the reported NFE (steps × members + 1).

    Args:
        prior: the frozen supervised segmenter.
        prior_run: where ``prior`` came from (recorded; the config builds ``prior`` from it).
        prior_noise: standard deviation of the noise around ``2·p − 1``.
        **flow: :class:`FlowMatching`'s arguments (``prediction="x1"`` recommended).
    """

    # Prior passes per image, counted in the NFE.
    PRIOR_NFE: ClassVar[int] = 1

    def __init__(self, prior: SupervisedPrior | None = None, prior_run: str | None = None,
                 prior_noise: float = 0.5, **flow):
        super().__init__(**flow)
        self.prior_noise = float(prior_noise)
        if self.prior_noise < 0:
            raise ValueError(f"PriorFlowMatching prior_noise must be >= 0, got {prior_noise}")
        self.prior_run = str(prior_run) if prior_run is not None else None
        if not isinstance(prior, SupervisedPrior):
            raise ConfigError(f"model.method.prior is {type(prior).__name__}, not a built "
                              f"supervised prior; {PRIOR_FIX}")
        self.prior_net = prior.net.requires_grad_(False).eval()
        self.prior_method = prior.method
        self._centre: Tensor | None = None  # 2p − 1 of the images being predicted

    def predict(self, net: nn.Module, image: Tensor, generator: torch.Generator | None = None,
                noise: Tensor | None = None, step_noise=None):
        """:meth:`FlowMatching.predict` with the prior run once per image (not once per
        ensemble member): its map is computed here and shared by the members."""
        n = int(self.n_samples)
        self._centre = (2.0 * self.prior_probs(image) - 1.0).repeat_interleave(n, dim=0)
        try:
            return super().predict(net, image, generator, noise, step_noise)
        finally:
            self._centre = None

    @torch.no_grad()
    def prior_probs(self, image: Tensor) -> Tensor:
        """The supervised network's foreground probability for ``image`` (B, C_in, H, W),
        always computed in eval mode (its batch-norm statistics are part of what was
        trained), whatever mode Lightning has put the modules in."""
        was = self.prior_net.training
        self.prior_net.eval()
        try:
            return self.prior_method.predict(self.prior_net, image).probs.float()
        finally:
            self.prior_net.train(was)

    def source_moments(self, image: Tensor, like: Tensor) -> tuple[Tensor | None, float]:
        """(μ, τ) = ``(2·p − 1, prior_noise)`` with p the prior's probability map: the
        source is ``(2·p − 1) + prior_noise · z``."""
        if self._centre is not None and self._centre.shape[0] == image.shape[0]:
            centre = self._centre  # inside predict: computed once per image
        else:
            centre = 2.0 * self.prior_probs(image) - 1.0
        return centre.to(like.dtype), self.prior_noise

    def source_nfe(self) -> float:
        """The prior's pass per ensemble member: one per image, shared by the members."""
        return self.PRIOR_NFE / max(1, int(self.n_samples))

    def __repr__(self) -> str:
        return (f"Prior{super().__repr__()[:-1]}, prior_run={self.prior_run!r}, "
                f"prior_noise={self.prior_noise!r})")
