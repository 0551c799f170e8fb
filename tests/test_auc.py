"""Exact (rank-based) AUC in test/eval against a sorted pairwise reference; CHASE_DB1's
thresholded FOV masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from segflow.data.prepare.fov import threshold_fov
from segflow.data.prepare.layout import prepare
from segflow.metrics import EvalMetrics, ExactAUC, VesselMetrics, rank_auc


def sorted_reference_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(pos > neg) + ½ P(pos == neg), counted over every (positive, negative) pair with
    the negatives sorted (binary search): the definition, independently of ranks."""
    neg = np.sort(scores[~labels])
    pos = scores[labels]
    below = np.searchsorted(neg, pos, side="left")
    equal = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * equal).sum() / (len(pos) * len(neg)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_auc_equals_the_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(5000) < 0.2
    scores = np.round(rng.random(5000) * 0.6 + 0.4 * labels, 2)  # many ties
    got = float(rank_auc(torch.from_numpy(scores), torch.from_numpy(labels)))
    assert got == pytest.approx(sorted_reference_auc(scores, labels), abs=1e-12)


def test_exact_auc_fixes_the_binned_error_on_a_saturated_case():
    # Near-perfect, saturated probabilities: everything lands in the histogram's top bins.
    rng = np.random.default_rng(0)
    labels = rng.random((2, 1, 64, 64)) < 0.15
    probs = np.where(labels, 1 - rng.random(labels.shape) * 2e-3, rng.random(labels.shape) * 1e-3
                     + 0.998 * (rng.random(labels.shape) < 0.02))
    valid = np.ones_like(labels)
    valid[:, :, :8] = 0  # outside the FOV: not counted
    t = [torch.from_numpy(a.astype(np.float32)) for a in (probs, labels, valid)]
    exact, binned = ExactAUC(), VesselMetrics()
    for i in range(2):  # two batches
        exact.update(*(x[i:i + 1] for x in t))
        binned.update(*(x[i:i + 1] for x in t))
    keep = valid.astype(bool)
    ref = sorted_reference_auc(probs.astype(np.float32)[keep].astype(np.float64), labels[keep])
    assert float(exact.compute()["auc"]) == pytest.approx(ref, abs=1e-6)
    assert abs(float(binned.compute()["auc"]) - ref) > 1e-4  # what the exact AUC fixes


def test_the_evaluation_suite_reports_the_exact_auc():
    rng = np.random.default_rng(3)
    labels = rng.random((1, 1, 32, 32)) < 0.2
    probs = np.clip(0.3 * labels + rng.random(labels.shape) * 0.7, 0, 1).astype(np.float32)
    suite = EvalMetrics(topology=False)
    suite.update(torch.from_numpy(probs), torch.from_numpy(labels.astype(np.float32)))
    ref = sorted_reference_auc(probs.ravel().astype(np.float64), labels.ravel())
    assert float(suite.compute()["auc"]) == pytest.approx(ref, abs=1e-6)


def _fundus(h: int = 60, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * h) ** 2
    rng = np.random.default_rng(0)
    img = np.where(disc[..., None], 120 + rng.integers(0, 60, (h, w, 3)), rng.integers(0, 8, (h, w, 3)))
    img[h // 2, w // 2 - 10: w // 2 + 10] = 10  # a dark vessel inside the disc: stays inside
    return img.astype(np.uint8), disc


def test_threshold_fov_is_the_disc():
    img, disc = _fundus()
    fov = threshold_fov(img)
    assert fov.dtype == np.uint8 and set(np.unique(fov)) <= {0, 1}
    assert (fov.astype(bool) != disc).mean() < 0.02


def test_prepare_chase_writes_thresholded_fov_masks(tmp_path):
    src = tmp_path / "CHASEDB1"
    src.mkdir()
    img, disc = _fundus()
    for child in (1, 11):
        stem = f"Image_{child:02d}L"
        cv2.imwrite(str(src / f"{stem}.jpg"), img[..., ::-1])
        cv2.imwrite(str(src / f"{stem}_1stHO.png"), (disc * 255).astype(np.uint8))
    manifest = prepare("chase", src, tmp_path / "chase")
    assert "threshold" in manifest["fov_rule"] and manifest["with_fov"] == 2
    fov = cv2.imread(str(tmp_path / "chase/test/fov/Image_11L.png"), cv2.IMREAD_GRAYSCALE)
    assert (fov > 127).mean() == pytest.approx(disc.mean(), abs=0.03)
