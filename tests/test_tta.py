"""Test-time augmentation: the flips / quarter turns are undone exactly, an equivariant
network gains nothing from them, a position-dependent one is averaged, and each pass is
charged as a network evaluation."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from segflow.inference.window import dihedral, dihedral_inverse, predict_image
from segflow.methods import Supervised
from segflow.networks.base import SegNet


class Pixelwise(SegNet):
    """A 1×1 convolution: commutes with every flip and rotation."""

    def __init__(self):
        super().__init__()
        self.in_channels, self.out_channels = 1, 1
        self.conv = nn.Conv2d(1, 1, 1)
        nn.init.constant_(self.conv.weight, 3.0)
        nn.init.constant_(self.conv.bias, -1.0)

    def forward(self, image: Tensor) -> Tensor:
        return self.conv(image)


class Ramp(SegNet):
    """Logit = column index − centre: depends on where a pixel is, not on the image."""

    in_channels, out_channels = 1, 1

    def forward(self, image: Tensor) -> Tensor:
        w = image.shape[-1]
        ramp = torch.arange(w, dtype=image.dtype) - (w - 1) / 2
        return ramp.expand_as(image).clone()


def test_every_transform_is_undone_and_the_eight_are_distinct():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    seen = set()
    for k in range(8):
        y = dihedral(x, k)
        assert torch.equal(dihedral_inverse(y, k), x)
        seen.add(tuple(y.flatten().tolist()))
    assert len(seen) == 8
    rect = torch.randn(1, 1, 3, 5)  # quarter turns swap the sides and back
    for k in range(8):
        assert torch.equal(dihedral_inverse(dihedral(rect, k), k), rect)


@pytest.mark.parametrize("passes", [2, 4, 8])
def test_tta_leaves_an_equivariant_net_unchanged_on_a_symmetric_image(passes):
    # A symmetric image (invariant to all eight transforms) and a non-square one.
    yy, xx = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    symmetric = (-((yy - 2.5) ** 2 + (xx - 2.5) ** 2) / 8).exp().view(1, 1, 6, 6)
    for image in (symmetric, torch.randn(2, 1, 5, 7, generator=torch.Generator().manual_seed(0))):
        net, base = Pixelwise(), Supervised()
        single = predict_image(base, net, image)
        tta = predict_image(base.with_settings(tta=passes), net, image)
        assert tta.probs.shape == single.probs.shape == image.shape
        torch.testing.assert_close(tta.probs, single.probs, atol=1e-6, rtol=0)
        assert float(tta.uncertainty.abs().max()) < 1e-6
        assert tta.samples.shape[1] == passes and tta.nfe == 1  # n passes of 1 evaluation
    # On the symmetric image every member is the same map.
    members = predict_image(Supervised().with_settings(tta=8), Pixelwise(), symmetric).samples
    assert torch.allclose(members, members[:, :1].expand_as(members), atol=1e-6)


def test_tta_averages_a_position_dependent_net():
    image = torch.zeros(1, 1, 4, 6)
    single = predict_image(Supervised(), Ramp(), image).probs
    flip = predict_image(Supervised().with_settings(tta=2), Ramp(), image)
    expected = (single + single.flip(-1)) / 2  # the mirrored ramp undone = the ramp reversed
    torch.testing.assert_close(flip.probs, expected)
    assert torch.allclose(flip.probs, torch.full_like(flip.probs, 0.5), atol=1e-6)
    assert float(flip.uncertainty.max()) > 0.1


def test_tta_is_a_checked_sampling_setting():
    assert "tta" in Supervised.sampling_keys
    assert Supervised().sampling_settings() == {}  # the single pass is not named
    assert Supervised().with_settings(tta=4).sampling_settings() == {"tta": 4}
    with pytest.raises(ValueError, match="tta"):
        Supervised().with_settings(tta=3)


def test_small_component_removal_drops_islands_below_the_size_and_keeps_the_rest():
    """CS-Net + small-component removal (the control for β0 claims): islands smaller than
    ``min_component`` pixels go to probability 0, larger vessels stay, 0 changes nothing."""
    import torch

    from segflow.inference.window import predict_image
    from segflow.methods import Supervised

    class Fixed(torch.nn.Module):
        in_channels, out_channels, size_multiple = 1, 1, 1

        def forward(self, image):
            logits = torch.full_like(image, -10.0)
            logits[..., 2:30, 10:12] = 10.0   # a vessel of 56 px
            logits[..., 5:7, 20:22] = 10.0    # an island of 4 px
            logits[..., 20, 25] = 10.0        # an island of 1 px
            return logits

    image = torch.zeros(1, 1, 32, 32)
    plain = predict_image(Supervised(), Fixed(), image)
    assert int((plain.probs > 0.5).sum()) == 61
    cleaned = predict_image(Supervised().with_settings(min_component=5), Fixed(), image)
    assert int((cleaned.probs > 0.5).sum()) == 56 and cleaned.probs[0, 0, 5, 20] == 0
    small = predict_image(Supervised().with_settings(min_component=2), Fixed(), image)
    assert int((small.probs > 0.5).sum()) == 60
    assert Supervised().with_settings(min_component=5).sampling_settings() == {"min_component": 5}
    assert Supervised().sampling_settings() == {}
