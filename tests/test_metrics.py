"""The evaluation metrics on hand-made cases, and their exact reduction across 2 DDP ranks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segflow.metrics import (
    HD95,
    BettiErrors,
    CalibrationError,
    ClDice,
    EnsembleTopologySpread,
    EvalMetrics,
    VesselMetrics,
    betti_numbers,
    cldice,
    hd95,
)


def _t(mask: np.ndarray) -> torch.Tensor:
    """(H, W) → (1, 1, H, W) float."""
    return torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]


def _ring(size: int = 20) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[4:16, 4:16] = True
    m[6:14, 6:14] = False
    return m


def test_ring_has_one_component_and_one_hole():
    assert betti_numbers(_ring()) == (1, 1)


def test_two_disjoint_lines_have_two_components_and_no_hole():
    m = np.zeros((20, 20), bool)
    m[3, 2:18] = True
    m[12, 2:18] = True
    assert betti_numbers(m) == (2, 0)


def test_connectivity_is_8_for_vessels_and_4_for_holes():
    # A diamond drawn with diagonal steps: one 8-connected curve enclosing a 4-connected hole.
    m = np.zeros((9, 9), bool)
    for i in range(4):
        m[4 - i, i + 0] = m[4 - i, 8 - i] = m[4 + i, i] = m[4 + i, 8 - i] = True
    m[0, 4] = m[8, 4] = True
    assert betti_numbers(m) == (1, 1)
    # A background region touching the border is not a hole.
    open_ring = _ring()
    open_ring[4:6, 10] = False
    assert betti_numbers(open_ring) == (1, 0)


def test_betti_errors_metric_and_fov():
    truth = _ring()
    pred = truth.copy()
    pred[0:2, 0:2] = True  # a spurious blob in the corner: β0 error 1
    m = BettiErrors()
    m.update(_t(pred), _t(truth))
    out = m.compute()
    assert float(out["betti0_error"]) == 1.0 and float(out["betti1_error"]) == 0.0
    assert m.last_per_image["betti0_pred"] == [2.0] and m.last_per_image["betti1_true"] == [1.0]
    fov = np.ones_like(truth)
    fov[0:3, 0:3] = False  # the blob is outside the field of view: no error
    m2 = BettiErrors()
    m2.update(_t(pred), _t(truth), _t(fov))
    assert float(m2.compute()["betti0_error"]) == 0.0


def _vessel() -> np.ndarray:
    m = np.zeros((32, 32), bool)
    m[14:17, 2:30] = True
    return m


def test_cldice_is_one_for_identical_masks_and_drops_when_a_vessel_is_cut():
    truth = _vessel()
    assert cldice(truth, truth) == 1.0
    cut = truth.copy()
    cut[:, 15:17] = False
    assert cldice(cut, truth) < 0.97
    metric = ClDice()
    metric.update(torch.stack([_t(truth)[0], _t(cut)[0]]), torch.stack([_t(truth)[0]] * 2))
    out = metric.compute()
    assert metric.last_per_image["cldice"][0] == 1.0
    assert float(out["cldice_per_image"]) == pytest.approx((1 + cldice(cut, truth)) / 2)
    assert float(out["cldice"]) < 1.0


def test_cldice_empty_conventions():
    empty = np.zeros((8, 8), bool)
    assert cldice(empty, empty) == 1.0
    assert cldice(empty, _vessel()[:8, :8] | True) == 0.0


@pytest.mark.parametrize("k", [1, 3, 6])
def test_hd95_of_a_square_shifted_by_k_pixels_is_k(k):
    a = np.zeros((48, 48), bool)
    a[10:30, 10:30] = True
    b = np.roll(a, k, axis=1)
    assert hd95(a, b) == pytest.approx(k)
    assert hd95(b, a) == pytest.approx(k)
    m = HD95()
    m.update(_t(a), _t(b))
    assert float(m.compute()["hd95"]) == pytest.approx(k)


def test_hd95_empty_conventions():
    a = np.zeros((30, 40), bool)
    assert hd95(a, a) == 0.0
    b = a.copy()
    b[5, 5] = True
    assert hd95(a, b) == pytest.approx(50.0)  # the image diagonal


def test_ece_of_a_perfectly_calibrated_toy_is_zero_and_of_an_overconfident_one_is_known():
    # In each bin the fraction of vessel pixels equals the predicted probability.
    probs = torch.tensor([0.25] * 4 + [0.75] * 4 + [0.0] * 3 + [1.0] * 3)
    labels = torch.tensor([1, 0, 0, 0] + [1, 1, 1, 0] + [0] * 3 + [1] * 3, dtype=torch.float32)
    m = CalibrationError(n_bins=10)
    m.update(probs.view(1, 1, 1, -1), labels.view(1, 1, 1, -1))
    assert float(m.compute()["ece"]) == pytest.approx(0.0, abs=1e-7)
    # Always 0.9 on pixels that are all background: gap 0.9 everywhere.
    m2 = CalibrationError(n_bins=10)
    m2.update(torch.full((1, 1, 4, 4), 0.9), torch.zeros(1, 1, 4, 4))
    out = m2.compute()
    assert float(out["ece"]) == pytest.approx(0.9) and float(out["mce"]) == pytest.approx(0.9)


def _exact_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def test_binned_auc_equals_exact_auc_when_scores_sit_on_the_bin_grid():
    rng = np.random.default_rng(1)
    labels = (rng.random(600) < 0.3).astype(np.int64)
    # Bin centres of a 100-bin histogram: each distinct score has its own bin, so the
    # binned AUC (ties within a bin count ½) is the exact Mann–Whitney AUC.
    scores = (np.clip(rng.normal(40 + 20 * labels, 20), 0, 99).round() + 0.5) / 100
    m = VesselMetrics(auc_bins=100)
    m.update(torch.tensor(scores).float().view(1, 1, 1, -1), torch.tensor(labels).float().view(1, 1, 1, -1))
    assert float(m.compute()["auc"]) == pytest.approx(_exact_auc(scores, labels), abs=1e-6)


def test_ensemble_topology_spread():
    line = _vessel().astype(np.float32)
    cut = line.copy()
    cut[:, 15:17] = 0  # two components
    samples = torch.from_numpy(np.stack([line, cut]))[None, :, None]  # (1, 2, 1, H, W)
    m = EnsembleTopologySpread()
    m.update(samples, _t(line))
    out = m.compute()
    assert float(out["betti0_std"]) == pytest.approx(0.5)  # β0 ∈ {1, 2}
    assert float(out["betti1_std"]) == 0.0 and float(out["cldice_std"]) > 0
    same = EnsembleTopologySpread()
    same.update(torch.from_numpy(np.stack([line, line]))[None, :, None], _t(line))
    assert all(float(v) == 0.0 for v in same.compute().values())
    single = EnsembleTopologySpread()
    single.update(torch.from_numpy(line)[None, None, None], _t(line))
    assert single.compute() == {}


def _random_batch(seed: int, n: int = 5, size: int = 24) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, 1, size, size, generator=g) < 0.3).float()
    samples = (0.6 * mask[:, None] + 0.5 * torch.rand(n, 3, 1, size, size, generator=g)).clamp(0, 1)
    valid = torch.ones(n, 1, size, size)
    valid[:, :, :2] = 0
    return {"probs": samples.mean(1), "mask": mask, "valid": valid, "samples": samples}


def test_eval_metrics_rows_and_keys():
    data = _random_batch(0, n=3)
    suite = EvalMetrics()
    rows = suite.update(data["probs"], data["mask"], data["valid"], data["samples"])
    assert len(rows) == 3
    for key in ("dice", "iou", "cldice", "betti0_error", "betti1_error", "hd95", "betti0_std"):
        assert key in rows[0], key
    out = suite.compute()
    for key in ("dice", "dice_per_image", "auc", "ece", "cldice", "cldice_per_image",
                "betti0_error", "betti1_error", "hd95", "betti0_std", "cldice_std"):
        assert key in out, key
    assert float(out["dice_per_image"]) == pytest.approx(np.mean([r["dice"] for r in rows]), abs=1e-6)
    assert float(out["hd95"]) == pytest.approx(np.mean([r["hd95"] for r in rows]), abs=1e-5)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        data = _random_batch(0)
        suite = EvalMetrics()
        for i in range(rank, data["mask"].shape[0], world):  # uneven shards: 3 and 2 images
            suite.update(*(data[k][i:i + 1] for k in ("probs", "mask", "valid", "samples")))
        out = {k: float(v) for k, v in suite.compute().items()}
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_reduction_equals_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    data = _random_batch(0)
    suite = EvalMetrics()
    suite.update(data["probs"], data["mask"], data["valid"], data["samples"])
    single = {k: float(v) for k, v in suite.compute().items()}
    for rank in range(2):
        ddp = torch.load(tmp_path / f"rank{rank}.pt")
        assert ddp.keys() == single.keys()
        for key, value in single.items():
            assert math.isclose(ddp[key], value, rel_tol=1e-6, abs_tol=1e-7), (key, ddp[key], value)
