"""Gaussian diffusion for segmentation: DDPM training, DDPM / DDIM / DPM-Solver++ sampling."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from segflow.infra.progress import sampling_steps
from segflow.methods.base import GenerativeMethod, StepNoise
from segflow.methods.diffusion.samplers import (
    SAMPLERS,
    SPACINGS,
    DPMSolverPP2M,
    ddim_step,
    ddpm_step,
    step_grid,
)
from segflow.methods.diffusion.schedule import (
    PREDICTIONS,
    SCHEDULES,
    NoiseSchedule,
    target_of,
    x0_eps_of,
)
from segflow.methods.losses import masked_mean


class Diffusion(GenerativeMethod):
    """Denoising diffusion on the mask, conditioned on the image (Ho, Jain & Abbeel,
    "Denoising Diffusion Probabilistic Models", NeurIPS 2020), as used for segmentation by
    MedSegDiff (Wu et al., MIDL 2023).

    Training: draw a step ``k`` uniformly from ``0..T-1`` and noise, form
    ``x_k = alpha_k x0 + sigma_k eps`` from the mask ``x0`` in {-1, 1}, and regress the
    network's output at ``(x_k, t = k / T, image)`` onto ``eps``, ``x0`` or ``v``
    (``prediction``) with an MSE over valid pixels, plus optionally ``bce_weight`` · BCE
    and ``dice_weight`` · soft Dice of the implied x0 (as a probability, ``(x̂0 + 1) / 2``
    clamped to [0, 1]) against the mask — the supervised nets' segmentation losses.

    Sampling (eval-time settings, change with :meth:`with_settings`): ``sampler``
    ``ddpm`` (ancestral; Ho et al. 2020, respaced per Nichol & Dhariwal 2021 when
    ``steps < T``), ``ddim`` (Song et al., ICLR 2021; ``eta`` = 0 deterministic) or
    ``dpm_solver`` (DPM-Solver++(2M), Lu et al. 2022), over ``steps`` network evaluations
    (``None`` = all T), placed by ``spacing`` (``auto``: "trailing" grids that end one
    interval before the clean end — even in the step index for DDPM/DDIM, even in log-SNR
    for DPM-Solver, as its authors recommend; see
    :func:`~segflow.methods.diffusion.samplers.step_grid`). ``clip_x0`` clamps each x0
    prediction to [-1, 1], the mask's range. DPM-Solver++'s last update, the jump to the
    clean end, is first order (Lu et al. 2022's lower-order final step), every update
    after the first before it second order. DDPM and DDIM with
    ``eta > 0`` add fresh noise at every step; :meth:`sample` takes that noise from a
    ``step_noise`` source when one is given (the sliding window passes crops of one
    whole-image field per step, so overlapping tiles agree).

    ``zero_terminal_snr`` rescales the β schedule so that ᾱ at the last training step is
    exactly 0 (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    WACV 2024): the linear schedule otherwise leaves ᾱ_{T-1} ≈ 4e-5, so training never sees
    the pure noise sampling starts from. At ᾱ = 0 the state carries nothing about x0 and an
    eps-prediction cannot be turned into one, so it needs ``prediction`` ``x0`` or ``v``.

    Args:
        timesteps: training steps T.
        schedule: ``linear`` or ``cosine`` β schedule.
        prediction: what the network outputs: ``eps``, ``x0`` or ``v``.
        dice_weight: weight of the soft Dice loss on the predicted x0 (0 = MSE only).
        bce_weight: weight of the BCE on the predicted x0 (0 = none).
        sampler: ``ddpm``, ``ddim`` or ``dpm_solver``.
        steps: network evaluations per sample (None = T, the full chain).
        spacing: ``auto``, ``uniform`` or ``logsnr``: where the steps sit.
        eta: DDIM stochasticity (0 = deterministic, 1 = DDPM posterior variance).
        clip_x0: clamp x0 predictions to [-1, 1] while sampling.
        n_samples: ensemble size (masks drawn per image; mean → probability, std → uncertainty).
        recycle: fraction of each batch trained on states built from the model's own x̂0 at
            the last step (Fu et al., "Importance of Aligning Training Strategy with
            Evaluation for Diffusion Models in 3D Multiclass Segmentation", 2023;
            ``prediction="x0"`` only).
        temperature: scale of the starting noise x_T (eval-time setting; see
            :class:`~segflow.methods.base.GenerativeMethod`; DDPM's step noise is not scaled).
        lower_order_final: DPM-Solver++ only; kept for configuration compatibility: the
            last update, the jump to the clean end, is first order whatever its value.
        zero_terminal_snr: rescale β to ᾱ_{T-1} = 0 (Lin et al. 2024; needs
            ``prediction`` ``x0`` or ``v``).
        parameterization: ``linear`` (the output is eps / x0 / v) or ``logit``
            (x0-prediction only: the output is a logit ℓ with ``x̂0 = tanh(ℓ/2)``, BCE with
            logits; a linear x̂0 clamped to [−1, 1] has no BCE/Dice gradient past ±1).
    """

    sampling_keys: ClassVar[tuple[str, ...]] = ("n_samples", "sampler", "steps", "spacing", "eta",
                                                    "clip_x0", "lower_order_final", "temperature", "tta")

    def __init__(self, timesteps: int = 1000, schedule: str = "linear", prediction: str = "eps",
                 dice_weight: float = 0.0, sampler: str = "ddim", steps: int | None = 50,
                 spacing: str = "auto", eta: float = 0.0, clip_x0: bool = True, n_samples: int = 1,
                 lower_order_final: bool = True, bce_weight: float = 0.0,
                 parameterization: str = "linear", temperature: float = 1.0,
                 recycle: float = 0.0, zero_terminal_snr: bool = False):
        super().__init__(n_samples=n_samples, temperature=temperature)
        if not 0.0 <= float(recycle) <= 1.0:
            raise ValueError(f"method.recycle must be in [0, 1], got {recycle}")
        if recycle and prediction != "x0":
            raise ValueError("method.recycle needs method.prediction=x0 (the target stays the true mask)")
        self.recycle = float(recycle)
        if schedule not in SCHEDULES:
            raise ValueError(f"method.schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"method.prediction must be one of {list(PREDICTIONS)}, got {prediction!r}")
        for name, weight in (("dice_weight", dice_weight), ("bce_weight", bce_weight)):
            if weight < 0:
                raise ValueError(f"method.{name} must be >= 0, got {weight}")
        if zero_terminal_snr and prediction == "eps":
            raise ValueError("method.zero_terminal_snr needs method.prediction=x0 or v: at the "
                             "last step (ᾱ = 0) an eps-prediction determines no x0")
        self.zero_terminal_snr = bool(zero_terminal_snr)
        self.schedule = NoiseSchedule(schedule, timesteps, self.zero_terminal_snr)
        self.timesteps, self.prediction, self.dice_weight = int(timesteps), prediction, dice_weight
        self.bce_weight = float(bce_weight)
        self.sampler, self.steps, self.spacing = sampler, steps, spacing
        self.eta, self.clip_x0 = eta, clip_x0
        self.lower_order_final = lower_order_final
        if parameterization not in self.PARAMETERIZATIONS:
            raise ValueError(f"method.parameterization must be one of {list(self.PARAMETERIZATIONS)}, "
                             f"got {parameterization!r}")
        if parameterization == "logit" and prediction != "x0":
            raise ValueError("method.parameterization=logit needs method.prediction=x0")
        self.parameterization = parameterization
        self.validate()

    def validate(self) -> None:
        super().validate()
        if self.sampler not in SAMPLERS:
            raise ValueError(f"method.sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        if self.spacing != "auto" and self.spacing not in SPACINGS:
            raise ValueError(f"method.spacing must be 'auto' or one of {list(SPACINGS)}, got {self.spacing!r}")
        self.grid()  # raises on a bad step count
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"method.eta must be in [0, 1], got {self.eta}")

    # -- training -----------------------------------------------------------------------
    def loss(self, net: nn.Module, image: Tensor, mask: Tensor,
             valid: Tensor | None = None) -> dict[str, Tensor]:
        x0 = self.mask_to_x(mask)
        b = x0.shape[0]
        step = torch.randint(0, self.timesteps, (b,), device=x0.device)
        eps = torch.randn_like(x0)
        x_t = self.schedule.q_sample(x0, step, eps)
        if self.recycle:
            x_t = self._recycled(net, image, x_t, step, eps)
        out = net(x_t, self.schedule.time(step), image).float()  # losses in float32 under AMP
        alpha, sigma = self.schedule.alpha_sigma(step, out)
        target = target_of(self.prediction, x0, eps, alpha, sigma)
        mse = masked_mean((self.output_to_prediction(out) - target) ** 2, valid)
        total, parts = mse, {"mse": mse.detach()}
        if self.dice_weight or self.bce_weight:
            if self.parameterization == "logit":
                seg, seg_parts = self.segmentation_loss(mask, valid, logits=out)
            else:
                x0_pred, _ = x0_eps_of(self.prediction, out, x_t.float(), alpha, sigma)
                seg, seg_parts = self.segmentation_loss(mask, valid, probs=self.x_to_probs(x0_pred))
            total, parts = total + seg, {**parts, **seg_parts}
        return {"loss": total, **parts}

    @torch.no_grad()
    def _recycled(self, net: nn.Module, image: Tensor, x_t: Tensor, step: Tensor,
                  eps: Tensor) -> Tensor:
        """``x_t`` with a ``recycle`` fraction of the batch rebuilt on the model's own x̂0
        from pure noise at the last step (the first sampling step's estimate):
        ``x_k = alpha_k x̂0 + sigma_k eps`` (Fu et al. 2023), so the later, less noisy steps
        learn to correct the states the sampler really visits."""
        idx = self.recycled_rows(x_t.shape[0], self.recycle, x_t.device)
        if idx is None:
            return x_t
        start = torch.randn_like(x_t[idx])
        x0_hat, _ = self.denoise(net, start.float(), self.timesteps - 1, image[idx])
        x_t = x_t.clone()
        x_t[idx] = self.schedule.q_sample(x0_hat.clamp(-1.0, 1.0).to(x_t.dtype), step[idx],
                                          eps[idx])
        return x_t

    def output_to_prediction(self, out: Tensor) -> Tensor:
        """The network output as the ``prediction`` target's estimate (tanh(ℓ/2) of a logit)."""
        return torch.tanh(0.5 * out) if self.parameterization == "logit" else out

    # -- sampling -----------------------------------------------------------------------
    def grid(self) -> list[int]:
        """The descending training steps the current settings evaluate the network at."""
        spacing = self.spacing
        if spacing == "auto":
            spacing = "trailing_logsnr" if self.sampler == "dpm_solver" else "trailing"
        return step_grid(self.timesteps, self.steps, spacing, self.schedule.log_snr)

    def denoise(self, net: nn.Module, x_t: Tensor, step: int, image: Tensor) -> tuple[Tensor, Tensor]:
        """The network's ``(x0, eps)`` at grid step ``step`` (x0 clamped when ``clip_x0``,
        eps then recomputed from it so the pair stays consistent with ``x_t``)."""
        ab = self.schedule.alpha_bar(step)
        alpha, sigma = ab**0.5, (1.0 - ab) ** 0.5
        t = self.schedule.time(step, x_t.shape[0], x_t.device)
        out = net(x_t.to(image.dtype), t, image).float()
        x0, eps = x0_eps_of(self.prediction, self.output_to_prediction(out), x_t, alpha, sigma)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x_t - alpha * x0) / sigma
        return x0, eps

    def stochastic_steps(self) -> bool:
        """Whether the reverse steps draw fresh noise (DDPM; DDIM with ``eta > 0``)."""
        return self.sampler == "ddpm" or (self.sampler == "ddim" and float(self.eta) > 0)

    def sample(self, net: nn.Module, image: Tensor, noise: Tensor,
               generator: torch.Generator | None = None, step_noise: StepNoise | None = None
               ) -> tuple[Tensor, int]:
        """Run the reverse process from ``noise`` (B, C, H, W) ≈ x_{T-1}; returns (x0, NFE).

        Args:
            generator: where the stochastic samplers' per-step noise is drawn from.
            step_noise: instead of ``generator``, a callable returning each stochastic
                step's standard Gaussian noise (B, C, H, W), called once per such step in
                order (:data:`~segflow.methods.diffusion.samplers.StepNoise`).
        """
        grid = self.grid()
        solver = DPMSolverPP2M(len(grid), bool(self.lower_order_final)) \
            if self.sampler == "dpm_solver" else None
        x = noise.float()
        steps = sampling_steps(enumerate(grid), f"{self.sampler} sampling", total=len(grid))
        for i, step in steps:
            x0, eps = self.denoise(net, x, step, image)
            ab = self.schedule.alpha_bar(step)
            ab_next = self.schedule.alpha_bar(grid[i + 1] if i + 1 < len(grid) else None)
            if self.sampler == "ddpm":
                x = ddpm_step(x, x0, ab, ab_next, generator, step_noise)
            elif self.sampler == "ddim":
                x = ddim_step(x, x0, eps, ab, ab_next, float(self.eta), generator, step_noise)
            else:
                x = solver.step(x, x0, ab, ab_next)
        return x, len(grid)
