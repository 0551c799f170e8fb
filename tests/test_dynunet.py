"""model=dynunet: nnU-Net's network (MONAI's DynUNet) as a supervised baseline."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from segflow.infra.errors import ConfigError

from conftest import TINY, run_dirs, run_entry


def test_without_monai_dynunet_is_one_sentence(monkeypatch):
    from segflow.networks import DynUNet

    monkeypatch.setitem(sys.modules, "monai", None)  # import monai raises ImportError
    monkeypatch.delitem(sys.modules, "monai.networks.nets", raising=False)
    monkeypatch.setitem(sys.modules, "monai.networks.nets", None)
    with pytest.raises(ConfigError, match=r"model=dynunet needs MONAI; install it with pip install 'segflow\[monai\]'"):
        DynUNet()


def test_stages_follow_nnunets_plan_for_the_crop():
    pytest.importorskip("monai")
    from segflow.networks import DynUNet

    net = DynUNet(image_size=64, base_channels=4, max_channels=16, min_size=4)
    assert net.size_multiple == 16  # 64 -> 32 -> 16 -> 8 -> 4: four stride-2 stages
    assert net(torch.randn(2, 1, 64, 64)).shape == (2, 1, 64, 64)
    with pytest.raises(ConfigError, match="too small for DynUNet"):
        DynUNet(image_size=6, min_size=4)


def test_dynunet_trains_at_toy_size(workdir):
    pytest.importorskip("monai")
    proc = run_entry("segflow.train", ["model=dynunet", *TINY, "debug=default"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(workdir)
    record = json.loads((run / "metrics.json").read_text())
    assert record["model"] == "dynunet" and 0.0 <= record["test"]["dice"] <= 1.0
