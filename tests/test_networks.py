"""Network shapes, gradients and paper-specified initial behaviour."""

import pytest
import torch

from segflow.networks import CSNet, SegNet, UNet
from segflow.networks.csnet import AffinityAttention


@pytest.mark.parametrize("cls", [UNet, CSNet])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("hw", [(32, 32), (48, 64), (64, 80)])
def test_segnet_output_matches_input_size(cls, channels, hw):
    net = cls(in_channels=channels, out_channels=1, base_channels=4)
    assert isinstance(net, SegNet)
    h, w = hw
    if h % net.size_multiple or w % net.size_multiple:
        pytest.skip("size not a multiple of the network's")
    out = net(torch.randn(2, channels, h, w))
    assert out.shape == (2, 1, h, w)


@pytest.mark.parametrize("cls", [UNet, CSNet])
def test_every_parameter_gets_a_gradient(cls):
    net = cls(in_channels=1, base_channels=4)
    with torch.no_grad():  # attention scales start at 0 (identity); move them off it
        for name, p in net.named_parameters():
            if name.endswith(("gamma", "beta")) and "attention" in name:
                p.fill_(0.1)
    net(torch.randn(2, 1, 32, 32)).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_csnet_attention_starts_as_identity_and_learns():
    att = AffinityAttention(8)
    x = torch.randn(2, 8, 6, 6)
    assert torch.allclose(att(x), x)
    att(x).sum().backward()
    assert att.spatial.gamma.grad is not None and att.channel.beta.grad is not None
    with torch.no_grad():
        att.spatial.gamma.fill_(1.0)
    assert not torch.allclose(att(x), x)


def test_unet_rejects_too_shallow():
    with pytest.raises(ValueError, match="depth"):
        UNet(depth=1)


def test_shared_blocks_keep_each_networks_parameterisation():
    """ADM and MedSegDiff build from the same blocks (segflow.networks.layers) but keep their
    own GroupNorm rule (48 channels: 16 vs 24 groups) and head counts."""
    import torch.nn as nn

    from segflow.networks import ADMConcatUNet, MedSegDiff
    from segflow.networks.layers import AttentionBlock, ResBlock, norm_groups

    assert norm_groups(48, "gcd") == 16 and norm_groups(48, "divisor") == 24
    assert norm_groups(64, "gcd") == norm_groups(64, "divisor") == 32
    with pytest.raises(ValueError, match="GroupNorm rule"):
        norm_groups(48, "largest")
    adm = ADMConcatUNet(model_channels=48, channel_mult=(1,), num_blocks=1, image_size=16,
                        num_head_channels=24)
    msd = MedSegDiff(base_channels=48, channel_mult=(1,), fft_size=16)
    for net, groups in ((adm, 16), (msd, 24)):
        assert any(isinstance(m, ResBlock) for m in net.modules())
        # the blocks' GroupNorms (MedSegDiff's LayerNorm2d of Eq. 4 is a one-group norm inside)
        blocks = [m for m in net.modules() if isinstance(m, ResBlock)]
        widths48 = [m for b in blocks for m in b.modules()
                    if isinstance(m, nn.GroupNorm) and m.num_channels == 48]
        assert widths48 and all(m.num_groups == groups for m in widths48)
    assert [m.heads for m in adm.modules() if isinstance(m, AttentionBlock)] == [2]
    assert [m.heads for m in msd.modules() if isinstance(m, AttentionBlock)] == [4]


def test_every_network_runs_under_bf16_autocast():
    """trainer.precision=bf16-mixed: every network's forward and backward under bfloat16
    autocast (CPU here; the same autocast rules as on a GPU). MedSegDiff at a size other
    than its FF-Parser's stored one, so the frequency map is resized under autocast."""
    from segflow.networks import ADMConcatUNet, MedSegDiff

    x, t = torch.randn(2, 1, 48, 48), torch.rand(2)
    nets = {
        "unet": (UNet(in_channels=1, base_channels=4), lambda n: n(x)),
        "csnet": (CSNet(in_channels=1, base_channels=4), lambda n: n(x)),
        "medsegdiff": (MedSegDiff(in_channels=1, base_channels=8, channel_mult=[1, 2],
                                  attention=True, fft_size=32), lambda n: n(x, t, x)),
        "flow": (ADMConcatUNet(in_channels=1, model_channels=8, channel_mult=[1, 2],
                               num_blocks=1, attn_resolutions=[24], image_size=48,
                               num_head_channels=8), lambda n: n(x, t, x)),
    }
    for name, (net, call) in nets.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = call(net)
        assert out.shape == (2, 1, 48, 48) and torch.isfinite(out.float()).all(), name
        out.float().square().mean().backward()
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
