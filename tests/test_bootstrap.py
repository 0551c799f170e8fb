"""The comparison's statistics against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segflow.metrics.bootstrap import Interval, correlation, mean_std, paired_difference


def test_constant_difference_has_a_degenerate_interval():
    b = np.random.default_rng(0).random((3, 20))
    ci = paired_difference(b + 0.02, b)
    assert ci.estimate == pytest.approx(0.02) and ci.low == pytest.approx(0.02)
    assert ci.high == pytest.approx(0.02) and ci.verdict() == "better"
    assert paired_difference(b - 0.02, b).verdict() == "worse"


def test_one_seed_matches_the_normal_interval_of_a_mean():
    """One seed: the bootstrap of a mean of n i.i.d. differences has standard deviation
    σ/√n (σ: the population sd of the differences), so the 95 % interval is
    mean ± 1.96 σ/√n up to resampling noise."""
    rng = np.random.default_rng(1)
    n = 400
    d = rng.normal(0.01, 0.05, n)
    ci = paired_difference(d, np.zeros(n), n_boot=20_000)
    half = 1.959964 * d.std(ddof=0) / math.sqrt(n)
    assert ci.estimate == pytest.approx(d.mean())
    assert ci.low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert ci.high == pytest.approx(d.mean() + half, abs=0.1 * half)


def test_two_levels_widen_the_interval_by_the_seed_variance():
    """Seeds that disagree (a seed effect of ±δ on every image) widen the interval beyond
    the images' noise: var of the two-level mean ≈ var_seed/S + var_image/(S·N)."""
    rng = np.random.default_rng(2)
    s, n, delta = 4, 200, 0.04
    seed_effect = np.array([delta, -delta, delta, -delta])[:, None]
    d = 0.01 + seed_effect + rng.normal(0, 0.02, (s, n))
    ci = paired_difference(d, np.zeros_like(d), n_boot=20_000)
    sd = math.sqrt(seed_effect.var() / s + d.var(axis=1).mean() / (s * n))
    assert (ci.high - ci.low) / 2 == pytest.approx(1.96 * sd, rel=0.2)
    assert ci.verdict() == "tie"  # a 0.01 gain under ±0.04 seed swings is not established
    # Without the seed effect the same gain is clear.
    assert paired_difference(d - seed_effect, np.zeros_like(d)).verdict() == "better"


def test_correlation_interval_and_degenerate_cases():
    rng = np.random.default_rng(3)
    x = rng.random((2, 60))
    ci = correlation(x, x + 0.01 * rng.random((2, 60)))
    assert ci.estimate > 0.99 and ci.low > 0.95
    noise = correlation(x, rng.random((2, 60)))
    assert noise.low < 0 < noise.high
    assert correlation([1.0, 2.0], [2.0, 1.0]) is None  # < 3 images
    assert correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # constant


def test_bad_shapes_and_values_are_refused():
    with pytest.raises(ValueError, match="same"):
        paired_difference(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        paired_difference([0.1, float("nan")], [0.1, 0.2])
    assert mean_std([0.5]) == (0.5, 0.0)
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert Interval(0.0, -0.1, 0.2).format(2) == "+0.00 [-0.10, +0.20]"
