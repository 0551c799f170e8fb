"""The ADM concat U-Net: shapes at any valid size, time dependence, gradients, attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segflow.networks import ADMConcatUNet
from segflow.networks.layers import AttentionBlock, ResBlock, timestep_embedding


def tiny(**kw) -> ADMConcatUNet:
    cfg = dict(in_channels=1, out_channels=1, model_channels=8, channel_mult=(1, 2, 2),
               num_blocks=1, attn_resolutions=(16,), image_size=32, num_head_channels=8)
    return ADMConcatUNet(**{**cfg, **kw})


def randomize_zero_layers(net: nn.Module) -> None:
    """ADM zero-initialises the output and residual-branch convs; give them weights so the
    output (and the gradient to every layer) is not identically zero."""
    torch.manual_seed(0)
    for p in net.parameters():
        if not p.detach().any():
            nn.init.normal_(p, std=0.05)


@pytest.mark.parametrize(("h", "w"), [(32, 32), (48, 64), (16, 40), (96, 24)])
def test_output_has_the_mask_shape_at_any_valid_size(h, w):
    net = tiny(in_channels=3, out_channels=2).eval()
    randomize_zero_layers(net)
    x_t, image = torch.randn(2, 2, h, w), torch.randn(2, 3, h, w)
    out = net(x_t, torch.rand(2), image)
    assert out.shape == x_t.shape and torch.isfinite(out).all()
    assert net.size_multiple == 4


def test_zero_initialised_output_and_clear_errors():
    net = tiny()
    out = net(torch.randn(1, 1, 32, 32), torch.rand(1), torch.randn(1, 1, 32, 32))
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output layer
    with pytest.raises(ValueError, match="divisible by 4, got 30x32"):
        net(torch.randn(1, 1, 30, 32), torch.rand(1), torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match=r"attn_resolutions \[20\].*levels are \[32, 16, 8\]"):
        tiny(attn_resolutions=(16, 20))


def test_output_depends_on_t_and_on_the_image():
    net = tiny().eval()
    randomize_zero_layers(net)
    x_t, image = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    a = net(x_t, torch.tensor([0.1, 0.1]), image)
    b = net(x_t, torch.tensor([0.9, 0.9]), image)
    c = net(x_t, torch.tensor([0.1, 0.1]), torch.randn(2, 1, 32, 32))
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean()
    assert (a - c).abs().mean() > 1e-3 * a.abs().mean()
    # Per-sample times: changing the second sample's t leaves the first untouched.
    d = net(x_t, torch.tensor([0.1, 0.9]), image)
    assert torch.allclose(d[0], a[0], atol=1e-6) and torch.allclose(d[1], b[1], atol=1e-6)
    # Sinusoidal embedding: distinct times give distinct embeddings.
    emb = timestep_embedding(torch.tensor([0.0, 1.0, 500.0]), 9)
    assert emb.shape == (3, 9) and not torch.allclose(emb[1], emb[2])


def test_every_parameter_receives_a_gradient():
    net = tiny(dropout=0.1).train()
    randomize_zero_layers(net)
    out = net(torch.randn(2, 1, 32, 32), torch.rand(2), torch.randn(2, 1, 32, 32))
    out.pow(2).mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(1)
    ref = tiny()
    randomize_zero_layers(ref)
    ckpt = tiny(use_checkpoint=True)
    ckpt.load_state_dict(ref.state_dict())
    args = (torch.randn(2, 1, 32, 32), torch.rand(2), torch.randn(2, 1, 32, 32))
    for net in (ref, ckpt):
        net(*args).sum().backward()
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_structure_follows_the_configuration():
    """Attention at the configured levels (plus the middle), num_blocks per level."""
    net = tiny(channel_mult=(1, 2, 4), num_blocks=2, attn_resolutions=(16, 8), image_size=32)
    attn = [m for m in net.modules() if isinstance(m, AttentionBlock)]
    # Levels 1 and 2: 2 encoder + 3 decoder blocks each, plus the middle block.
    assert len(attn) == 2 * (2 + 3) + 1
    res = [m for m in net.modules() if isinstance(m, ResBlock)]
    # 3 levels x (2 + 3) blocks, 2 down + 2 up resampling blocks, 2 in the middle.
    assert len(res) == 3 * 5 + 4 + 2
    assert sum(m.down for m in res) == 2 and sum(m.up for m in res) == 2
    no_mid = tiny(attn_resolutions=(), mid_attention=False)
    assert not any(isinstance(m, AttentionBlock) for m in no_mid.modules())


def test_the_users_xca_configuration_builds_and_runs_on_a_small_image():
    net = ADMConcatUNet(model_channels=32, channel_mult=(1, 2, 4, 8), num_blocks=3,
                        attn_resolutions=(80, 40), image_size=320).eval()
    assert net.size_multiple == 8
    with torch.no_grad():
        out = net(torch.randn(1, 1, 48, 40), torch.rand(1), torch.randn(1, 1, 48, 40))
    assert out.shape == (1, 1, 48, 40)
