"""Closed-form checks of the diffusion schedule, conversions and samplers."""

import math

import pytest
import torch

from segflow.methods import Diffusion
from segflow.methods.diffusion import (
    DPMSolverPP2M,
    NoiseSchedule,
    ddim_step,
    ddpm_step,
    step_grid,
    target_of,
    x0_eps_of,
)
from segflow.networks import Denoiser


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [1000, 50])
def test_alpha_bar_decreases_from_one_to_zero(schedule, timesteps):
    ab = NoiseSchedule(schedule, timesteps).alphas_cumprod
    assert ab.shape == (timesteps,)
    assert torch.all(ab[1:] < ab[:-1])
    assert ab[0] > 0.99 and ab[-1] < 1e-3


def test_unknown_schedule_and_prediction_are_value_errors():
    with pytest.raises(ValueError, match="schedule"):
        Diffusion(schedule="quadratic")
    with pytest.raises(ValueError, match="prediction"):
        Diffusion(prediction="score")


@pytest.mark.parametrize("step", [0, 300, 999])
def test_q_sample_mean_and_variance_match_closed_form(step):
    sched = NoiseSchedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n,), 0.7)
    noise = torch.randn(n, generator=g)
    x = sched.q_sample(x0, torch.full((n,), step), noise)
    ab = float(sched.alphas_cumprod[step])
    mean, var = math.sqrt(ab) * 0.7, 1 - ab
    # 6 standard errors of the sample mean / variance of a Gaussian.
    assert abs(x.mean().item() - mean) < 6 * math.sqrt(var / n) + 1e-6
    assert abs(x.var().item() - var) < 6 * var * math.sqrt(2 / n) + 1e-9


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_eps_x0_v_conversions_invert_each_other(prediction):
    sched = NoiseSchedule("cosine", 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64)
    step = torch.tensor([0, 1, 10, 100, 500, 900, 998, 999])
    alpha, sigma = sched.alpha_sigma(step, x0)
    x_t = alpha * x0 + sigma * eps
    out = target_of(prediction, x0, eps, alpha, sigma)
    x0_back, eps_back = x0_eps_of(prediction, out, x_t, alpha, sigma)
    # float64: even x0 = (x_t - sigma eps) / alpha at the last step (alpha ≈ 1e-4) is exact.
    torch.testing.assert_close(x0_back, x0, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(eps_back, eps, atol=1e-8, rtol=1e-6)
    # And the three targets agree with each other through x_t.
    v = target_of("v", x0, eps, alpha, sigma)
    torch.testing.assert_close(alpha * x_t - sigma * v, x0, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(sigma * x_t + alpha * v, eps, atol=1e-10, rtol=1e-8)


def test_step_grid():
    assert step_grid(1000, None) == list(range(999, -1, -1))
    assert step_grid(50, 50) == list(range(49, -1, -1))
    assert step_grid(1000, 1) == [999]
    log_snr = NoiseSchedule("linear", 1000).log_snr
    for spacing in ("uniform", "logsnr"):
        for steps in (2, 10, 50, 200, 1000):
            grid = step_grid(1000, steps, spacing, log_snr)
            assert len(grid) == steps and grid[0] == 999 and grid[-1] == 0
            assert all(a > b for a, b in zip(grid, grid[1:], strict=False))
    # uniform: even in the index; logsnr: even in λ (up to integer rounding).
    assert step_grid(1000, 4, "uniform") == [999, 666, 333, 0]
    lam = log_snr[step_grid(1000, 10, "logsnr", log_snr)]
    gaps = (lam[1:] - lam[:-1]).numpy()
    assert gaps.min() > 0 and gaps.max() < 1.5 * gaps.min()
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="sampling steps"):
            step_grid(1000, bad)
    with pytest.raises(ValueError, match="spacing"):
        step_grid(1000, 10, "quadratic")


def test_ddpm_step_is_ddim_with_eta_one():
    """Same posterior mean and variance: with the same noise draw the outputs agree."""
    g = torch.Generator().manual_seed(2)
    x_t, x0 = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    for ab, ab_next in [(0.3, 0.5), (0.01, 0.9), (0.9, 0.95), (0.5, 1.0)]:
        eps = (x_t - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        a = ddpm_step(x_t, x0, ab, ab_next, torch.Generator().manual_seed(7))
        b = ddim_step(x_t, x0, eps, ab, ab_next, 1.0, torch.Generator().manual_seed(7))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # At the clean end both return the predicted x0 exactly.
    torch.testing.assert_close(ddpm_step(x_t, x0, 0.5, 1.0), x0)


def test_dpm_solver_first_step_is_ddim():
    g = torch.Generator().manual_seed(3)
    x_t, x0 = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    ab, ab_next = 0.2, 0.6
    eps = (x_t - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    torch.testing.assert_close(DPMSolverPP2M().step(x_t, x0, ab, ab_next),
                               ddim_step(x_t, x0, eps, ab, ab_next, 0.0), atol=1e-5, rtol=1e-5)


class GaussianOracle(Denoiser):
    """The exact denoiser of data x0 ~ N(mean, std²) (independent pixels), as eps-prediction:
    E[x0 | x_t] = mean + alpha std² / (alpha² std² + sigma²) · (x_t - alpha mean)."""

    in_channels, out_channels = 1, 1

    def __init__(self, schedule: NoiseSchedule, mean: float, std: float):
        super().__init__()
        self.schedule, self.mean, self.std = schedule, mean, std
        self.calls = 0

    def forward(self, x_t, t, image):
        self.calls += 1
        step = torch.round(t * self.schedule.timesteps).long()
        alpha, sigma = self.schedule.alpha_sigma(step, x_t)
        x0 = self.mean + alpha * self.std**2 / (alpha**2 * self.std**2 + sigma**2) * (x_t - alpha * self.mean)
        return (x_t - alpha * x0) / sigma


def _sample_moments(sampler: str, steps: int | None, eta: float = 0.0, n: int = 20_000,
                    mean: float = 0.3, std: float = 0.2) -> tuple[float, float, int]:
    method = Diffusion(timesteps=1000, schedule="linear", sampler=sampler, steps=steps, eta=eta,
                       clip_x0=False)
    net = GaussianOracle(method.schedule, mean, std)
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(1, 1, 1, n, generator=g, dtype=torch.float64)
    x, nfe = method.sample(net, torch.zeros(1, 1, 1, n), noise, g)
    assert nfe == net.calls
    return x.mean().item(), x.std().item(), nfe


def test_samplers_recover_gaussian_data_and_dpm_solver_beats_ddim_at_10_steps():
    mean, std = 0.3, 0.2
    errors = {}
    for sampler, steps in [("ddim", 10), ("ddim", 50), ("dpm_solver", 10), ("dpm_solver", 20)]:
        m, s, nfe = _sample_moments(sampler, steps, mean=mean, std=std)
        assert nfe == steps
        errors[(sampler, steps)] = abs(s - std)
        assert abs(m - mean) < 0.01, (sampler, steps, m)
    # Few-step DDIM shrinks the spread (first-order error), more steps fix it; the
    # second-order DPM-Solver++ is within a few percent already at 10 steps.
    assert errors[("ddim", 10)] > 0.05 and errors[("ddim", 50)] < 0.03, errors
    assert errors[("dpm_solver", 10)] < 0.01 and errors[("dpm_solver", 20)] < 0.01, errors
    assert errors[("dpm_solver", 10)] < 0.2 * errors[("ddim", 10)], errors


def test_full_ddpm_recovers_gaussian_data():
    m, s, nfe = _sample_moments("ddpm", None, n=4000)
    assert nfe == 1000
    assert abs(m - 0.3) < 0.02 and abs(s - 0.2) < 0.02, (m, s)


def test_ddim_eta_zero_is_deterministic_and_eta_one_is_not():
    method = Diffusion(timesteps=100, sampler="ddim", steps=10, eta=0.0, clip_x0=False)
    net = GaussianOracle(method.schedule, 0.0, 0.5)
    noise = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    image = torch.zeros(1, 1, 4, 4)
    a, _ = method.sample(net, image, noise, torch.Generator().manual_seed(1))
    b, _ = method.sample(net, image, noise, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    noisy = method.with_settings(eta=1.0)
    c, _ = noisy.sample(net, image, noise, torch.Generator().manual_seed(1))
    d, _ = noisy.sample(net, image, noise, torch.Generator().manual_seed(2))
    assert not torch.allclose(c, d)


def _dpm_2m_by_hand(x, x0s, abs_):
    """DPM-Solver++(2M) written out from Lu et al. (2022), Algorithm 2, for a short grid:
    first update first order, the others with D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}."""
    lam = [0.5 * math.log(a / (1 - a)) for a in abs_]
    out = x
    for i in range(len(abs_) - 1):
        h = lam[i + 1] - lam[i]
        if i == 0:
            d = x0s[0]
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x0s[i] - 1 / (2 * r) * x0s[i - 1]
        out = math.sqrt((1 - abs_[i + 1]) / (1 - abs_[i])) * out \
            - math.sqrt(abs_[i + 1]) * (math.exp(-h) - 1) * d
    return out


def test_dpm_solver_one_lower_order_final_step_two_update_case():
    """Three evaluations (two updates before the clean jump): the second update, into the
    last grid point, is the 2M update as computed by hand, whatever ``lower_order_final``
    says and at any step count; only the jump to the clean end is first order."""
    g = torch.Generator().manual_seed(6)
    x, x0_a, x0_b = (torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ab = [0.1, 0.5, 0.99]  # ᾱ at the three grid points
    for steps, lower in [(3, True), (3, False), (10, True)]:
        solver = DPMSolverPP2M(steps, lower_order_final=lower)
        mid = solver.step(x, x0_a, ab[0], ab[1])
        end = solver.step(mid, x0_b, ab[1], ab[2])
        torch.testing.assert_close(mid, _dpm_2m_by_hand(x, [x0_a], ab[:2]))
        eps = (mid - math.sqrt(ab[1]) * x0_b) / math.sqrt(1 - ab[1])
        first = ddim_step(mid, x0_b, eps, ab[1], ab[2], 0.0)
        second = _dpm_2m_by_hand(x, [x0_a, x0_b], ab)
        assert not torch.allclose(first, second)  # the two orders really differ here
        torch.testing.assert_close(end, second)
        torch.testing.assert_close(solver.step(end, x0_a, ab[2], 1.0), x0_a)  # the clean jump


def _oracle_x0(schedule, step, x, mean=0.3, std=0.2):
    ab = float(schedule.alphas_cumprod[step])
    alpha, sigma2 = math.sqrt(ab), 1 - ab
    return mean + alpha * std**2 / (ab * std**2 + sigma2) * (x - alpha * mean)


@pytest.mark.parametrize("steps", [2, 3, 4, 9, 10, 15])
def test_dpm_solver_sampler_is_the_closed_form_with_one_lower_order_final_step(steps):
    """The whole sampler against Lu et al.'s Algorithm 2 written out here: the first update
    first order, every later update into a grid point second order, then one first-order
    final step (the jump to ᾱ = 1 returns the last x0). ``lower_order_final`` does not
    change it; at 3 steps and more it is not DDIM."""
    def run(sampler, **kw):
        method = Diffusion(timesteps=1000, sampler=sampler, steps=steps, clip_x0=False,
                           spacing="trailing_logsnr", **kw)  # one grid for both samplers
        net = GaussianOracle(method.schedule, 0.3, 0.2)
        noise = torch.randn(1, 1, 1, 256, generator=torch.Generator().manual_seed(4),
                            dtype=torch.float64)
        return method, noise, method.sample(net, torch.zeros(1, 1, 1, 256), noise)[0]

    method, x, out = run("dpm_solver")
    grid = method.grid()
    ab = [float(method.schedule.alphas_cumprod[k]) for k in grid]
    lam = [0.5 * math.log(a / (1 - a)) for a in ab]
    x0_prev = None
    for i in range(len(grid) - 1):
        x0 = _oracle_x0(method.schedule, grid[i], x)
        h = lam[i + 1] - lam[i]
        if i == 0:
            d = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        x = math.sqrt((1 - ab[i + 1]) / (1 - ab[i])) * x + math.sqrt(ab[i + 1]) * (1 - math.exp(-h)) * d
        x0_prev = x0
    expected = _oracle_x0(method.schedule, grid[-1], x)  # the one lower-order final step
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run("dpm_solver", lower_order_final=False)[2], out, atol=0, rtol=0)
    if steps >= 3:
        assert not torch.allclose(out, run("ddim")[2])
    else:
        torch.testing.assert_close(out, run("ddim")[2])
    assert Diffusion().with_settings(lower_order_final=False).lower_order_final is False


# -- zero terminal SNR (Lin et al. 2024) -------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [1000, 50])
def test_zero_terminal_snr_schedule(schedule, timesteps):
    plain = NoiseSchedule(schedule, timesteps)
    zero = NoiseSchedule(schedule, timesteps, zero_terminal_snr=True)
    ab = zero.alphas_cumprod
    assert ab[-1].item() == 0.0 and plain.alphas_cumprod[-1].item() > 0
    assert torch.all(ab[1:] < ab[:-1])  # still strictly decreasing
    torch.testing.assert_close(ab[0], plain.alphas_cumprod[0])  # the first step is kept
    assert torch.all((zero.betas > 0) & (zero.betas <= 1)) and zero.betas[-1].item() == pytest.approx(1.0)
    # √ᾱ is the plain one shifted and rescaled: an affine map, so the ratios of its
    # differences are unchanged.
    r_plain, r_zero = plain.alphas_cumprod.sqrt(), ab.sqrt()
    torch.testing.assert_close((r_zero[1:] - r_zero[:-1]) / (r_zero[1] - r_zero[0]),
                               (r_plain[1:] - r_plain[:-1]) / (r_plain[1] - r_plain[0]))
    assert zero.log_snr[-1].item() == -math.inf and torch.isfinite(zero.log_snr[:-1]).all()
    for spacing in ("uniform", "logsnr", "trailing", "trailing_logsnr"):
        grid = step_grid(timesteps, 10, spacing, zero.log_snr)
        assert len(grid) == 10 and grid[0] == timesteps - 1
        assert all(a > b for a, b in zip(grid, grid[1:], strict=False))


class PredictingOracle(GaussianOracle):
    """:class:`GaussianOracle`'s exact denoiser, output as x0 or v."""

    def __init__(self, schedule, mean, std, prediction):
        super().__init__(schedule, mean, std)
        self.prediction = prediction

    def forward(self, x_t, t, image):
        self.calls += 1
        step = torch.round(t * self.schedule.timesteps).long()
        alpha, sigma = self.schedule.alpha_sigma(step, x_t)
        x0 = self.mean + alpha * self.std**2 / (alpha**2 * self.std**2 + sigma**2) * (x_t - alpha * self.mean)
        if self.prediction == "x0":
            return x0
        eps = (x_t - alpha * x0) / sigma
        return target_of("v", x0, eps, alpha, sigma)


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize(("sampler", "steps"), [("ddim", 10), ("ddpm", 20), ("dpm_solver", 10),
                                                ("dpm_solver", 2), ("ddim", 1)])
def test_zero_terminal_snr_samplers_are_finite_and_recover_gaussian_data(prediction, sampler, steps):
    """From ᾱ = 0 every sampler stays finite, keeps the data mean, and spreads the samples
    as on the plain schedule (few-step samplers shrink the spread on both: ±0.03)."""
    def run(zero):
        method = Diffusion(timesteps=1000, sampler=sampler, steps=steps, clip_x0=False,
                           prediction=prediction, zero_terminal_snr=zero)
        net = PredictingOracle(method.schedule, 0.3, 0.2, prediction)
        g = torch.Generator().manual_seed(4)
        noise = torch.randn(1, 1, 1, 20_000, generator=g, dtype=torch.float64)
        x, nfe = method.sample(net, torch.zeros(1, 1, 1, 20_000), noise, g)
        assert nfe == steps == net.calls
        return method, net, x

    method, net, x = run(True)
    assert method.grid()[0] == 999 and method.schedule.alpha_bar(999) == 0.0
    assert torch.isfinite(x).all()
    assert abs(x.mean().item() - 0.3) < 0.01
    assert abs(x.std().item() - run(False)[2].std().item()) < 0.03
    loss = method.loss(net, torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4))["loss"]
    assert torch.isfinite(loss)


def test_zero_terminal_snr_is_off_by_default_and_refuses_eps_prediction():
    assert Diffusion().schedule.alphas_cumprod[-1].item() > 0
    assert Diffusion(prediction="x0").zero_terminal_snr is False
    with pytest.raises(ValueError, match="zero_terminal_snr needs method.prediction=x0 or v"):
        Diffusion(prediction="eps", zero_terminal_snr=True)


@pytest.mark.parametrize(("sampler", "eta", "draws"), [("ddpm", 0.0, 4), ("ddim", 0.7, 4),
                                                       ("ddim", 0.0, 0)])
def test_step_noise_replaces_the_generator_draws(sampler, eta, draws):
    """A ``step_noise`` source supplies each stochastic step's z, in order: fed the values
    the generator would draw, the sample is the same; the noisy steps are the updates
    before the last grid point (the clean jump and deterministic DDIM draw nothing)."""
    method = Diffusion(timesteps=50, sampler=sampler, steps=5, eta=eta, clip_x0=False)
    net = GaussianOracle(method.schedule, 0.0, 0.5)
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    image = torch.zeros(2, 1, 4, 4)
    reference, _ = method.sample(net, image, noise, torch.Generator().manual_seed(1))
    stream, calls = torch.Generator().manual_seed(1), []

    def step_noise():
        calls.append(1)
        return torch.randn(noise.shape, generator=stream)

    x, _ = method.sample(net, image, noise, None, step_noise=step_noise)
    torch.testing.assert_close(x, reference)
    assert len(calls) == draws and method.stochastic_steps() == (draws > 0)
    if draws:
        other, _ = method.sample(net, image, noise, None, step_noise=lambda: torch.zeros_like(noise))
        assert not torch.allclose(other, reference)
        with pytest.raises(ValueError, match="step_noise returned shape"):
            method.sample(net, image, noise, None, step_noise=lambda: torch.zeros(1, 1, 4, 4))
