"""The comparison's statistics against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segflow.metrics.bootstrap import (
    Interval,
    _replicate_indices,
    _replicate_means,
    bootstrap_p_value,
    correlation,
    mean_std,
    paired_difference,
)


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


# --- The crossed design (Owen 2007) against the nested one ------------------------------

S, N = 3, 40
#: Simulated designs per coverage estimate (binomial standard error ≈ 0.007 and 0.009 at
#: a coverage of 0.95).
N_DIFFERENCE, N_CORRELATION = 1000, 600


def test_replicate_means_are_the_means_of_the_resampled_grids():
    """The count-weighted replicate means equal the means of the explicitly indexed grids:
    crossed, every drawn seed on the one shared image draw; nested, each its own."""
    rng = np.random.default_rng(4)
    d = rng.normal(size=(S, N))
    seeds, images = _replicate_indices(S, N, 50, rng, "crossed")
    assert seeds.shape == (50, S) and images.shape == (50, N)
    direct = d[seeds[:, :, None], images[:, None, :]].mean(axis=(1, 2))
    np.testing.assert_allclose(_replicate_means(d, seeds, images), direct)
    seeds, images = _replicate_indices(S, N, 50, rng, "nested")
    assert images.shape == (50, S, N)
    direct = d[seeds[:, :, None], images].mean(axis=(1, 2))
    np.testing.assert_allclose(_replicate_means(d, seeds, images), direct)


def test_intervals_name_their_design_and_one_seed_makes_them_equal():
    d = np.random.default_rng(5).normal(0.01, 0.05, 60)
    crossed = paired_difference(d, np.zeros_like(d), n_boot=500)
    nested = paired_difference(d, np.zeros_like(d), n_boot=500, design="nested")
    assert crossed.design == "crossed" and nested.design == "nested"
    assert (crossed.low, crossed.high) == (nested.low, nested.high)  # one seed: the same bootstrap
    assert correlation(d, d ** 3).design == "crossed"
    with pytest.raises(ValueError, match="design"):
        paired_difference(d, d, design="two-way")
    with pytest.raises(ValueError, match="design"):
        correlation(d, d, design="pooled")


def test_a_shared_image_effect_widens_the_crossed_interval_only():
    """An image effect common to every seed does not average away over seeds: the crossed
    interval keeps it (half-width ≈ 1.96 σ_b/√N), the nested one shrinks it by √S."""
    rng = np.random.default_rng(6)
    sb = 0.03
    d = rng.normal(0, sb, (1, N)) + rng.normal(0, 0.002, (S, N))
    crossed = paired_difference(d, np.zeros_like(d), n_boot=8000)
    nested = paired_difference(d, np.zeros_like(d), n_boot=8000, design="nested")
    half = 1.96 * d.mean(axis=0).std() / np.sqrt(N)
    assert (crossed.high - crossed.low) / 2 == pytest.approx(half, rel=0.15)
    assert (crossed.high - crossed.low) / (nested.high - nested.low) == pytest.approx(np.sqrt(S), rel=0.2)


def _differences(rng: np.random.Generator, sd_seed: float, sd_image: float, sd_noise: float,
                 delta: float) -> np.ndarray:
    """(designs, S, N) paired differences Δ + a_s + b_i + e_si of a crossed design."""
    n = N_DIFFERENCE
    return (delta + rng.normal(0, sd_seed, (n, S, 1)) + rng.normal(0, sd_image, (n, 1, N))
            + rng.normal(0, sd_noise, (n, S, N)))


def _difference_coverage(grids: np.ndarray, delta: float, design: str) -> float:
    hits = 0
    for k, d in enumerate(grids):
        ci = paired_difference(d, np.zeros_like(d), n_boot=500, seed=k, design=design)
        hits += ci.low <= delta <= ci.high
    return hits / len(grids)


def test_difference_coverage_of_an_image_dominated_crossed_design():
    """1000 simulated 3-seed × 40-image designs, the image effect (sd 0.03) larger than
    the seed effect (sd 0.004), noise sd 0.01, true difference 0.01. Measured with this
    seed: crossed 0.917, nested 0.761 (another seed: 0.933, 0.779); the nested interval is
    ≈ 0.62× the true width, the crossed one ≈ 0.96×."""
    grids = _differences(np.random.default_rng(7), 0.004, 0.03, 0.01, delta=0.01)
    crossed = _difference_coverage(grids, 0.01, "crossed")
    nested = _difference_coverage(grids, 0.01, "nested")
    assert 0.90 <= crossed <= 0.98, crossed
    assert nested < 0.90, nested  # the test of the test: the nested form undercovers here


def test_difference_coverage_of_a_seed_dominated_crossed_design():
    """The seed effect (sd 0.02) larger than the image effect (sd 0.005): with 3 seeds the
    bootstrap sees only 3 seed values (its seed variance is (S−1)/S = 2/3 of the truth and
    its percentile interval of 10 possible seed multisets is coarse), so *both* designs
    undercover, about equally. Measured with this seed: crossed 0.755, nested 0.753
    (another seed: 0.740, 0.734). This is a limit of 3 seeds, not of the design; the
    assertion pins the measured range."""
    grids = _differences(np.random.default_rng(8), 0.02, 0.005, 0.01, delta=0.01)
    crossed = _difference_coverage(grids, 0.01, "crossed")
    nested = _difference_coverage(grids, 0.01, "nested")
    assert 0.70 <= crossed <= 0.82, crossed
    assert abs(crossed - nested) < 0.05


def _correlated(rng: np.random.Generator, sd_seed: float, sd_image: float, sd_noise: float,
                r: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(designs, S, N) pairs x, y: seed and image effects each bivariate normal with
    correlation r, independent noise. Pooled over seeds and images (x, y) is bivariate
    normal with Pearson correlation r·(σ_a² + σ_b²)/(σ_a² + σ_b² + σ_e²), so its Spearman ρ
    is (6/π)·arcsin(r_pooled/2) (Pearson's 1907 identity for the normal)."""
    n = N_CORRELATION
    cov = np.array([[1.0, r], [r, 1.0]])
    a = rng.multivariate_normal([0, 0], cov * sd_seed ** 2, (n, S))[:, :, None, :]
    b = rng.multivariate_normal([0, 0], cov * sd_image ** 2, (n, N))[:, None, :, :]
    xy = a + b + rng.normal(0, sd_noise, (n, S, N, 2))
    pooled = r * (sd_seed ** 2 + sd_image ** 2) / (sd_seed ** 2 + sd_image ** 2 + sd_noise ** 2)
    return xy[..., 0], xy[..., 1], 6 / np.pi * np.arcsin(pooled / 2)


def _correlation_coverage(x: np.ndarray, y: np.ndarray, rho: float, design: str) -> float:
    hits = 0
    for k in range(len(x)):
        ci = correlation(x[k], y[k], n_boot=300, seed=k, design=design)
        hits += ci.low <= rho <= ci.high
    return hits / len(x)


def test_correlation_coverage_of_an_image_dominated_crossed_design():
    """Image effect sd 1, seed effect sd 0.3, noise sd 0.3, r = 0.6 (Spearman ρ = 0.536).
    600 designs (the nested form on the first 400). Measured with this seed: crossed 0.968,
    nested 0.868 (another seed, 600 each: 0.942, 0.817; 2400 further designs: crossed
    0.962, nested 0.828)."""
    x, y, rho = _correlated(np.random.default_rng(9), 0.3, 1.0, 0.3, 0.6)
    crossed = _correlation_coverage(x, y, rho, "crossed")
    nested = _correlation_coverage(x[:400], y[:400], rho, "nested")  # 400 suffice for < 0.90
    assert 0.90 <= crossed <= 0.98, crossed
    assert nested < 0.90, nested


def test_correlation_coverage_of_a_seed_dominated_crossed_design():
    """Seed effect sd 1, image effect sd 0.3, noise sd 0.3, r = 0.6: most of the pooled
    correlation comes from 3 seed means, which neither estimate nor resample well, and the
    pooled ρ is biased low; the crossed interval undercovers. Measured with this seed:
    0.863 (another seed: 0.857; 2400 further designs: 0.86; nested 0.84). The assertion
    pins the measured range; it states a limit of 3 seeds."""
    x, y, rho = _correlated(np.random.default_rng(10), 1.0, 0.3, 0.3, 0.6)
    crossed = _correlation_coverage(x, y, rho, "crossed")
    assert 0.80 <= crossed < 0.90, crossed


def test_bootstrap_p_value_by_hand():
    # 9 replicates, 2 at or below 0: p = 2 · (1 + 2) / (9 + 1) = 0.6
    reps = [-0.2, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert bootstrap_p_value(reps) == pytest.approx(0.6)
    # all above the null: the smallest p 9 replicates can give, 2/10
    assert bootstrap_p_value([1.0] * 9) == pytest.approx(0.2)
    assert bootstrap_p_value([0.0] * 9) == 1.0
    b = np.random.default_rng(11).integers(0, 10, (3, 20)).astype(float)
    ci = paired_difference(b + 1, b, n_boot=999)  # every replicate exactly +1
    assert ci.p_value() == pytest.approx(2 / 1000)
    assert ci.p_value(null=1.0) == 1.0
    with pytest.raises(ValueError, match="replicates"):
        Interval(0.0, -1.0, 1.0).p_value()
    with pytest.raises(ValueError, match="finite"):
        bootstrap_p_value([])
