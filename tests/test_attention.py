"""AttentionBlock: q, k, v reach scaled_dot_product_attention as contiguous
(B, heads, N, d) tensors (what the fused kernels take), with the same output as the
channels-first formulation (1x1 Conv1d projections over (B, C, N))."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segflow.networks import layers
from segflow.networks.layers import AttentionBlock


def reference_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The channels-first formulation: Conv1d projections on (B, C, N), q, k, v as
    (B, heads, N, d) views with a strided last dimension."""
    b, c, h, w = x.shape
    qkv = block.qkv(block.norm(x).reshape(b, c, h * w))
    q, k, v = qkv.reshape(b, 3, block.heads, c // block.heads, h * w).transpose(-1, -2).unbind(1)
    d = q.shape[-1]
    scores = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)  # explicit N x N
    out = (scores @ v).transpose(-1, -2).reshape(b, c, h * w)
    return x + block.proj(out).reshape(b, c, h, w)


def randomised(channels: int, heads: int) -> AttentionBlock:
    block = AttentionBlock(channels, heads)
    with torch.no_grad():  # the projection starts at zero: give it weights to compare
        for p in block.parameters():
            p.normal_(0, 0.3)
    return block.eval()


@pytest.mark.parametrize(("b", "c", "heads", "h", "w"),
                         [(2, 8, 1, 4, 4), (1, 16, 4, 6, 5), (3, 64, 2, 8, 8), (2, 32, 8, 3, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_output_unchanged_by_token_layout(b, c, heads, h, w, channels_last):
    torch.manual_seed(0)
    block = randomised(c, heads)
    x = torch.randn(b, c, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got, want = block(x), reference_attention(block, x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_attention_float32_gradients_match_reference():
    torch.manual_seed(1)
    block = AttentionBlock(16, 4)
    with torch.no_grad():
        block.proj.weight.normal_(0, 0.3)
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    block(x).square().sum().backward()
    got = x.grad.clone()
    x.grad = None
    reference_attention(block, x).square().sum().backward()
    torch.testing.assert_close(got, x.grad, rtol=1e-5, atol=1e-5)


def test_sdpa_gets_contiguous_heads_first_tensors(monkeypatch):
    seen, sdpa = [], F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append([(t.shape, t.is_contiguous()) for t in (q, k, v)])
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    block = AttentionBlock(32, 4)
    for fmt in (torch.contiguous_format, torch.channels_last):
        block(torch.randn(2, 32, 6, 6).contiguous(memory_format=fmt))
    assert seen and all(s == (torch.Size([2, 4, 36, 8]), True) for call in seen for s in call)


def test_channels_last_input_gives_channels_last_output():
    block = randomised(16, 2)
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    assert block(x).is_contiguous(memory_format=torch.channels_last)


def test_old_checkpoints_load_into_the_block():
    """The projections keep their Conv1d parameters (names and shapes)."""
    state = AttentionBlock(16, 2).state_dict()
    assert state["qkv.weight"].shape == (48, 16, 1) and state["proj.weight"].shape == (16, 16, 1)
    AttentionBlock(16, 2).load_state_dict(state)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("channels", "heads"), [(128, 2), (256, 4), (512, 4)])
def test_attention_runs_on_fused_cuda_kernels(channels, heads):
    """The 80-px level of the full presets (N = 6,400 tokens) in bf16, forward and backward,
    with the unfused fallback refused: a layout the fused kernels do not take raises."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    block = AttentionBlock(channels, heads).cuda()
    x = torch.randn(4, channels, 80, 80, device="cuda", requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), \
            torch.autocast("cuda", dtype=torch.bfloat16):
        block(x.contiguous(memory_format=torch.channels_last)).float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
