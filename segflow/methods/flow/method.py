"""Conditional flow matching for segmentation: a velocity field from noise to the mask."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from segflow.methods.base import GenerativeMethod, StepNoise
from segflow.methods.flow import path as fpath
from segflow.methods.flow.path import TIME_SAMPLINGS
from segflow.methods.flow.solvers import SOLVERS, solve
from segflow.methods.losses import masked_mean

PREDICTIONS = ("velocity", "x1")
READOUTS = ("state", "x1")
SIGMA_SCHEDULES = ("bridge", "constant")


class FlowMatching(GenerativeMethod):
    """Conditional flow matching (Lipman et al., "Flow Matching for Generative Modeling",
    ICLR 2023; Liu et al., "Flow Straight and Fast" (rectified flow), ICLR 2023; Tong et
    al., "Improving and generalizing flow-based generative models with minibatch optimal
    transport", TMLR 2024) with the image as condition.

    Target ``x1 = 2·mask − 1``, source ``x0 ~ N(0, I)``, and the conditional OT path

        x_t = (1 − (1 − σ_min)·t)·x0 + t·x1 + s(t)·ε,   ε ~ N(0, I),

    with bridge noise ``s(t) = σ·√(t(1 − t))`` (``sigma_schedule="bridge"``, Tong et
    al.'s Brownian bridge: zero at both ends, so t=0 is pure noise and t=1 the mask) or
    ``s(t) = σ`` (``"constant"``, Tong et al.'s I-CFM). The regression target is the
    path's time derivative at fixed (x0, x1, ε)::

        u_t = x1 − (1 − σ_min)·x0 + s'(t)·ε,   s'(t) = σ(1 − 2t) / (2√(t(1 − t))) (bridge), 0 (constant).

    The network predicts either the velocity (loss ``‖v̂ − u_t‖²``, whose minimiser is the
    marginal field E[u_t | x_t] itself) or the clean mask ``x̂1`` (loss ``‖x̂1 − x1‖²``,
    minimised by the posterior mean E[x1 | x_t]); the sampler then uses the exact marginal
    velocity that x̂1 implies (:func:`~segflow.methods.flow.path.field_gain`)::

        v = x̂1 + k·(x_t − t·x̂1),   k = (s·s' − a·c) / (c² + s²),   c = 1 − a·t, a = 1 − σ_min,

    for every σ and noise schedule (σ = 0: k = −a/c, the mean-path field
    ``x̂1 − a·(x_t − t·x̂1)/c``). A source with a mean μ and spread τ
    (:meth:`source_moments`) shifts it: ``v = x̂1 − a·μ + k·(x_t − t·x̂1 − c·μ)`` with
    ``k = (s·s' − a·c·τ²)/(c²τ² + s²)``. The field is exact for the true posterior mean;
    recycling (below) trains on states built from the model's own estimate, which the
    formula does not model. With constant noise the state at t = 0 is ``x0 + σ·ε``, and
    sampling starts there (noise scaled by ``√(τ² + σ²)`` around μ).

    Training times are uniform or logit-normal (Esser et al. 2024: ``t = sigmoid(m + s·n)``),
    optionally mixed with a ``uniform_fraction`` of uniform times so that every time the
    sampler's grid visits has density, and with a ``grid_time_share`` of times exactly on
    the grids of ``grid_time_steps`` fixed-step samplers — t = 0, all a one-step sampler
    evaluates, included (:func:`~segflow.methods.flow.path.grid_times`,
    :func:`~segflow.methods.flow.path.sample_time`). With velocity prediction and bridge
    noise, whose target has ``s'(t) ~ 1/√t``, times are kept ``BRIDGE_T_EPS`` off the ends
    (grid times too); x1-prediction needs no s' and trains at t = 0 exactly.

    ``parameterization="logit"`` (x1-prediction only): the network outputs a logit ℓ and
    ``x̂1 = tanh(ℓ/2)``, so ``p̂ = (x̂1 + 1)/2 = sigmoid(ℓ)`` and the BCE is taken with
    logits; a linear output clamped to [−1, 1] instead has zero BCE/Dice gradient past ±1.

    Recycling (Fu et al., "Importance of Aligning Training Strategy with Evaluation for
    Diffusion Models in 3D Multiclass Segmentation", 2023): for a ``recycle`` fraction of
    each batch the path is built from the model's own estimate instead of the true mask —
    ``x̂1 = net(x0, 0)`` (no gradient; the first Euler step's estimate) and
    ``x_t = (1 − a·t)·x0 + t·x̂1`` — with the true mask as the target, so the later steps
    learn to correct the states the sampler really visits rather than to copy a perfect one.

    Segmentation objective: the clean-mask estimate on the mean path (the network's own
    output for ``prediction="x1"``; from the velocity otherwise, by inverting
    ``x_t = (1 − a·t)·x0 + t·x1`` and ``v = x1 − a·x0`` with ``a = 1 − σ_min``)::

        x̂1 = (1 − a·t)·v̂ + a·x_t          (σ_min = 0: x̂1 = x_t + (1 − t)·v̂)

    gets ``bce_weight`` · BCE + ``dice_weight`` · soft Dice of ``p̂ = (x̂1 + 1) / 2``
    against the mask inside the valid pixels, added to the flow-matching MSE — the same
    segmentation losses the supervised nets train, so x̂1 is a calibrated probability
    estimate at every t (at t = 0 it is the image-only posterior mean).

    Sampling integrates ``dx/dt = v(x, t)`` from noise at t=0 to t=1 with ``solver``
    (``euler``, ``midpoint``, ``heun`` with ``steps`` steps, or adaptive ``dopri5`` with
    ``atol``/``rtol``); :attr:`sampling_keys` may change at evaluation time
    (:meth:`with_settings`). The NFE reported is counted. ``readout`` picks what becomes
    the probability: ``state``, the integrated state at t = 1, or ``x1``, the soft clean-mask
    estimate x̂1 of the last network evaluation (identical for Euler with σ_min = 0, whose
    last step lands on x̂1; softer for midpoint/Heun/dopri5, whose last evaluation is at t = 1).

    Args:
        prediction: ``velocity`` or ``x1``.
        sigma: bridge noise scale σ (0 = the deterministic OT path).
        sigma_schedule: ``bridge`` or ``constant`` (see above).
        sigma_min: σ_min of Lipman et al.'s OT path (0 = rectified flow's straight line).
        time_sampling: ``uniform`` or ``logit_normal``.
        logit_mean, logit_std: the logit-normal's location and scale.
        solver, steps, atol, rtol, max_nfe: the ODE sampler (eval-time settings).
        n_samples: ensemble size (eval-time setting).
        bce_weight, dice_weight: weights of BCE and soft Dice on x̂1 (0 = the plain
            flow-matching MSE).
        readout: ``state`` or ``x1`` (eval-time setting, see above).
        uniform_fraction: share of uniform training times mixed into ``time_sampling``.
        grid_time_share: share of training times drawn from the sampler grids' times
            (0 = none).
        grid_time_steps: the step counts whose grids those times come from (None = the
            configured ``steps`` only); the grid is that of ``solver`` when it is a
            fixed-step one, else Euler's.
        parameterization: ``linear`` (the output is x̂1) or ``logit`` (x̂1 = tanh(ℓ/2)).
        recycle: fraction of each batch trained on states built from the model's own x̂1.
        temperature: scale of the starting noise (eval-time setting; see
            :class:`~segflow.methods.base.GenerativeMethod`).
    """

    sampling_keys: ClassVar[tuple[str, ...]] = ("n_samples", "solver", "steps", "atol", "rtol",
                                                "max_nfe", "readout", "temperature", "tta")
    # Training times stay this far from the ends where the bridge noise's derivative
    # s'(t) ~ 1/√t is singular.
    BRIDGE_T_EPS: ClassVar[float] = 1e-3
    # The scale δ below which x1-prediction's 1/(c²τ² + s²) is tapered off (path.field_gain).
    X1_DELTA: ClassVar[float] = 1e-2

    def __init__(self, prediction: str = "velocity", sigma: float = 0.0,
                 sigma_schedule: str = "bridge", sigma_min: float = 0.0,
                 time_sampling: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0,
                 solver: str = "euler", steps: int = 10, atol: float = 1e-4, rtol: float = 1e-4,
                 max_nfe: int = 1000, n_samples: int = 1, bce_weight: float = 0.0,
                 dice_weight: float = 0.0, readout: str = "state", uniform_fraction: float = 0.0,
                 parameterization: str = "linear", recycle: float = 0.0,
                 temperature: float = 1.0, grid_time_share: float = 0.0,
                 grid_time_steps: Sequence[int] | None = None):
        super().__init__(n_samples=n_samples, temperature=temperature)
        self.bce_weight, self.dice_weight = float(bce_weight), float(dice_weight)
        self.readout = readout
        self.prediction, self.sigma, self.sigma_schedule = prediction, float(sigma), sigma_schedule
        self.sigma_min, self.time_sampling = float(sigma_min), time_sampling
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)
        self.solver, self.steps, self.atol, self.rtol = solver, steps, atol, rtol
        self.max_nfe = max_nfe
        self.uniform_fraction, self.parameterization = float(uniform_fraction), parameterization
        self.recycle = float(recycle)
        self.grid_time_share = float(grid_time_share)
        self.grid_time_steps = None if grid_time_steps is None else tuple(int(n) for n in grid_time_steps)
        self.validate()

    def validate(self) -> None:
        super().validate()
        for name, value, allowed in (("prediction", self.prediction, PREDICTIONS),
                                     ("sigma_schedule", self.sigma_schedule, SIGMA_SCHEDULES),
                                     ("time_sampling", self.time_sampling, TIME_SAMPLINGS),
                                     ("solver", self.solver, SOLVERS),
                                     ("readout", self.readout, READOUTS),
                                     ("parameterization", self.parameterization,
                                      self.PARAMETERIZATIONS)):
            if value not in allowed:
                raise ValueError(f"FlowMatching {name}={value!r}: choose one of {', '.join(allowed)}")
        if int(self.steps) < 1:
            raise ValueError(f"FlowMatching steps must be >= 1, got {self.steps}")
        if self.sigma < 0 or not 0 <= self.sigma_min < 1:
            raise ValueError("FlowMatching needs sigma >= 0 and 0 <= sigma_min < 1")
        if self.bce_weight < 0 or self.dice_weight < 0:
            raise ValueError("FlowMatching bce_weight and dice_weight must be >= 0")
        if self.logit_std <= 0 or self.atol <= 0 or self.rtol <= 0:
            raise ValueError("FlowMatching logit_std, atol and rtol must be > 0")
        if not 0 <= self.uniform_fraction <= 1 or not 0 <= self.recycle <= 1:
            raise ValueError("FlowMatching uniform_fraction and recycle must be in [0, 1]")
        if not 0 <= self.grid_time_share <= 1:
            raise ValueError(f"FlowMatching grid_time_share must be in [0, 1], got {self.grid_time_share}")
        if self.grid_time_steps is not None and (not self.grid_time_steps
                                                 or min(self.grid_time_steps) < 1):
            raise ValueError(f"FlowMatching grid_time_steps must be step counts >= 1, "
                             f"got {list(self.grid_time_steps)}")
        if self.prediction != "x1" and (self.parameterization == "logit" or self.recycle):
            raise ValueError("FlowMatching parameterization=logit and recycle need prediction=x1")

    # -- the probability path (segflow.methods.flow.path) --------------------------------
    @staticmethod
    def _bcast(t: Tensor, like: Tensor) -> Tensor:
        return fpath.bcast(t, like)

    def noise_scale(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(s(t), s'(t)) of the path noise for times t (B,)."""
        return fpath.noise_scale(t, self.sigma, self.sigma_schedule)

    def path(self, x0: Tensor, x1: Tensor, t: Tensor, eps: Tensor | None = None) -> Tensor:
        """x_t for (B, ...) endpoints and times t (B,); ``eps`` is the bridge noise."""
        x_t = fpath.interpolate(x0, x1, t, self.sigma_min)
        if eps is not None and self.sigma > 0:
            x_t = x_t + self._bcast(self.noise_scale(t)[0], x0) * eps
        return x_t

    def target_velocity(self, x0: Tensor, x1: Tensor, t: Tensor, eps: Tensor | None = None) -> Tensor:
        """u_t = d x_t / dt at fixed (x0, x1, eps)."""
        u = x1 - (1 - self.sigma_min) * x0
        if eps is not None and self.sigma > 0:
            u = u + self._bcast(self.noise_scale(t)[1], x0) * eps
        return u

    def grid_times(self) -> tuple[Tensor, Tensor]:
        """(times, probabilities) of the training-time grid component
        (:func:`~segflow.methods.flow.path.grid_times` of ``grid_time_steps``)."""
        solver = self.solver if self.solver in fpath.GRID_SOLVERS else "euler"
        return fpath.grid_times(self.grid_time_steps or (int(self.steps),), solver)

    def sample_time(self, n: int, device: torch.device, generator: torch.Generator | None = None
                    ) -> Tensor:
        """Training times (n,) in [0, 1]."""
        grid = self.grid_times() if self.grid_time_share > 0 else None
        t = fpath.sample_time(n, device, self.time_sampling, self.logit_mean, self.logit_std,
                              self.uniform_fraction, generator, self.grid_time_share, grid)
        if self.sigma > 0 and self.sigma_schedule == "bridge" and self.prediction == "velocity":
            t = t.clamp(self.BRIDGE_T_EPS, 1 - self.BRIDGE_T_EPS)
        return t

    def source_moments(self, image: Tensor, like: Tensor) -> tuple[Tensor | None, float]:
        """(μ, τ) of the source ``x0 = μ + τ·z``, z ~ N(0, I), for ``image``: μ batch-aligned
        with ``like`` (None: zero), τ a float. Standard Gaussian here; a subclass may start
        elsewhere (conditional flow matching allows any source distribution, Tong et al.)."""
        return None, 1.0

    def source(self, image: Tensor, noise: Tensor) -> Tensor:
        """The flow's starting state x0 for ``image`` from standard Gaussian ``noise`` (both
        batch-aligned): ``μ + τ·noise`` (:meth:`source_moments`), the noise itself here."""
        mean, std = self.source_moments(image, noise)
        x0 = noise if std == 1.0 else std * noise
        return x0 if mean is None else mean.to(noise.dtype) + x0

    def source_nfe(self) -> int:
        """Network evaluations :meth:`source` spends per sample (0: plain noise)."""
        return 0

    # -- training -------------------------------------------------------------------------
    def loss(self, net: nn.Module, image: Tensor, mask: Tensor,
             valid: Tensor | None = None) -> dict[str, Tensor]:
        x1 = self.mask_to_x(mask.float())
        x0 = self.source(image, torch.randn_like(x1))
        eps = torch.randn_like(x1) if self.sigma > 0 else None
        t = self.sample_time(x1.shape[0], x1.device)
        x_t = self.path(x0, x1, t, eps)
        if self.recycle:
            x_t = self._recycled(net, image, x0, x_t, t, eps)
        out = net(x_t, t, image).float()  # loss in float32 under mixed precision
        if self.prediction == "velocity":
            mse = masked_mean((out - self.target_velocity(x0, x1, t, eps)).pow(2), valid)
        else:
            mse = masked_mean((self.x1_estimate(out, x_t.float(), t) - x1).pow(2), valid)
        total, parts = mse, {"mse": mse.detach()}
        if self.bce_weight or self.dice_weight:
            if self.parameterization == "logit":
                seg, seg_parts = self.segmentation_loss(mask, valid, logits=out)
            else:
                seg, seg_parts = self.segmentation_loss(
                    mask, valid, probs=self.x_to_soft_probs(self.x1_estimate(out, x_t.float(), t)))
            total, parts = total + seg, {**parts, **seg_parts}
        return {"loss": total, **parts}

    @torch.no_grad()
    def _recycled(self, net: nn.Module, image: Tensor, x0: Tensor, x_t: Tensor, t: Tensor,
                  eps: Tensor | None) -> Tensor:
        """``x_t`` with a ``recycle`` fraction of the batch rebuilt on the model's own x̂1
        at t = 0 (the first Euler step's estimate from the same noise)."""
        idx = self.recycled_rows(x0.shape[0], self.recycle, x0.device)
        if idx is None:
            return x_t
        t0 = torch.zeros(idx.numel(), device=x0.device)
        out = net(x0[idx], t0, image[idx]).float()
        x1_hat = self.x1_estimate(out, x0[idx].float(), t0).clamp(-1.0, 1.0).to(x0.dtype)
        x_t = x_t.clone()
        x_t[idx] = self.path(x0[idx], x1_hat, t[idx], None if eps is None else eps[idx])
        return x_t

    def x1_estimate(self, out: Tensor, x_t: Tensor, t: Tensor | float) -> Tensor:
        """The clean-mask estimate x̂1 from the network output at (x_t, t) on the mean path:
        the output itself for x1-prediction (``tanh(ℓ/2)`` of a logit), ``(1 − a·t)·v̂ + a·x_t``
        for velocity."""
        if self.prediction == "x1":
            return torch.tanh(0.5 * out) if self.parameterization == "logit" else out
        tb = self._bcast(t, x_t) if isinstance(t, Tensor) else t
        a = 1 - self.sigma_min
        return (1 - a * tb) * out + a * x_t

    @staticmethod
    def x_to_soft_probs(x: Tensor) -> Tensor:
        """(x + 1) / 2 without clamping (the losses clamp where they need to)."""
        return (x.float() + 1.0) / 2.0

    # -- sampling -------------------------------------------------------------------------
    def velocity(self, net: nn.Module, x: Tensor, t: float, image: Tensor) -> Tensor:
        """The model's velocity at state x (B, C, H, W) and time t (a float)."""
        return self.field(net, x, t, image)[0]

    def gain(self, t: float, source_std: float = 1.0) -> float:
        """k(t) of the exact field for this path and a source spread τ = ``source_std``
        (:func:`~segflow.methods.flow.path.field_gain`)."""
        return float(fpath.field_gain(t, self.sigma, self.sigma_schedule, self.sigma_min,
                                      source_std, self.X1_DELTA))

    def field(self, net: nn.Module, x: Tensor, t: float, image: Tensor,
              source: tuple[Tensor | None, float] | None = None) -> tuple[Tensor, Tensor]:
        """(velocity, x̂1) of one network evaluation at state x and time t (a float).

        x1-prediction: the exact marginal velocity given x̂1 = E[x1 | x_t]
        (``v = x̂1 − a·μ + k·(x − t·x̂1 − c·μ)``, see the class docstring); ``source`` is
        (μ, τ) of :meth:`source_moments`, computed here when not given."""
        t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)
        out = net(x, t_vec, image).float()
        if self.prediction == "velocity":
            return out, self.x1_estimate(out, x.float(), t)
        mean, std = self.source_moments(image, x) if source is None else source
        a = 1 - self.sigma_min
        k = self.gain(t, std)
        x1_hat = self.x1_estimate(out, x, t)
        v = x1_hat + k * (x - t * x1_hat)
        if mean is not None:
            v = v - (a + k * (1 - a * t)) * mean.to(v.dtype)
        return v, x1_hat

    @torch.no_grad()
    def sample(self, net: nn.Module, image: Tensor, noise: Tensor,
               generator: torch.Generator | None = None, step_noise: StepNoise | None = None
               ) -> tuple[Tensor, int]:
        """Integrate the state at t = 0 (:meth:`source` of ``noise``, widened by the path's
        noise s(0) when it is not zero there) → mask (t=1); returns
        (x (B, C, H, W), NFE, the source's evaluations included): the state at
        t = 1, or the last evaluation's x̂1 with ``readout="x1"``. The ODE solvers are
        deterministic: ``generator`` and ``step_noise`` are not used."""
        last: dict[str, Tensor] = {}
        mean, std = self.source_moments(image, noise.float())
        mean = None if mean is None else mean.float()

        def velocity(x: Tensor, t: float) -> Tensor:
            v, last["x1"] = self.field(net, x, t, image, (mean, std))
            return v

        # The state at t = 0 is x0 + s(0)·ε: a constant-noise path starts √(τ² + σ²) wide.
        s0_sq = float(fpath.noise_moments(torch.zeros(()), self.sigma, self.sigma_schedule)[0])
        x0 = (std**2 + s0_sq) ** 0.5 * noise.float()
        x0 = x0 if mean is None else mean + x0
        x, nfe = solve(velocity, x0, solver=self.solver, steps=int(self.steps),
                       atol=float(self.atol), rtol=float(self.rtol), max_nfe=int(self.max_nfe))
        return (last["x1"] if self.readout == "x1" else x), nfe + self.source_nfe()

    def __repr__(self) -> str:
        keys = ("prediction", "parameterization", "sigma", "sigma_schedule", "time_sampling",
                "uniform_fraction", "grid_time_share", "grid_time_steps", "recycle", "bce_weight", "dice_weight", *self.sampling_keys)
        return f"FlowMatching({', '.join(f'{k}={getattr(self, k)!r}' for k in keys)})"

