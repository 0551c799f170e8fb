"""Flow matching maths: the probability path, its velocity, time sampling, the ODE solvers
(order of accuracy, counted NFE) and sampling with an exact velocity field."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from segflow.infra.errors import NetworkMismatchError
from segflow.methods import FlowMatching
from segflow.methods.flow.solvers import dopri5, solve
from segflow.networks import Denoiser, UNet

PATHS = [dict(sigma=0.0), dict(sigma=0.25, sigma_schedule="bridge"),
         dict(sigma=0.25, sigma_schedule="constant"), dict(sigma=0.1, sigma_min=0.01)]


def _endpoints(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(3, 1, 8, 8, generator=g) > 0.7).float()
    x0 = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    return mask, x0, (2 * mask - 1).double(), eps


@pytest.mark.parametrize("sigma", [0.0, 0.25])
def test_path_endpoints_noise_at_0_mask_at_1(sigma):
    fm = FlowMatching(sigma=sigma, sigma_schedule="bridge")
    mask, x0, x1, eps = _endpoints()
    assert torch.equal(fm.mask_to_x(mask), x1.float())
    assert set(x1.unique().tolist()) == {-1.0, 1.0}
    assert torch.allclose(fm.path(x0, x1, torch.zeros(3), eps), x0)
    assert torch.allclose(fm.path(x0, x1, torch.ones(3), eps), x1)
    # In between the bridge noise is really there (t = 1/2: s = sigma / 2).
    mid = fm.path(x0, x1, torch.full((3,), 0.5), eps)
    assert torch.allclose(mid, 0.5 * x0 + 0.5 * x1 + 0.5 * sigma * eps)


@pytest.mark.parametrize("kw", PATHS, ids=[str(k) for k in PATHS])
def test_target_velocity_is_the_time_derivative_of_the_path(kw):
    fm = FlowMatching(**kw)
    _, x0, x1, eps = _endpoints(1)
    t = torch.tensor([0.1, 0.45, 0.9], dtype=torch.float64)
    h = 1e-6
    fd = (fm.path(x0, x1, t + h, eps) - fm.path(x0, x1, t - h, eps)) / (2 * h)
    u = fm.target_velocity(x0, x1, t, eps)
    assert torch.allclose(u, fd, atol=1e-6, rtol=1e-6)
    # The deterministic part is the straight line's slope x1 - (1 - sigma_min) x0.
    if fm.sigma == 0 or fm.sigma_schedule == "constant":
        assert torch.allclose(u, x1 - (1 - fm.sigma_min) * x0)


def test_time_sampling_uniform_and_logit_normal():
    n = 200_000
    g = torch.Generator().manual_seed(0)
    t_u = FlowMatching().sample_time(n, torch.device("cpu"), g)
    t_l = FlowMatching(time_sampling="logit_normal").sample_time(n, torch.device("cpu"), g)
    for t in (t_u, t_l):
        assert t.min() >= 0 and t.max() <= 1 and abs(t.median().item() - 0.5) < 0.01
    central = lambda t: ((t > 0.25) & (t < 0.75)).float().mean().item()  # noqa: E731
    assert abs(central(t_u) - 0.5) < 0.01
    # logit(t) ~ N(0, 1): P(|logit t| < log 3) = erf(log 3 / sqrt 2).
    assert abs(central(t_l) - math.erf(math.log(3) / math.sqrt(2))) < 0.01
    # The bridge keeps training times off the singular ends.
    t_b = FlowMatching(sigma=0.25).sample_time(n, torch.device("cpu"), g)
    assert t_b.min() >= FlowMatching.BRIDGE_T_EPS and t_b.max() <= 1 - FlowMatching.BRIDGE_T_EPS


# -- solvers ----------------------------------------------------------------------------
def _ode():
    """dx/dt = -2t x + rotation: x(t) = exp(-t²) R(t) x0 (time-dependent, linear)."""
    rot = torch.tensor([[0.0, -1.5], [1.5, 0.0]], dtype=torch.float64)
    calls = {"n": 0}

    def f(x: Tensor, t: float) -> Tensor:
        calls["n"] += 1
        return -2 * t * x + x @ rot.T

    x0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=torch.float64)  # a batch of 2
    exact = math.exp(-1.0) * x0 @ torch.linalg.matrix_exp(rot).T
    return f, x0, exact, calls


@pytest.mark.parametrize(("solver", "order", "per_step"), [("euler", 1, 1), ("midpoint", 2, 2),
                                                          ("heun", 2, 2)])
def test_fixed_step_solver_order_of_accuracy_and_exact_nfe(solver, order, per_step):
    f, x0, exact, calls = _ode()
    errors = []
    for steps in (16, 32, 64):
        calls["n"] = 0
        x, nfe = solve(f, x0, solver, steps)
        assert nfe == per_step * steps == calls["n"]
        errors.append((x - exact).norm().item())
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert coarse / fine == pytest.approx(2**order, rel=0.1), errors


def test_dopri5_is_accurate_and_reports_its_adaptive_nfe():
    f, x0, exact, calls = _ode()
    results = []
    for tol in (1e-3, 1e-6, 1e-9):
        calls["n"] = 0
        x, nfe = solve(f, x0, "dopri5", atol=tol, rtol=tol)
        assert nfe == calls["n"]
        # 2 start-up evaluations, then 6 per attempted step (first-same-as-last).
        assert (nfe - 2) % 6 == 0 and nfe >= 8
        results.append(((x - exact).abs().max().item(), nfe))
    for (err, _), tol in zip(results, (1e-3, 1e-6, 1e-9), strict=True):
        assert err < 20 * tol
    assert results[0][1] < results[1][1] < results[2][1]  # tighter tolerance, more NFE
    # A constant field: no local error, so the step grows 10x per step (the controller's cap).
    x, nfe = solve(lambda x, t: torch.ones_like(x), x0, "dopri5")
    assert torch.allclose(x, x0 + 1) and nfe <= 2 + 6 * 4


def test_solver_errors_are_clear():
    f, x0, _, _ = _ode()
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        solve(f, x0, "rk4")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        solve(f, x0, "euler", 0)
    with pytest.raises(RuntimeError, match="max_nfe=50"):
        dopri5(lambda x, t: 1e3 * torch.sin(1e3 * t * x), x0, atol=1e-12, rtol=1e-12, max_nfe=50)


# -- sampling with an exact field -------------------------------------------------------
class OracleNet(Denoiser):
    """The exact marginal field when the target is x1 ~ N(m, s²) per pixel with
    m = 2·(image > 0) − 1, x0 ~ N(0, 1), on the straight path x_t = (1 − t)·x0 + t·x1:
    x_t ~ N(t·m, (1 − t)² + t²s²), so E[x1 | x_t] and E[x1 − x0 | x_t] are linear in x_t
    and the flow carries noise z to m + s·z. s = 0 is a deterministic mask."""

    in_channels, out_channels, size_multiple = 1, 1, 1

    def __init__(self, predict_x1: bool = False, s: float = 0.0):
        super().__init__()
        self.predict_x1, self.s, self.calls = predict_x1, s, 0

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> Tensor:
        self.calls += 1
        m = 2.0 * (image > 0).float() - 1.0
        t = t.view(-1, 1, 1, 1)
        var = ((1 - t) ** 2 + t**2 * self.s**2).clamp_min(1e-12)
        if self.predict_x1:
            return m + t * self.s**2 / var * (x_t - t * m)
        return m + (t * self.s**2 - (1 - t)) / var * (x_t - t * m)


@pytest.mark.parametrize("prediction", ["velocity", "x1"])
@pytest.mark.parametrize("steps", [1, 10])
def test_euler_with_an_exact_field_recovers_the_mask(prediction, steps):
    image = torch.randn(2, 1, 12, 10, generator=torch.Generator().manual_seed(3))
    net = OracleNet(prediction == "x1")
    fm = FlowMatching(prediction=prediction, solver="euler", steps=steps, n_samples=3)
    pred = fm.predict(net, image, generator=torch.Generator().manual_seed(0))
    assert pred.nfe == steps == net.calls
    assert pred.samples.shape == (2, 3, 1, 12, 10)
    # Straight paths are integrated exactly by Euler: every member lands on the mask.
    assert torch.allclose(pred.probs, (image > 0).float(), atol=1e-5)
    assert pred.uncertainty.max() < 1e-5


@pytest.mark.parametrize("prediction", ["velocity", "x1"])
@pytest.mark.parametrize(("solver", "steps", "nfe", "tol"), [
    ("euler", 10, 10, 0.25), ("euler", 40, 40, 0.06), ("midpoint", 10, 20, 1e-3),
    ("heun", 10, 20, 1e-2), ("dopri5", None, None, 1e-4)])
def test_every_solver_follows_the_exact_marginal_field(prediction, solver, steps, nfe, tol):
    image = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    net = OracleNet(prediction == "x1", s=0.5)
    fm = FlowMatching(prediction=prediction, solver=solver, steps=steps or 1, atol=1e-5, rtol=1e-5)
    x, used = fm.sample(net, image, noise)
    assert used == net.calls and (nfe is None or used == nfe)
    expected = 2.0 * (image > 0).float() - 1.0 + 0.5 * noise
    assert (x - expected).abs().max() < tol


def test_dopri5_sampling_and_settings_change_without_rebuilding():
    image = torch.randn(1, 1, 8, 8)
    fm = FlowMatching(solver="euler", steps=10)
    adaptive = fm.with_settings(solver="dopri5", atol=1e-5, rtol=1e-5, n_samples=2)
    assert (fm.solver, fm.n_samples) == ("euler", 1)  # the original is untouched
    pred = adaptive.predict(OracleNet(s=0.1), image)
    assert (pred.nfe - 2) % 6 == 0 and pred.samples.shape[1] == 2
    with pytest.raises(ValueError, match="solver='rk4'"):
        fm.with_settings(solver="rk4")
    with pytest.raises(ValueError, match="no sampling setting \\['sigma'\\]"):
        fm.with_settings(sigma=0.1)


def test_ensemble_spread_and_reproducible_noise():
    """A zero field leaves the noise where it is: members differ, the spread is their std."""

    class Zero(OracleNet):
        def forward(self, x_t, t, image):
            return torch.zeros_like(x_t)

    fm = FlowMatching(n_samples=4, steps=2)
    image = torch.zeros(2, 1, 6, 6)
    a = fm.predict(Zero(), image, generator=torch.Generator().manual_seed(1))
    b = fm.predict(Zero(), image, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.probs, b.probs)
    assert torch.allclose(a.uncertainty, a.samples.std(dim=1, unbiased=False))
    assert a.uncertainty.mean() > 0.1
    assert fm.with_settings(n_samples=1).predict(Zero(), image).uncertainty is None


def test_loss_counts_only_valid_pixels_and_refuses_a_segnet():
    fm = FlowMatching(sigma=0.25)
    net = OracleNet()
    image = torch.randn(2, 1, 8, 8)
    mask = (image > 0).float()
    valid = torch.zeros(2, 1, 8, 8)
    valid[..., :4] = 1
    torch.manual_seed(0)
    out = fm.loss(net, image, mask, valid)
    torch.manual_seed(0)
    wrong = mask.clone()
    wrong[..., 4:] = 1 - wrong[..., 4:]  # labels outside the valid region must not matter
    assert torch.equal(fm.loss(net, image, wrong, valid)["loss"], out["loss"])
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    with pytest.raises(NetworkMismatchError, match="FlowMatching needs a Denoiser network"):
        fm.check_net(UNet(base_channels=4, depth=2))
    with pytest.raises(ValueError, match="prediction='eps'"):
        FlowMatching(prediction="eps")
