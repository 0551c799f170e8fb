"""Sampling temperature and the refinement flow that starts from a supervised run's answer."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from segflow.infra.errors import ConfigError
from segflow.methods import Diffusion, FlowMatching, PriorFlowMatching, Supervised
from segflow.methods.flow.prior import SupervisedPrior
from segflow.networks import Denoiser
from segflow.networks.base import SegNet
from segflow.runs.checkpoints import load_prior

from conftest import TINY, run_dirs, run_entry


class _Sharpen(Denoiser):
    """x̂1 logit = k·x_t: the sign of the state, whatever the time (a 'refiner' that trusts
    its input); records the states it saw."""

    def __init__(self, k: float = 50.0):
        super().__init__()
        self.in_channels, self.out_channels, self.k = 1, 1, k
        self.w = nn.Parameter(torch.ones(()))
        self.seen: list[Tensor] = []

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> Tensor:
        self.seen.append(x_t.detach().clone())
        return self.k * self.w * x_t


class _Prior(SegNet):
    """Logit = 4·image (a 'supervised net' whose answer is the image's sign), with a
    batch norm whose statistics must not move while the flow trains."""

    def __init__(self):
        super().__init__()
        self.in_channels, self.out_channels = 1, 1
        self.bn = nn.BatchNorm2d(1, affine=False)
        self.calls = 0

    def forward(self, image: Tensor) -> Tensor:
        self.calls += 1
        return 4.0 * self.bn(image)


def _prior_flow(monkeypatch, **kw) -> PriorFlowMatching:
    prior = SupervisedPrior(_Prior().eval(), Supervised())
    return PriorFlowMatching(prior=prior, prior_run="stub", prediction="x1",
                             parameterization="logit", **kw)


def test_temperature_scales_the_starting_noise_and_zero_collapses_the_ensemble():
    image = torch.zeros(1, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    flow = FlowMatching(prediction="x1", parameterization="logit", steps=1, n_samples=4)
    noise = torch.randn(4, 1, 8, 8, generator=g)
    for temperature in (1.0, 0.5):
        net = _Sharpen()
        pred = flow.with_settings(temperature=temperature).predict(net, image, noise=noise)
        assert torch.allclose(net.seen[0], temperature * noise)  # the first state
        assert pred.uncertainty is not None and float(pred.uncertainty.max()) > 0.1
    cold = flow.with_settings(temperature=0.0).predict(_Sharpen(), image, noise=noise)
    assert float(cold.uncertainty.abs().max()) == 0.0  # every member started at the mean
    # Folder names and metrics name the temperature only when it is not the default.
    assert "temperature" not in flow.sampling_settings()
    assert flow.with_settings(temperature=0.5).sampling_settings()["temperature"] == 0.5
    assert "temperature" in Diffusion(timesteps=10, steps=2).sampling_keys
    with pytest.raises(ValueError, match="temperature"):
        flow.with_settings(temperature=1.5)


def test_prior_flow_starts_from_the_supervised_answer_and_counts_its_pass(monkeypatch):
    flow = _prior_flow(monkeypatch, prior_noise=0.0, steps=3, n_samples=2)
    image = torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    net = _Sharpen()
    pred = flow.predict(net, image, generator=torch.Generator().manual_seed(0))
    p = torch.sigmoid(4.0 * image)  # the prior's probabilities (bn in eval: identity stats)
    assert torch.allclose(net.seen[0][:1], 2 * p - 1, atol=1e-5)  # x0 = 2p - 1, no noise
    # The sharpening refiner keeps the prior's sign: the mask is the prior's, thresholded.
    assert torch.equal(pred.probs > 0.5, p > 0.5)
    # three Euler steps per member and the prior's pass once per image, shared by both members
    assert flow.prior_net.calls == 1
    assert pred.nfe * 2 == 3 * 2 + 1
    noisy = _prior_flow(monkeypatch, prior_noise=0.5, steps=1, n_samples=2)
    net2 = _Sharpen()
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    noisy.predict(net2, image, noise=noise)
    assert torch.allclose(net2.seen[0], (2 * p - 1) + 0.5 * noise, atol=1e-5)


def test_prior_is_frozen_runs_in_eval_mode_and_the_flow_trains_on_its_source(monkeypatch):
    flow = _prior_flow(monkeypatch, prior_noise=0.0, time_sampling="uniform")
    flow.train()  # Lightning's module.train() reaches the method
    assert not any(p.requires_grad for p in flow.prior_net.parameters())
    running = flow.prior_net.bn.running_mean.clone()
    net = _Sharpen()
    image = torch.randn(2, 1, 8, 8) + 3.0  # would move a training batch norm's mean
    mask = torch.zeros_like(image)  # the prior says vessel (p ~ 1), the truth background
    flow.loss(net, image, mask)["loss"].backward()
    assert torch.equal(flow.prior_net.bn.running_mean, running)  # computed in eval mode
    assert flow.prior_net.training  # and left in the mode Lightning set
    assert net.w.grad is not None
    # The trained state is on the path from x0 = 2p - 1 (no noise) to the mask.
    p = torch.sigmoid(4.0 * image)
    x_t = net.seen[0]
    x1 = 2 * mask - 1
    t = ((x_t - (2 * p - 1)) / (x1 - (2 * p - 1))).flatten(1)
    assert torch.allclose(t, t[:, :1].expand_as(t), atol=1e-4)  # one time per image
    assert "prior_net.bn.running_mean" in flow.state_dict()  # saved with the checkpoint


def test_prior_run_mistakes_are_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="prior_run is not set"):
        load_prior(None)
    with pytest.raises(ConfigError, match=r"prior_run=.*nope does not exist"):
        load_prior(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="not a built supervised prior"):
        PriorFlowMatching(prior=None, prior_run="x")
    with pytest.raises(ConfigError, match="is a generative run"):
        SupervisedPrior(nn.Identity(), FlowMatching(), source="gen")


def test_prior_flow_trains_and_evaluates_from_a_supervised_run(tmp_path):
    """CLI: a CS-Net run, then flow_prior_small on it; eval of the flow run counts the
    prior's pass; a generative run as the prior is refused."""
    (tmp_path / "outputs").mkdir()
    sup = run_entry("segflow.train", [*TINY, "debug=default", "model=csnet",
                                      "experiment_name=sup"], tmp_path)
    assert sup.returncode == 0, sup.stdout[-2000:] + sup.stderr[-3000:]
    (prior_run,) = [r for r in run_dirs(tmp_path) if r.parent.name == "sup"]
    flow_tiny = [t for t in TINY if not t.startswith("model.net.")] + [
        "debug=default", "model=flow_prior_small", "model.net.model_channels=8",
        "model.net.channel_mult=[1,2]", "model.net.image_size=32", "model.net.num_head_channels=8",
        "model.method.steps=2", f"model.method.prior_run={prior_run}", "experiment_name=pri"]
    proc = run_entry("segflow.train", flow_tiny, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (run,) = [r for r in run_dirs(tmp_path) if r.parent.name == "pri"]
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["nfe"] == 3  # 2 Euler steps + the prior
    ev = run_entry("segflow.eval", [f"run_dir={run}", "grid.steps=[1,4]", "save_images=false"],
                   tmp_path)
    assert ev.returncode == 0, ev.stdout[-2000:] + ev.stderr[-3000:]
    rows = (next(run.glob("eval/grid_*")) / "grid.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert [float(r.split(",")[header.index("nfe")]) for r in rows[1:]] == [2.0, 5.0]
    bad = run_entry("segflow.train", [*flow_tiny[:-2], f"model.method.prior_run={run}",
                                      "experiment_name=bad"], tmp_path)
    assert bad.returncode != 0
    assert "is a generative run" in bad.stdout + bad.stderr


def test_the_prior_is_counted_once_per_image_in_the_flops_of_a_prediction():
    """Counted FLOPs of a whole prediction: the flow net's passes (steps × members) plus
    one prior pass per image, whatever the ensemble size."""
    from segflow.metrics.flops import call_flops, forward_flops

    class ConvPrior(SegNet):
        def __init__(self):
            super().__init__()
            self.in_channels, self.out_channels = 1, 1
            self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)

        def forward(self, image):
            return self.conv(image)

    class ConvFlow(Denoiser):
        def __init__(self):
            super().__init__()
            self.in_channels, self.out_channels = 1, 1
            self.conv = nn.Conv2d(2, 1, 3, padding=1, bias=False)

        def forward(self, x_t, t, image):
            return self.conv(torch.cat([x_t, image], 1))

    prior, net, image = ConvPrior(), ConvFlow(), torch.randn(1, 1, 16, 16)
    per_prior = forward_flops(prior, (1, 1, 16, 16))
    per_pass = forward_flops(net, (1, 1, 16, 16), (1,), (1, 1, 16, 16))
    assert per_prior == 2 * 1 * 1 * 9 * 16 * 16 and per_pass == 2 * per_prior
    for n in (1, 4):
        flow = PriorFlowMatching(prior=SupervisedPrior(prior, Supervised()), steps=2, n_samples=n,
                                 prediction="x1", parameterization="logit")
        total = call_flops(flow.predict, net, image, generator=torch.Generator().manual_seed(0))
        assert total == 2 * n * per_pass + per_prior, (n, total)
