"""MedSegDiff network and the Diffusion method (loss, ensembles, settings, NFE)."""

import pytest
import torch
from torch import Tensor, nn

from segflow.infra.errors import NetworkMismatchError
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


@pytest.mark.parametrize("size", [16, 15])
@pytest.mark.parametrize("hw", [(32, 20), (24, 24), (7, 9), (8, 8), (17, 40)])
def test_ff_parser_resized_map_keeps_zero_frequency_at_zero_frequency(size, hw):
    """Resized to another feature size, the DC weight lands on the DC bin (index [0, 0] of
    rfft2's layout) and every bin gets the map's value at its own physical frequency."""
    torch.manual_seed(0)
    ff = FFParser(channels=2, size=size)
    rows, cols = ff.delta.shape[-2:]
    with torch.no_grad():
        ff.delta.normal_()
    dc = ff.delta[:, :, size // 2, 0]  # stored with rows centred (zero frequency at size // 2)
    a = ff.attentive_map(*hw)
    torch.testing.assert_close(a[:, 0, 0], torch.complex(1 + dc[:, 0], dc[:, 1]))
    # A map linear in frequency, a + b·fy + c·fx, is resampled exactly (inside its range).
    fy = (torch.arange(rows) - size // 2) / size
    fx = torch.arange(cols) / size
    with torch.no_grad():
        ff.delta[:, 0] = 0.5 + 2.0 * fy[:, None] - 3.0 * fx[None, :]
        ff.delta[:, 1] = 0.0
    h, w = hw
    ty = torch.fft.fftfreq(h).clamp(float(fy.min()), float(fy.max()))  # rfft2's row order
    tx = torch.fft.rfftfreq(w).clamp(max=float(fx.max()))
    expected = 1.5 + 2.0 * ty[:, None] - 3.0 * tx[None, :]
    torch.testing.assert_close(ff.attentive_map(h, w).real, expected.expand(2, h, w // 2 + 1),
                               atol=1e-5, rtol=1e-5)
    # So a constant image passes with the DC weight whatever its size.
    x = torch.ones(1, 2, h, w)
    torch.testing.assert_close(ff(x), 1.5 * x, atol=1e-5, rtol=1e-5)


def test_condition_fusion_modulates_the_condition_by_the_mask_features():
    fusion = ConditionFusion(channels=4, fft_size=8)
    torch.manual_seed(0)
    with torch.no_grad():
        fusion.ff_parser.delta.normal_(0, 0.3)
        fusion.norm_cond.norm.weight.normal_(1, 0.2)
        fusion.norm_mask.norm.bias.normal_(0, 0.2)
    cond, mask_feat = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    out = fusion(cond, mask_feat)
    # Eq. 4 on the condition: A = (LN(m_I) ⊙ LN(FF(m_x))) ⊙ m_I, and the stream goes on as m_I + A.
    ln = lambda x, norm: torch.nn.functional.group_norm(x, 1, norm.weight, norm.bias, 1e-5)  # noqa: E731
    affine = ln(cond, fusion.norm_cond.norm) * ln(fusion.ff_parser(mask_feat), fusion.norm_mask.norm)
    torch.testing.assert_close(out, cond + affine * cond, atol=1e-5, rtol=1e-5)
    # LN normalises each sample over channels and pixels: scaling the mask features is invisible.
    torch.testing.assert_close(fusion(cond, 3.0 * mask_feat), out, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(fusion(cond, torch.randn_like(mask_feat)), out)
    torch.testing.assert_close(fusion(torch.zeros_like(cond), mask_feat), torch.zeros_like(cond))


def _condition_features(net: MedSegDiff, x_t, t, image) -> dict[str, Tensor]:
    """Outputs of the condition encoder's blocks (and downsamplers) in one forward pass."""
    feats: dict[str, Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: feats.__setitem__(name, out))
             for name, m in [*((f"enc{k}", blocks[-1]) for k, blocks in enumerate(net.cond_enc)),
                             *((f"down{k}", d) for k, d in enumerate(net.cond_down))]]
    try:
        net(x_t, t, image)
    finally:
        for hk in hooks:
            hk.remove()
    return feats


def test_condition_stream_depends_on_x_t_through_the_dynamic_encoding():
    net = randomise(tiny_net(channel_mult=(1, 2, 2), dce_levels=[0, 1]))
    x, image, t = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16), torch.tensor([0.3, 0.7])
    a, b = _condition_features(net, x, t, image), _condition_features(net, torch.randn_like(x), t, image)
    assert set(a) == {"enc0", "enc1", "enc2", "down0", "down1"}
    # The first block reads the image only; after the first modulation everything depends on x_t.
    torch.testing.assert_close(a["enc0"], b["enc0"])
    for name in ("down0", "enc1", "down1", "enc2"):
        assert not torch.allclose(a[name], b[name], atol=1e-4), name
    # Same x_t, same condition features (the dependence is on x_t, not on chance).
    for name, value in _condition_features(net, x, t, image).items():
        torch.testing.assert_close(value, a[name])
    # Without dynamic conditional encoding the condition encoder never sees x_t.
    plain = randomise(tiny_net(channel_mult=(1, 2, 2), dce_levels=[]))
    a, b = _condition_features(plain, x, t, image), _condition_features(plain, torch.randn_like(x), t, image)
    for name in a:
        torch.testing.assert_close(a[name], b[name])
    # Only the levels asked for are modulated: level 2 alone leaves levels 0-1 independent of x_t.
    late = randomise(tiny_net(channel_mult=(1, 2, 2), dce_levels=[2]))
    a, b = _condition_features(late, x, t, image), _condition_features(late, torch.randn_like(x), t, image)
    for name in a:
        torch.testing.assert_close(a[name], b[name])
    assert set(late.fusion) == {"2"}


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


def test_bce_on_x0_is_the_cross_entropy_of_the_x0_prediction():
    """With x0-prediction the BCE part is the closed-form cross-entropy of (out + 1) / 2
    (clamped) against the mask, and the total adds it with its weight."""
    net = PixelNet()
    method = Diffusion(prediction="x0", bce_weight=0.5)
    image, mask = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.7).float()
    torch.manual_seed(3)
    out = method.loss(net, image, mask)
    assert set(out) == {"loss", "mse", "bce"}
    torch.manual_seed(3)  # the same step and noise, to rebuild the network's output
    step = torch.randint(0, method.timesteps, (2,))
    eps = torch.randn_like(mask)
    x_t = method.schedule.q_sample(2 * mask - 1, step, eps)
    p = ((net(x_t, method.schedule.time(step), image) + 1) / 2).clamp(1e-4, 1 - 1e-4)
    bce = -(mask * p.log() + (1 - mask) * (1 - p).log()).mean()
    torch.testing.assert_close(out["bce"], bce.detach())
    torch.testing.assert_close(out["loss"], out["mse"] + 0.5 * out["bce"])
    with pytest.raises(ValueError, match="bce_weight"):
        Diffusion(bce_weight=-1.0)


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
    net, method = PixelNet(), Diffusion(prediction=prediction, dice_weight=1.0, bce_weight=1.0)
    image, mask = torch.randn(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.8).float()
    valid = torch.ones(2, 1, 16, 16)
    valid[..., 8:] = 0
    other = mask.clone()
    other[..., 8:] = 1 - other[..., 8:]  # change the mask only where it does not count

    def loss(m, v):
        torch.manual_seed(5)  # same steps and noise
        return method.loss(net, image, m, v)

    a, b = loss(mask, valid), loss(other, valid)
    for key in ("mse", "dice", "bce"):
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
