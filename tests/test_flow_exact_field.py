"""The exact flow-matching sampling field against Monte Carlo, and training times on the
sampler's grid.

For a known target distribution the posterior mean x̂1 = E[x1 | x_t] is computed in closed
form and handed to :meth:`FlowMatching.field` by an oracle network; the field must equal
E[u_t | x_t], the marginal velocity of Lipman et al. (2023), estimated here without any
formula: (x0, ε, x1) are drawn, u_t and x_t formed from the path, and E[u_t | x_t = x]
read off by a local-linear kernel regression in one dimension.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from segflow.methods import FlowMatching
from segflow.methods.flow import path as fpath
from segflow.networks import Denoiser

CPU = torch.device("cpu")
TOL = 2e-2
N_MC = 2_000_000
BANDWIDTH = 0.05  # of the standard deviation of x_t
TIMES = (0.05, 0.5, 0.75, 0.9)
QUANTILES = (0.2, 0.5, 0.8)

PATHS = {
    "bridge": dict(sigma=0.25, sigma_schedule="bridge"),
    "bridge_wide": dict(sigma=0.6, sigma_schedule="bridge"),
    "constant": dict(sigma=0.3, sigma_schedule="constant"),
    "bridge_sigma_min": dict(sigma=0.25, sigma_schedule="bridge", sigma_min=0.05),
}
TARGETS = {  # x1 takes these values with these probabilities
    "point": ((0.6,), (1.0,)),
    "two_point": ((-1.0, 1.0), (0.7, 0.3)),
}


class ShiftedSource(FlowMatching):
    """A source ``x0 = μ + τ·z``, the kind ``PriorFlowMatching`` has, with a fixed μ."""

    def __init__(self, mu: float, tau: float, **kw):
        super().__init__(**kw)
        self.mu, self.tau = mu, tau

    def source_moments(self, image: Tensor, like: Tensor) -> tuple[Tensor | None, float]:
        return torch.full_like(like, self.mu), self.tau


class PosteriorMean(Denoiser):
    """Outputs E[x1 | x_t] for a discrete x1 (values, probabilities) under the path of
    ``fm``: given x1 = j, x_t ~ N(c·μ + t·j, c²τ² + s²), so the posterior weights are
    Bayes' rule on those Gaussians."""

    in_channels, out_channels, size_multiple = 1, 1, 1

    def __init__(self, fm: FlowMatching, values, probs, mu: float = 0.0, tau: float = 1.0):
        super().__init__()
        self.fm, self.mu, self.tau = fm, mu, tau
        self.values = torch.tensor(values, dtype=torch.float64)
        self.probs = torch.tensor(probs, dtype=torch.float64)

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> Tensor:
        return posterior_mean(self.fm, x_t.double(), float(t[0]), self.values, self.probs,
                              self.mu, self.tau).to(x_t.dtype)


def posterior_mean(fm, x, t, values, probs, mu=0.0, tau=1.0):
    a = 1 - fm.sigma_min
    c = 1 - a * t
    s2 = float(fpath.noise_moments(torch.tensor(t), fm.sigma, fm.sigma_schedule)[0])
    var = max(c * c * tau * tau + s2, 1e-12)  # t = 1 without σ_min: x_t is x1 itself
    logw = torch.log(probs) - (x.unsqueeze(-1) - c * mu - t * values) ** 2 / (2 * var)
    return (torch.softmax(logw, dim=-1) * values).sum(-1)


def mc_field(fm, t, values, probs, queries, mu=0.0, tau=1.0, seed=0):
    """E[u_t | x_t = q] for each query q, by local-linear kernel regression on draws."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N_MC, generator=g, dtype=torch.float64)
    eps = torch.randn(N_MC, generator=g, dtype=torch.float64)
    pick = torch.multinomial(torch.tensor(probs, dtype=torch.float64), N_MC, replacement=True,
                             generator=g)
    x1 = torch.tensor(values, dtype=torch.float64)[pick]
    x0 = mu + tau * z
    tt = torch.full((N_MC,), t, dtype=torch.float64)
    x_t = fm.path(x0, x1, tt, eps)
    u = fm.target_velocity(x0, x1, tt, eps)
    out, h = [], BANDWIDTH * float(x_t.std())
    for q in queries:
        d = x_t - q
        w = torch.exp(-0.5 * (d / h) ** 2)
        s0, s1, s2 = w.sum(), (w * d).sum(), (w * d * d).sum()
        r0, r1 = (w * u).sum(), (w * d * u).sum()
        out.append(float((s2 * r0 - s1 * r1) / (s0 * s2 - s1 * s1)))
    return torch.tensor(out, dtype=torch.float64), x_t


def _queries(x_t: Tensor) -> list[float]:
    return [float(x) for x in torch.quantile(x_t[:200_000], torch.tensor(QUANTILES, dtype=x_t.dtype))]


def _check(fm, values, probs, mu=0.0, tau=1.0):
    """Max |exact field − MC| and |old mean-path field − MC| over the times and queries."""
    net = PosteriorMean(fm, values, probs, mu, tau)
    a = 1 - fm.sigma_min
    worst_new = worst_old = 0.0
    for i, t in enumerate(TIMES):
        _, x_t = mc_field(fm, t, values, probs, [0.0], mu, tau, seed=100 + i)
        queries = _queries(x_t)
        mc, _ = mc_field(fm, t, values, probs, queries, mu, tau, seed=i)
        x = torch.tensor(queries, dtype=torch.float64).view(-1, 1, 1, 1)
        v, x1_hat = fm.field(net, x, t, torch.zeros_like(x))
        v, x1_hat = v.double().flatten(), x1_hat.double().flatten()
        c = 1 - a * t
        # The field before: v = x̂1 − (a/c)·(x − t·x̂1) (with the source mean, its shift).
        old = x1_hat - a * mu - (a / c) * (x.flatten() - t * x1_hat - c * mu)
        worst_new = max(worst_new, float((v - mc).abs().max()))
        worst_old = max(worst_old, float((old - mc).abs().max()))
    return worst_new, worst_old


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("path", list(PATHS))
def test_exact_field_is_the_monte_carlo_conditional_velocity(path, target):
    fm = FlowMatching(prediction="x1", **PATHS[path])
    values, probs = TARGETS[target]
    new, old = _check(fm, values, probs)
    assert new < TOL, (path, target, new)
    # A test of the test: the mean-path field, exact only for σ = 0, fails it.
    assert old > TOL, (path, target, old)


def test_exact_field_with_a_shifted_source_the_refiners_kind():
    """x0 = μ + τ·z (PriorFlowMatching's source with μ = 2p − 1, τ = prior_noise)."""
    fm = ShiftedSource(0.3, 0.5, prediction="x1", sigma=0.25)
    new, old = _check(fm, *TARGETS["two_point"], mu=0.3, tau=0.5)
    assert new < TOL, new
    assert old > TOL, old


def test_without_noise_the_exact_field_is_the_mean_path_one():
    fm = FlowMatching(prediction="x1", sigma=0.0, sigma_min=0.02)
    for t in (0.0, 0.3, 0.9):
        assert fm.gain(t) == pytest.approx(-(1 - 0.02) / (1 - 0.98 * t))
    new, old = _check(fm, *TARGETS["two_point"])
    assert new < TOL and old < TOL


@pytest.mark.parametrize("path", list(PATHS))
def test_gain_is_finite_at_both_ends_and_continuous_into_them(path):
    kw = PATHS[path]
    fm = FlowMatching(prediction="x1", **kw)
    k0, k1 = fm.gain(0.0), fm.gain(1.0)
    assert math.isfinite(k0) and math.isfinite(k1)
    assert fm.gain(1e-7) == pytest.approx(k0, rel=1e-5, abs=1e-6)
    a = 1 - fm.sigma_min
    if kw["sigma_schedule"] == "bridge":
        # t → 0: s·s' → σ²/2 while s → 0, so k(0) = σ²/2 − a; the bridge has no noise there.
        assert k0 == pytest.approx(kw["sigma"] ** 2 / 2 - a)
    else:
        assert k0 == pytest.approx(-a / (1 + kw["sigma"] ** 2))
    if fm.sigma_min == 0 and kw["sigma_schedule"] == "bridge":
        assert k1 == 0.0  # tapered: the state is the mask there, v = x̂1
        # Near the end the exact gain is −1/(2(1 − t)) (σ > 0), unbounded but untapered.
        t = 1 - 0.05
        assert fm.gain(t) == pytest.approx(float(fpath.field_gain(t, fm.sigma, "bridge", 0.0, 1.0, 0.0)))
    # A Heun run evaluates at t = 1: finite velocities everywhere on the grid.
    net = PosteriorMean(fm, *TARGETS["two_point"])
    x, nfe = fm.with_settings(solver="heun", steps=4).sample(net, torch.zeros(2, 1, 4, 4),
                                                            torch.randn(2, 1, 4, 4))
    assert nfe == 8 and torch.isfinite(x).all()


def test_exact_field_sampling_reaches_the_target_distribution():
    """Euler on the exact field with a two-point target: the endpoint's mean is the target's
    (the marginal field transports the marginals), and the mean-path field with bridge
    noise misses it by more."""
    values, probs = TARGETS["two_point"]
    target_mean = sum(v * p for v, p in zip(values, probs, strict=True))
    fm = FlowMatching(prediction="x1", sigma=0.6, solver="euler", steps=200)
    net = PosteriorMean(fm, values, probs)
    noise = torch.randn(1, 1, 200, 200, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x, _ = fm.sample(net, torch.zeros_like(noise), noise)
    assert abs(float(x.mean()) - target_mean) < 0.02
    assert float((x > 0).double().mean()) == pytest.approx(probs[1], abs=0.02)


def test_constant_noise_sampling_starts_as_wide_as_the_path_at_t0():
    """With constant noise σ the state at t = 0 is x0 + σ·ε: the sampler's start is
    √(1 + σ²)·noise (one Euler step of a zero field keeps it)."""

    class Zero(Denoiser):
        in_channels, out_channels, size_multiple = 1, 1, 1

        def forward(self, x_t, t, image):
            return torch.zeros_like(x_t)

    noise = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    fm = FlowMatching(prediction="velocity", sigma=0.5, sigma_schedule="constant", steps=1)
    x, _ = fm.sample(Zero(), torch.zeros_like(noise), noise)
    torch.testing.assert_close(x.double(), math.sqrt(1.25) * noise)
    bridge = FlowMatching(prediction="velocity", sigma=0.5, steps=1)
    torch.testing.assert_close(bridge.sample(Zero(), torch.zeros_like(noise), noise)[0].double(), noise)


# -- training times on the sampler's grid ----------------------------------------------
def test_grid_times_are_the_solvers_evaluation_times():
    times, probs = fpath.grid_times([1, 2, 4, 8])
    assert times.tolist() == [i / 8 for i in range(8)]
    assert probs.sum().item() == pytest.approx(1.0)
    assert probs[0].item() == pytest.approx(15 / 32) and probs[4].item() == pytest.approx(7 / 32)
    assert probs[1].item() == pytest.approx(1 / 32) and probs[2].item() == pytest.approx(3 / 32)
    mid, _ = fpath.grid_times([2], "midpoint")
    assert mid.tolist() == [0.0, 0.25, 0.5, 0.75]
    heun, _ = fpath.grid_times([2], "heun")
    assert heun.tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="fixed-step"):
        fpath.grid_times([2], "dopri5")
    with pytest.raises(ValueError, match="counts >= 1"):
        fpath.grid_times([0])


def test_training_time_sampler_puts_the_configured_share_on_the_grid():
    n, share = 400_000, 0.25
    fm = FlowMatching(prediction="x1", sigma=0.25, time_sampling="logit_normal", logit_mean=-2.0,
                      uniform_fraction=0.5, grid_time_share=share, grid_time_steps=[1, 2, 4, 8])
    t = fm.sample_time(n, CPU, torch.Generator().manual_seed(0))
    times, probs = fm.grid_times()
    on = torch.zeros(n, dtype=torch.bool)
    for g, p in zip(times.tolist(), probs.tolist(), strict=True):
        hit = t == g
        on |= hit
        expected = share * p
        assert float(hit.double().mean()) == pytest.approx(expected, abs=4 * math.sqrt(expected / n))
    assert float(on.double().mean()) == pytest.approx(share, abs=0.004)
    # t = 0 exactly, the one-step sampler's only time: about 11.7 % of the draws.
    assert float((t == 0).double().mean()) == pytest.approx(share * 15 / 32, abs=0.003)
    # The continuous part is untouched: no mass at the grid without the share.
    plain = FlowMatching(prediction="x1", sigma=0.25, time_sampling="logit_normal", logit_mean=-2.0,
                         uniform_fraction=0.5).sample_time(n, CPU, torch.Generator().manual_seed(0))
    assert int((plain == 0).sum()) == 0


def test_grid_defaults_to_the_configured_steps_and_velocity_keeps_off_the_bridge_ends():
    fm = FlowMatching(prediction="x1", steps=4, grid_time_share=1.0)
    t = fm.sample_time(10_000, CPU, torch.Generator().manual_seed(1))
    assert sorted(set(t.tolist())) == [0.0, 0.25, 0.5, 0.75]
    vel = FlowMatching(prediction="velocity", sigma=0.25, steps=1, grid_time_share=1.0)
    torch.testing.assert_close(vel.sample_time(100, CPU), torch.full((100,), FlowMatching.BRIDGE_T_EPS))
    for bad in (dict(grid_time_share=1.5), dict(grid_time_steps=[]), dict(grid_time_steps=[0, 2])):
        with pytest.raises(ValueError, match="grid_time"):
            FlowMatching(**bad)
