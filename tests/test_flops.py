"""Counted FLOPs per pass and per image against closed forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segflow.metrics.flops import forward_flops, image_flops
from segflow.networks.layers import AttentionBlock


def conv_flops(c_in: int, c_out: int, k: int, h: int, w: int, groups: int = 1) -> int:
    """2 · C_in · C_out · k² · H · W / groups (stride 1, 'same' padding)."""
    return 2 * c_in * c_out * k * k * h * w // groups


@pytest.mark.parametrize("bias", [False, True])
def test_a_conv_layer_matches_the_closed_form(bias):
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=bias)
    assert forward_flops(conv, (1, 3, 32, 48)) == conv_flops(3, 16, 3, 32, 48)  # bias not counted
    # Per image: the same for a batch of 4; the whole batch is 4 times as much.
    assert forward_flops(conv, (4, 3, 32, 48)) == conv_flops(3, 16, 3, 32, 48)
    assert forward_flops(conv, (4, 3, 32, 48), per_image=False) == 4 * conv_flops(3, 16, 3, 32, 48)
    strided = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
    assert forward_flops(strided, (1, 3, 32, 48)) == conv_flops(3, 16, 3, 16, 24)
    grouped = nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False)
    assert forward_flops(grouped, (1, 8, 10, 10)) == conv_flops(8, 16, 3, 10, 10, groups=4)


def test_a_tiny_composite_is_the_sum_of_its_products():
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2),
                        nn.ConvTranspose2d(8, 4, 2, stride=2), nn.Conv2d(4, 1, 1))
    h = w = 16
    expected = (conv_flops(1, 8, 3, h, w) + conv_flops(8, 8, 3, h, w)
                + 2 * 8 * 4 * 2 * 2 * (h // 2) * (w // 2)      # transposed: by its input size
                + conv_flops(4, 1, 1, h, w))
    net.train()
    before = net[1].running_mean.clone()
    assert forward_flops(net, (2, 1, h, w)) == expected
    assert net.training                                        # mode restored
    assert torch.equal(net[1].running_mean, before)            # counted in eval mode


def test_attention_is_counted_on_every_backend():
    """q k v projections 2·N·C·3C, attention 4·N²·C (two products over heads · d = C),
    output projection 2·N·C²; norms and softmax are not counted. Under the fused CPU
    kernel the attention itself would count 0."""
    c, h, w = 16, 8, 8
    n = h * w
    block = AttentionBlock(c, heads=2)
    expected = 2 * n * c * 3 * c + 4 * n * n * c + 2 * n * c * c
    assert forward_flops(block, (1, c, h, w)) == expected


class _Denoiser(nn.Module):
    """forward(x_t, t, image): the noisy mask and the image concatenated, t added."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(1, 4, bias=False)
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.out = nn.Conv2d(4, 1, 1, bias=False)

    def forward(self, x_t, t, image):
        feat = self.conv(torch.cat([x_t, image], dim=1)) + self.embed(t[:, None])[:, :, None, None]
        return self.out(feat)


def test_a_denoisers_inputs_as_shapes_or_tensors():
    net = _Denoiser()
    expected = 2 * 1 * 4 + conv_flops(2, 4, 3, 12, 12) + conv_flops(4, 1, 1, 12, 12)
    assert forward_flops(net, (3, 1, 12, 12), (3,), (3, 1, 12, 12)) == expected
    x = torch.randn(3, 1, 12, 12)
    assert forward_flops(net, x, torch.rand(3), x) == expected
    with pytest.raises(ValueError, match="inputs"):
        forward_flops(net)
    with pytest.raises(ValueError, match="positive"):
        forward_flops(nn.Conv2d(1, 1, 1), (1, 1, 0, 4))


def test_passes_multiply_and_the_prior_is_counted_once_per_image():
    p, q = 2.69e9, 1.56e9  # a flow pass and its supervised prior's pass
    assert image_flops(p) == p
    assert image_flops(p, nfe=4) == 4 * p                       # 1 step × 4 members
    assert image_flops(q, tta=4) == 4 * q                       # TTA 4
    # Refinement flow, 1 step × 4 members: four flow passes, one prior pass — not 4·(p + q).
    assert image_flops(p, nfe=4, prior_flops=q) == pytest.approx(4 * p + q)
    # Sliding window: every pass (the prior's too) once per tile.
    assert image_flops(p, nfe=2, tiles=9, prior_flops=q) == pytest.approx(9 * (2 * p + q))
    # A prior re-run for every TTA view.
    assert image_flops(p, nfe=1, tta=2, prior_flops=q, prior_passes=2) == pytest.approx(2 * (p + q))
    with pytest.raises(ValueError, match="nfe"):
        image_flops(p, nfe=-1)


def test_training_step_flops_count_forward_and_backward_and_leave_the_net_untouched():
    """One conv on the image: the forward and the weight gradient cost the same (the image
    needs no gradient), so a training step counts twice the forward; the net's weights and
    gradients are untouched (the count runs on copies)."""
    from segflow.methods import Supervised
    from segflow.metrics.flops import forward_flops, training_step_flops
    from segflow.networks.base import SegNet

    class OneConv(SegNet):
        def __init__(self):
            super().__init__()
            self.in_channels, self.out_channels = 1, 1
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
            self.bn = torch.nn.BatchNorm2d(1)

        def forward(self, image):
            return self.bn(self.conv(image))

    net = OneConv()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    step = training_step_flops(Supervised(), net, batch=3, channels=1, size=16)
    assert step == 2 * forward_flops(net, (3, 1, 16, 16), per_image=False) == 2 * 3 * 2 * 9 * 256
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
