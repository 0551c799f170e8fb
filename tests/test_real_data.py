"""The shared real datasets end to end: prepare → load → a real training run (the
``segflow.train`` entry point, Hydra, Lightning), and FOV-aware metrics on DRIVE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segflow.data import SegDataModule
from segflow.metrics import VesselMetrics

from conftest import assert_learned


@pytest.mark.parametrize("kind, native, data, options, extra", [
    ("drive", "DRIVE", "drive", {}, []),
    ("dca1", "XCA_Angios80", "dca1", {}, []),
    # 304 px images above max_whole_size: validation and test run the sliding window.
    ("octa500", "OCTA-500", "octa500_3m", {"subset": "3M"},
     ["data.inference.max_whole_size=256", "data.inference.tile_size=64"]),
])
def test_prepare_load_train_step(prepared, train, kind, native, data, options, extra):
    root = prepared(kind, native, **options)
    proc, run = train(f"data={data}", f"data.root={root}", "data.image_size=64", *extra)
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["data"] == data and summary["global_step"] >= 1  # OCTA sample: 2 train images
    assert_learned(summary["test"])
    config = (run / ".hydra" / "config.yaml").read_text()
    assert f"root: {root}" in config


def test_drive_metrics_count_only_fov_pixels(prepared):
    root = prepared("drive", "DRIVE")
    dm = SegDataModule(name="drive", root=str(root), channels=1, gray_from="green",
                       num_workers=0, val_bs=2)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    fov = torch.stack([torch.from_numpy(s.fov) for s in dm.samples("test")[:2]])[:, None].float()
    assert torch.equal(batch["valid"], fov)  # the loader's `valid` is the dataset's FOV
    assert 0.6 < float(fov.mean()) < 0.8

    # A crude vessel detector: darkness of the green channel, stretched between the median
    # and the 99th percentile inside the FOV. It also fires on the black surround.
    darkness = 1 - (batch["image"] * 0.5 + 0.5)
    score = torch.empty_like(darkness)
    for i in range(darkness.shape[0]):
        inside = darkness[i][fov[i] > 0.5]
        lo, hi = torch.quantile(inside, 0.5), torch.quantile(inside, 0.99)
        score[i] = ((darkness[i] - lo) / (hi - lo)).clamp(0, 1)
    in_fov, whole = VesselMetrics(), VesselMetrics()
    in_fov.update(score, batch["mask"], batch["valid"])
    whole.update(score, batch["mask"])
    counted = float(in_fov.tp + in_fov.fp + in_fov.fn + in_fov.tn)
    assert counted == float(fov.sum()) < float(whole.tp + whole.fp + whole.fn + whole.tn)
    a, b = in_fov.compute(), whole.compute()
    # The black surround is "dark" (predicted vessel) but outside the FOV it must not count.
    assert float(a["dice"]) > float(b["dice"]) + 0.05, (a["dice"], b["dice"])
    assert float(a["specificity"]) > float(b["specificity"]) + 0.05

    # Anything predicted outside the FOV leaves the FOV metrics unchanged.
    garbage = torch.where(fov > 0.5, score, torch.rand_like(score))
    again = VesselMetrics()
    again.update(garbage, batch["mask"], batch["valid"])
    for key, value in again.compute().items():
        assert np.isclose(float(value), float(a[key]), atol=1e-6), key


def test_loader_throughput_helper_times_augmented_crops():
    from segflow.bench.loader import crops_per_second, default_augment

    aug = default_augment()
    assert aug["hflip"] == 0.5 and "noise" in aug  # conf/data/folder.yaml's augment block
    out = crops_per_second(image_size=96, crop_size=32, num_samples_per_image=2, n_images=2,
                           seconds=0.2)
    assert out["crops"] == 2 * out["items"] >= 4 and out["crops_per_s"] > 0
    assert out["augment"] == aug
