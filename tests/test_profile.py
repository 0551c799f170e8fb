"""`python -m segflow.bench.profile`: one profiled training step of a real preset at a tiny
size, its operators grouped by category; checks the structure, never the speed."""

from __future__ import annotations

import json

from segflow.bench.profile import main
from segflow.bench.profiling import category


def test_operators_fall_into_their_categories():
    assert category("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert category("aten::_efficient_attention_backward") == "attention"
    assert category("aten::native_group_norm_backward") == "norms"
    assert category("aten::convolution_backward") == "convolutions"
    assert category("aten::addmm") == "matmuls"
    assert category("aten::mul_", "optimizer") == "optimiser"
    assert category("aten::copy_", "data") == "data"
    assert category("aten::silu", "forward") == "elementwise & other"


def test_profile_of_a_flow_step_with_attention(tmp_path, capsys):
    out = tmp_path / "prof"
    rc = main(["model=flow_small", "model.net.model_channels=8", "model.net.channel_mult=[1,2]",
               "model.net.attn_resolutions=[16]", "model.net.image_size=32",
               "--device", "cpu", "--size", "32", "--batch", "1", "--steps", "1", "--out", str(out)])
    assert rc == 0
    prof = json.loads((out / "profile.json").read_text())
    cats = prof["categories"]
    for cat in ("attention", "convolutions", "norms", "optimiser", "data"):
        assert cats[cat]["calls"] >= 1, (cat, cats)
    assert cats["convolutions"]["cpu_ms"] > 0 and cats["attention"]["cpu_ms"] > 0
    assert abs(sum(c["share"] for c in cats.values()) - 1) < 1e-6
    assert set(prof["regions"]) == {"data", "forward", "backward", "optimizer"}
    md = (out / "profile.md").read_text()
    assert "| attention |" in md and "| optimizer |" in md and md in capsys.readouterr().out


def test_an_unknown_preset_is_one_clear_line(tmp_path, capsys):
    assert main(["model=nosuchpreset", "--device", "cpu", "--out", str(tmp_path)]) == 2
    out = capsys.readouterr().err
    assert "nosuchpreset" in out and "Traceback" not in out
