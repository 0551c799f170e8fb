"""What makes the generative models refine with more steps: training times that cover the
sampler's grid, recycling on the model's own estimate, logit outputs whose segmentation
losses keep a gradient, and few-step diffusion grids whose every call sees noise."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from segflow.methods import Diffusion, FlowMatching
from segflow.methods.diffusion import NoiseSchedule, step_grid
from segflow.methods.flow import path as fpath
from segflow.networks import Denoiser

CPU = torch.device("cpu")


def _share_past(t: Tensor, at: float) -> float:
    return float((t > at).float().mean())


def test_uniform_fraction_covers_the_euler_grid_that_logit_normal_leaves_untrained():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    lonely = fpath.sample_time(n, CPU, "logit_normal", -2.0, 1.0, 0.0, g)
    mixed = fpath.sample_time(n, CPU, "logit_normal", -2.0, 1.0, 0.5, g)
    # The logit-normal at m = -2 alone: ~2.3 % of the times past 0.5, ~0.2 % past 0.7.
    assert _share_past(lonely, 0.5) == pytest.approx(0.023, abs=0.003)
    assert _share_past(lonely, 0.7) < 0.004
    # Half uniform: a quarter of the draws past 0.5, whatever the logit-normal does.
    assert _share_past(mixed, 0.5) == pytest.approx(0.5 * 0.5 + 0.5 * 0.023, abs=0.005)
    # Every time an Euler grid of 1, 2 or 4 steps evaluates at has density >= u.
    for steps in (1, 2, 4):
        for k in range(steps):
            t = max(k / steps, 1e-3)
            assert fpath.time_density(t, "logit_normal", -2.0, 1.0, 0.5) >= 0.5
    # The density is the histogram's (a bin around 0.75, where the logit-normal is ~0).
    frac = float(((mixed > 0.7) & (mixed < 0.8)).float().mean())
    assert frac == pytest.approx(0.1 * fpath.time_density(0.75, "logit_normal", -2.0, 1.0, 0.5),
                                 rel=0.05)
    # The method draws through the same function.
    fm = FlowMatching(time_sampling="logit_normal", logit_mean=-2.0, uniform_fraction=0.5)
    assert _share_past(fm.sample_time(n, CPU, torch.Generator().manual_seed(1)), 0.5) > 0.2
    with pytest.raises(ValueError, match="uniform_fraction"):
        FlowMatching(uniform_fraction=1.5)


class _Probe(Denoiser):
    """Records its inputs; outputs a fixed value (a logit or x̂1) everywhere."""

    def __init__(self, value: float):
        super().__init__()
        self.in_channels, self.out_channels = 1, 1
        self.value = torch.nn.Parameter(torch.tensor(value))
        self.calls: list[tuple[Tensor, Tensor]] = []

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> Tensor:
        self.calls.append((x_t.detach().clone(), t.detach().clone()))
        return self.value.expand_as(x_t)


def test_recycling_builds_the_state_on_the_models_own_estimate():
    torch.manual_seed(0)
    fm = FlowMatching(prediction="x1", recycle=1.0, time_sampling="uniform")
    net = _Probe(0.3)
    mask = torch.ones(2, 1, 4, 4)
    fm.loss(net, torch.zeros(2, 1, 4, 4), mask)
    (x0, t0), (x_t, t) = net.calls  # first the no-grad estimate at t = 0, then the trained call
    assert torch.equal(t0, torch.zeros(2))
    tb = t.view(-1, 1, 1, 1)
    # Built from x̂1 = 0.3 (the model's), not from the true mask x1 = 1.
    assert torch.allclose(x_t, (1 - tb) * x0 + tb * 0.3, atol=1e-6)
    assert not torch.allclose(x_t, (1 - tb) * x0 + tb * 1.0, atol=1e-3)
    # No recycling: a single call on the true path.
    net2 = _Probe(0.3)
    FlowMatching(prediction="x1").loss(net2, torch.zeros(2, 1, 4, 4), mask)
    assert len(net2.calls) == 1
    with pytest.raises(ValueError, match="prediction=x1"):
        FlowMatching(prediction="velocity", recycle=0.5)


@pytest.mark.parametrize("method", ["flow", "diffusion"])
def test_logit_output_keeps_the_segmentation_gradient_that_a_clamped_output_loses(method):
    """Past ±1 a linear x̂ is clamped and BCE/Dice give no gradient; a logit output's BCE
    gradient is the closed form sigmoid(ℓ) − mask per pixel (mean over pixels). Target
    x = −1 (background) everywhere; the MSE's gradient is added in closed form."""
    mask = torch.zeros(1, 1, 4, 4)  # background everywhere, the estimate says vessel
    kw = dict(bce_weight=1.0, dice_weight=0.0)

    def grad(parameterization: str, value: float) -> float:
        net = _Probe(value)
        m = (FlowMatching(prediction="x1", parameterization=parameterization, **kw)
             if method == "flow" else
             Diffusion(timesteps=10, steps=2, prediction="x0", parameterization=parameterization,
                       **kw))
        m.loss(net, torch.zeros(1, 1, 4, 4), mask)["loss"].backward()
        return float(net.value.grad)

    # Linear x̂ = 1.5: the MSE's 2·(x̂ + 1) and nothing from the BCE (p clamped to 1 − 1e-4).
    assert grad("linear", 1.5) == pytest.approx(2 * 2.5, rel=1e-6)
    # Logit ℓ: x̂ = tanh(ℓ/2); MSE gradient 2(x̂ + 1)·(1 − x̂²)/2, BCE gradient sigmoid(ℓ).
    ell = torch.tensor(3.0)
    x_hat = torch.tanh(ell / 2)
    mse_grad = float(2 * (x_hat + 1) * 0.5 * (1 - x_hat**2))
    assert grad("logit", 3.0) == pytest.approx(mse_grad + float(torch.sigmoid(ell)), rel=1e-4)
    with pytest.raises(ValueError, match="parameterization"):
        Diffusion(prediction="eps", parameterization="logit")


def test_logit_flow_samples_through_tanh():
    fm = FlowMatching(prediction="x1", parameterization="logit", steps=1, n_samples=1)
    pred = fm.predict(_Probe(2.0), torch.zeros(1, 1, 4, 4), torch.Generator().manual_seed(0))
    # One Euler step from t = 0 lands on x̂1 = tanh(1): p = sigmoid(2).
    assert torch.allclose(pred.probs, torch.full_like(pred.probs, float(torch.sigmoid(torch.tensor(2.0)))),
                          atol=1e-6)


def test_trailing_diffusion_grids_end_mid_noise():
    log_snr = NoiseSchedule("linear", 1000).log_snr
    assert step_grid(1000, 2, "trailing") == [999, 499]
    assert step_grid(1000, 4, "trailing") == [999, 749, 499, 249]
    assert step_grid(1000, None, "trailing") == list(range(999, -1, -1))
    assert step_grid(50, 50, "trailing") == list(range(49, -1, -1))
    sched = NoiseSchedule("linear", 1000)
    for steps in (2, 4, 10):
        grid = step_grid(1000, steps, "trailing_logsnr", log_snr)
        assert len(grid) == steps and grid[0] == 999 and grid[-1] > 0
        assert all(a > b for a, b in zip(grid, grid[1:], strict=False))
        # Even in λ, the last interval (into the clean end's λ[0]) included.
        lam = log_snr[[*grid, 0]]
        gaps = (lam[1:] - lam[:-1]).numpy()
        assert gaps.max() < 1.5 * gaps.min()
    # The 2-step grids' second call sees real noise (ᾱ far from 1) ...
    assert sched.alpha_bar(step_grid(1000, 2, "trailing_logsnr", log_snr)[-1]) < 0.9
    # ... which the old grids ending at 0 did not.
    assert sched.alpha_bar(step_grid(1000, 2, "logsnr", log_snr)[-1]) > 0.999
    # The samplers take the trailing grids by default.
    assert Diffusion(sampler="ddim", steps=2).grid() == [999, 499]
    assert Diffusion(sampler="dpm_solver", steps=2).grid()[-1] > 0


def test_two_diffusion_steps_differ_from_one_when_the_second_call_sees_noise():
    """The exact denoiser of Gaussian data x0 ~ N(m, s²): E[x0 | x_t] is the identity at
    ᾱ = 1. On the old grid ending at step 0 the second call sits at ᾱ ≈ 0.9999 and returns
    the first estimate again (2 steps = 1 step at twice the cost); on the trailing grid it
    refines."""
    sched = NoiseSchedule("linear", 1000)
    m, s2 = 0.4, 0.25

    class GaussianPosterior(Denoiser):
        def __init__(self):
            super().__init__()
            self.in_channels, self.out_channels = 1, 1

        def forward(self, x_t, t, image):  # x0-prediction
            ab = sched.alpha_bar(int(round(float(t[0]) * 1000)))
            gain = ab**0.5 * s2 / (ab * s2 + 1 - ab)
            return m + gain * (x_t - ab**0.5 * m)

    image = torch.zeros(1, 1, 4, 4)
    noise = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def run(**kw) -> Tensor:
        method = Diffusion(prediction="x0", sampler="dpm_solver", clip_x0=False, **kw)
        return method.sample(GaussianPosterior(), image, noise)[0]

    one = run(steps=1)
    old, new = (run(steps=2, spacing="logsnr") - one).abs(), (run(steps=2) - one).abs()
    print(f"2 vs 1 step: old grid {float(old.mean()):.4f}, trailing {float(new.mean()):.4f}")
    # Old: only the ~1 % of noise left by the jump to ᾱ ≈ 0.9999 (σ ratio 0.01).
    assert float(old.mean()) < 0.02 and float(new.mean()) > 5 * float(old.mean())


def test_diffusion_recycling_builds_the_state_on_the_models_own_x0(monkeypatch):
    torch.manual_seed(0)
    diff = Diffusion(timesteps=10, steps=2, prediction="x0", recycle=1.0, clip_x0=True)
    built: list[Tensor] = []  # the x0 every forward-process state is built on
    q_sample = diff.schedule.q_sample
    monkeypatch.setattr(diff.schedule, "q_sample",
                        lambda x0, step, noise: built.append(x0.clone()) or q_sample(x0, step, noise))
    net = _Probe(0.3)  # x̂0 = 0.3 everywhere
    mask = torch.ones(2, 1, 4, 4)
    diff.loss(net, torch.zeros(2, 1, 4, 4), mask)
    (x_T, t_T), (x_t, t) = net.calls  # the no-grad estimate from noise at the last step, then the trained call
    assert torch.allclose(t_T, diff.schedule.time(9, 2, CPU))
    assert float(x_T.std()) > 0.5  # pure noise went in
    true_path, recycled = built
    assert torch.equal(true_path, torch.ones_like(true_path))  # first the true mask (x0 = 1) ...
    assert torch.allclose(recycled, torch.full_like(recycled, 0.3))  # ... then the model's own x̂0
    net2 = _Probe(0.3)
    Diffusion(timesteps=10, steps=2, prediction="x0").loss(net2, torch.zeros(2, 1, 4, 4), mask)
    assert len(net2.calls) == 1
    with pytest.raises(ValueError, match="prediction=x0"):
        Diffusion(prediction="eps", recycle=0.5)
