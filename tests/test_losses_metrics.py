"""Losses and VesselMetrics against hand computations."""

import numpy as np
import pytest
import torch

from segflow.methods.losses import soft_cldice_loss, soft_dice_loss
from segflow.metrics import VesselMetrics


def _exact_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (len(pos) * len(neg))


def test_dice_loss_zero_for_perfect_and_one_for_disjoint():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 2:5] = 1
    assert soft_dice_loss(mask, mask, eps=1e-6) < 1e-5
    assert soft_dice_loss(1 - mask, mask, eps=1e-6) > 0.999


def test_cldice_loss_penalises_a_cut_vessel_more_than_dice():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 14:17, 2:30] = 1  # a horizontal vessel
    cut = mask.clone()
    cut[..., :, 15:18] = 0  # cut in the middle: few pixels, but topology broken
    assert soft_cldice_loss(mask, mask) < 1e-3
    assert soft_cldice_loss(cut, mask) > 0.0


def test_vessel_metrics_match_hand_counts_and_respect_fov():
    probs = torch.tensor([[[[0.9, 0.8, 0.1, 0.2]]]])
    mask = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]])
    m = VesselMetrics()
    m.update(probs, mask)
    out = m.compute()
    # tp=1 fp=1 fn=1 tn=1
    assert out["dice"] == pytest.approx(0.5)
    assert out["iou"] == pytest.approx(1 / 3)
    assert out["sensitivity"] == pytest.approx(0.5)
    assert out["specificity"] == pytest.approx(0.5)
    assert out["accuracy"] == pytest.approx(0.5)
    # With a FOV that excludes the two wrong pixels, everything is perfect.
    fov = torch.tensor([[[[1.0, 0.0, 0.0, 1.0]]]])
    m2 = VesselMetrics()
    m2.update(probs, mask, fov)
    out2 = m2.compute()
    assert out2["dice"] == pytest.approx(1.0) and out2["accuracy"] == pytest.approx(1.0)


def test_auc_equals_exact_computation_on_random_data():
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.3).astype(np.int64)
    scores = np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1)
    scores = np.round(scores, 3)  # on the histogram's grid: binning loses nothing
    m = VesselMetrics(auc_bins=1000)
    m.update(torch.tensor(scores).view(1, 1, 1, -1).float() + 1e-7, torch.tensor(labels).view(1, 1, 1, -1).float())
    assert float(m.compute()["auc"]) == pytest.approx(_exact_auc(scores, labels), abs=2e-3)


def test_per_image_dice_differs_from_dataset_dice():
    probs = torch.zeros(2, 1, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, :2] = 1  # image 0: 8 vessel pixels, perfectly found
    probs[0, 0, :2] = 1
    mask[1, 0, 0, 0] = 1  # image 1: 1 vessel pixel, missed
    m = VesselMetrics()
    m.update(probs, mask)
    out = m.compute()
    assert out["dice_per_image"] == pytest.approx(0.5)
    assert out["dice"] == pytest.approx(16 / 17)
