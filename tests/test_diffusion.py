"""MedSegDiff network and the Diffusion method (loss, ensembles, settings, NFE)."""

import pytest
import torch
from torch import nn

from segflow.errors import NetworkMismatchError
from segflow.methods import Diffusion
from segflow.networks import Denoiser, MedSegDiff, UNet
from segflow.networks.medsegdiff import ConditionFusion, FFParser


def tiny_net(**kw) -> MedSegDiff:
    torch.manual_seed(0)
    return MedSegDiff(**{"base_channels": 4, "channel_mult": (1, 2), "fft_size": 16, **kw})


def randomise(net: nn.Module) -> nn.Module:
    """Give the zero-initialised layers (output conv, residual branches) weights, so the
    output depends on every input."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return net


@pytest.mark.parametrize("hw", [(16, 16), (24, 20), (7, 9)])
def test_ff_parser_initialised_to_identity(hw):
    ff = FFParser(channels=3, size=16)
    x = torch.randn(2, 3, *hw)
    torch.testing.assert_close(ff(x), x, atol=1e-5, rtol=1e-5)


def test_ff_parser_filters_in_frequency():
    ff = FFParser(channels=1, size=16)
    with torch.no_grad():
        ff.delta[:, 0] = -1.0  # A = 0 ...
        ff.delta[:, 0, 8, 0] = 0.0  # ... except at the zero frequency (centred row 8, col 0)
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(ff(x), x.mean().expand_as(x), atol=1e-5, rtol=1e-5)
    # The stored map is used as is at its own size and resized at others.
    assert ff.attentive_map(16, 16).shape == (1, 16, 9)
    assert ff.attentive_map(32, 20).shape == (1, 32, 11)


def test_condition_fusion_adds_attended_image_features():
    fusion = ConditionFusion(channels=4, fft_size=8)
    mask_feat, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(fusion(mask_feat, torch.zeros_like(cond)), mask_feat, atol=1e-5, rtol=1e-5)
    out = fusion(mask_feat, cond)
    expected = mask_feat + fusion.norm_cond(cond) * fusion.norm_mask(mask_feat) * cond
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_medsegdiff_shapes_and_dependencies():
    net = randomise(tiny_net(channel_mult=(1, 2, 2), dce_levels=[1, 2]))
    assert net.size_multiple == 4 and set(net.fusion) == {"1", "2"}
    x, image, t = torch.randn(2, 1, 24, 32), torch.randn(2, 1, 24, 32), torch.tensor([0.1, 0.9])
    out = net(x, t, image)
    assert out.shape == (2, 1, 24, 32) and torch.isfinite(out).all()
    assert not torch.allclose(out, net(x, t.flip(0), image))          # time matters
    assert not torch.allclose(out, net(x, t, torch.randn_like(image)))  # image matters
    assert not torch.allclose(out, net(torch.randn_like(x), t, image))  # x_t matters
    rgb = tiny_net(in_channels=3, out_channels=2)
    assert rgb(torch.randn(1, 2, 8, 8), torch.rand(1), torch.randn(1, 3, 8, 8)).shape == (1, 2, 8, 8)


def test_medsegdiff_bad_arguments():
    with pytest.raises(ValueError, match="dce_levels"):
        MedSegDiff(channel_mult=(1, 2), dce_levels=[2])
    with pytest.raises(ValueError, match="channel_mult"):
        MedSegDiff(channel_mult=())


def test_loss_trains_every_part_of_the_network():
    net = randomise(tiny_net())
    method = Diffusion(dice_weight=1.0)
    mask = (torch.rand(2, 1, 16, 16) > 0.8).float()
    out = method.loss(net, torch.randn(2, 1, 16, 16), mask)
    assert set(out) == {"loss", "mse", "dice"}
    out["loss"].backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


class PixelNet(Denoiser):
    """A per-pixel denoiser (1×1 conv): outputs at a pixel depend on that pixel only."""

    in_channels, out_channels = 1, 1

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 1, 1)

    def forward(self, x_t, t, image):
        return self.conv(torch.cat([x_t, image], 1)) + t[:, None, None, None]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_ignores_invalid_pixels(prediction):
    net, method = PixelNet(), Diffusion(prediction=prediction, dice_weight=1.0)
    image, mask = torch.randn(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.8).float()
    valid = torch.ones(2, 1, 16, 16)
    valid[..., 8:] = 0
    other = mask.clone()
    other[..., 8:] = 1 - other[..., 8:]  # change the mask only where it does not count

    def loss(m, v):
        torch.manual_seed(5)  # same steps and noise
        return method.loss(net, image, m, v)

    a, b = loss(mask, valid), loss(other, valid)
    for key in ("mse", "dice"):
        torch.testing.assert_close(a[key], b[key])
    assert not torch.isclose(loss(mask, None)["mse"], loss(other, None)["mse"])


def test_wrong_network_is_a_type_error():
    with pytest.raises(NetworkMismatchError, match="needs a Denoiser"):
        Diffusion().check_net(UNet(base_channels=4, depth=2))


class CountingNet(MedSegDiff):
    def __init__(self):
        torch.manual_seed(0)
        super().__init__(base_channels=4, channel_mult=(1, 2), fft_size=8)
        self.calls, self.batch_sizes = 0, []

    def forward(self, x_t, t, image):
        self.calls += 1
        self.batch_sizes.append(x_t.shape[0])
        assert t.shape == (x_t.shape[0],) and 0 <= t.min() and t.max() < 1
        return super().forward(x_t, t, image)


@pytest.mark.parametrize(("sampler", "steps", "nfe"),
                         [("ddpm", None, 20), ("ddpm", 5, 5), ("ddim", 3, 3), ("dpm_solver", 4, 4)])
def test_predict_ensemble_nfe_and_uncertainty(sampler, steps, nfe):
    net = randomise(CountingNet())
    method = Diffusion(timesteps=20, sampler=sampler, steps=steps, n_samples=3)
    pred = method.predict(net, torch.randn(2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert pred.nfe == nfe and net.calls == nfe and set(net.batch_sizes) == {6}  # 2 images x 3
    assert pred.probs.shape == pred.uncertainty.shape == (2, 1, 8, 8)
    assert pred.samples.shape == (2, 3, 1, 8, 8)
    assert 0 <= pred.probs.min() and pred.probs.max() <= 1
    torch.testing.assert_close(pred.probs, pred.samples.mean(1))
    torch.testing.assert_close(pred.uncertainty, pred.samples.std(1, unbiased=False))
    assert pred.uncertainty.max() > 0  # members differ: different noise


def test_with_settings_changes_sampling_only():
    method = Diffusion(timesteps=100, sampler="ddim", steps=10)
    other = method.with_settings(sampler="dpm_solver", steps=20, n_samples=4)
    assert (other.sampler, other.steps, other.n_samples) == ("dpm_solver", 20, 4)
    assert (method.sampler, method.steps, method.n_samples) == ("ddim", 10, 1)
    assert other.schedule is method.schedule
    assert len(method.with_settings(steps=None).grid()) == 100
    for bad, match in [({"sampler": "euler"}, "sampler"), ({"steps": 101}, "sampling steps"),
                       ({"eta": 2.0}, "eta"), ({"spacing": "quad"}, "spacing"),
                       ({"n_samples": 0}, "n_samples"), ({"timesteps": 10}, "no sampling setting")]:
        with pytest.raises(ValueError, match=match):
            method.with_settings(**bad)
