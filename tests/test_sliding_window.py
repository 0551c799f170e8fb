"""Sliding-window inference: coverage, Gaussian blending, one shared noise field for
generative methods, and the SegModule switch by image size."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from segflow.engine.module import SegModule
from segflow.inference.window import (
    check_inference,
    gaussian_weight,
    predict_image,
    predict_sliding,
    predict_whole,
    tile_starts,
)
from segflow.methods import Supervised
from segflow.methods.base import GenerativeMethod
from segflow.networks import CSNet
from segflow.networks.base import Denoiser, SegNet


class PointNet(SegNet):
    """Per-pixel network (1x1 conv): its output cannot depend on the tiling."""

    in_channels, out_channels, size_multiple = 1, 1, 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, image: Tensor) -> Tensor:
        return self.conv(image)


class PointDenoiser(Denoiser):
    in_channels, out_channels, size_multiple = 1, 1, 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 1)

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> Tensor:
        return self.conv(torch.cat([x_t, image], 1))


class OneStep(GenerativeMethod):
    """A one-step 'sampler' whose output depends on the starting noise pixel by pixel."""

    def loss(self, net, image, mask, valid=None):  # pragma: no cover - not trained here
        raise NotImplementedError

    def sample(self, net, image, noise, generator=None, step_noise=None):
        t = torch.zeros(image.shape[0])
        return torch.tanh(net(noise, t, image)), 1


def test_tile_starts_cover_the_axis_and_end_at_the_border():
    for length, tile, stride in [(100, 32, 24), (64, 32, 32), (33, 32, 8), (32, 32, 16)]:
        starts = tile_starts(length, tile, stride)
        covered = torch.zeros(length, dtype=torch.bool)
        for s in starts:
            covered[s: s + tile] = True
        assert covered.all() and starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= stride for a, b in zip(starts, starts[1:], strict=False))


def test_gaussian_weight_peaks_in_the_centre_and_stays_positive():
    w = gaussian_weight(32)
    assert w.shape == (32, 32) and float(w.min()) > 0
    assert float(w[15:17, 15:17].min()) > 0.99 and float(w[0, 0]) < 0.01
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.T)


def test_sliding_equals_whole_for_a_per_pixel_network():
    torch.manual_seed(0)
    net, method = PointNet().eval(), Supervised()
    image = torch.randn(2, 1, 70, 90)  # not a multiple of the tile or of the network
    whole = predict_whole(method, net, image).probs
    tiled = predict_sliding(method, net, image, tile_size=32, overlap=0.5, tile_batch=3).probs
    assert tiled.shape == whole.shape == (2, 1, 70, 90)
    assert torch.allclose(tiled, whole, atol=1e-6)
    # An image smaller than one tile is padded, predicted and cropped back.
    small = torch.randn(1, 1, 20, 28)
    assert torch.allclose(predict_sliding(method, net, small, 32).probs,
                          predict_whole(method, net, small).probs, atol=1e-6)


def test_generative_tiles_share_one_noise_field():
    torch.manual_seed(0)
    net, method = PointDenoiser().eval(), OneStep(n_samples=3)
    image = torch.randn(2, 1, 64, 80)
    tiled = predict_sliding(method, net, image, tile_size=32, overlap=0.25,
                            generator=torch.Generator().manual_seed(7))
    # The whole image from the same generator draws the same field: identical result,
    # member by member — tiles followed the trajectory of their crop of that field.
    whole = method.predict(net, image, generator=torch.Generator().manual_seed(7))
    assert tiled.samples.shape == whole.samples.shape == (2, 3, 1, 64, 80)
    assert torch.allclose(tiled.samples, whole.samples, atol=1e-5)
    assert torch.allclose(tiled.probs, whole.probs, atol=1e-5)
    assert tiled.uncertainty is not None and tiled.uncertainty.shape == (2, 1, 64, 80)


def test_predict_image_switches_on_size_and_segmodule_uses_it():
    torch.manual_seed(0)
    net = CSNet(1, 1, base_channels=4).eval()
    method = Supervised()
    image = torch.randn(1, 1, 96, 80)
    whole = predict_whole(method, net, image).probs
    tiled = predict_sliding(method, net, image, 48, 0.25).probs
    assert not torch.allclose(whole, tiled, atol=1e-4)  # a context-using net does differ
    settings = {"tile_size": 48, "overlap": 0.25, "max_whole_size": 64}
    assert torch.equal(predict_image(method, net, image, **settings).probs, tiled)
    assert torch.equal(predict_image(method, net, image, **{**settings, "max_whole_size": 96}
                                     ).probs, whole)
    module = SegModule(net, method, inference=settings).eval()
    with torch.no_grad():
        assert torch.equal(module(image).probs, tiled)
    assert module.hparams.inference == settings  # stored as plain values in checkpoints
    with torch.no_grad():
        assert torch.equal(SegModule(net, method).eval()(image).probs, whole)


def test_bad_inference_settings_are_named():
    with pytest.raises(ValueError, match="tile_sise"):
        check_inference({"tile_sise": 64})
    with pytest.raises(ValueError, match="tile_size"):
        check_inference({"max_whole_size": 64})
    with pytest.raises(ValueError, match="overlap"):
        check_inference({"tile_size": 64, "overlap": 1.0})


def test_train_config_hands_the_datasets_inference_settings_to_the_model(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from conftest import CONF

    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(tmp_path))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=drive_csnet_cpu",
                                          "data.inference.max_whole_size=512"])
    GlobalHydra.instance().clear()
    # The experiment (composed after train.yaml's own keys) wins over them.
    assert cfg.experiment_name == "drive_csnet_cpu" and cfg.model.name == "csnet"
    assert cfg.data.name == "drive" and cfg.data.gray_from == "green"
    assert OmegaConf.to_container(cfg.model.inference, resolve=True) == {
        "tile_size": 128, "overlap": 0.25, "max_whole_size": 512}
    module = instantiate(cfg.model)
    assert module.inference == {"tile_size": 128, "overlap": 0.25, "max_whole_size": 512}


@pytest.mark.parametrize(("sampler", "eta"), [("ddpm", 0.0), ("ddim", 0.5), ("dpm_solver", 0.0)])
def test_stochastic_samplers_tiled_equal_whole_image(sampler, eta):
    """Every step's noise comes from one whole-image field: with a per-pixel denoiser the
    tiled prediction is the whole-image one, member by member, and the generator is left
    where the whole-image prediction leaves it."""
    from segflow.methods import Diffusion

    torch.manual_seed(0)
    net = CountingPointDenoiser().eval()
    method = Diffusion(timesteps=20, sampler=sampler, steps=5, eta=eta, n_samples=2)
    assert method.stochastic_steps() == (sampler != "dpm_solver")
    image = torch.randn(2, 1, 64, 80)
    g_tiled, g_whole = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    tiled = predict_sliding(method, net, image, tile_size=32, overlap=0.25, tile_batch=4,
                            generator=g_tiled)
    calls = net.calls
    whole = method.predict(net, image, generator=g_whole)
    assert tiled.samples.shape == whole.samples.shape == (2, 2, 1, 64, 80)
    torch.testing.assert_close(tiled.samples, whole.samples, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiled.probs, whole.probs, atol=1e-5, rtol=1e-5)
    assert whole.uncertainty.max() > 0.05  # the members do differ: the noise matters
    assert torch.equal(torch.rand(4, generator=g_tiled), torch.rand(4, generator=g_whole))
    # NFE counts every tile batch: 3 x 3 tiles in batches of 4 -> 3 batches x 5 steps.
    assert tiled.nfe == calls == 15 and whole.nfe == 5


def test_stochastic_tiles_agree_without_a_generator():
    """Without a generator the per-step fields come from one seed drawn from the global
    RNG: the result does not depend on how the tiles are grouped into batches (it would
    if each batch drew its own step noise)."""
    from segflow.methods import Diffusion

    net, method = CountingPointDenoiser().eval(), Diffusion(timesteps=20, sampler="ddpm", steps=4)
    image = torch.randn(1, 1, 48, 48)
    torch.manual_seed(5)
    one_by_one = predict_sliding(method, net, image, tile_size=32, overlap=0.5, tile_batch=1)
    torch.manual_seed(5)
    together = predict_sliding(method, net, image, tile_size=32, overlap=0.5, tile_batch=9)
    torch.testing.assert_close(one_by_one.probs, together.probs, atol=1e-5, rtol=1e-5)
    assert one_by_one.nfe == 4 * 4 and together.nfe == 4  # 2 x 2 tiles, 4 steps


class CountingPointDenoiser(PointDenoiser):
    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[0.5]], [[1.5]]]]))
            self.conv.bias.fill_(0.1)
        self.calls = 0

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> Tensor:
        self.calls += 1
        return super().forward(x_t, t, image)
