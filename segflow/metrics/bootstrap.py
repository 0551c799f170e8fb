"""Confidence intervals for model comparisons over test images and training seeds.

A comparison's unit of evidence is a per-image score of a model trained with one seed.
Two models are compared **paired**: the same test images, and the same seed values (seed
k of one model beside seed k of the other). The two-level (hierarchical) bootstrap
resamples seeds with replacement, then images with replacement, and recomputes the
statistic; the percentile interval of those replicates is the confidence interval
(Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13; resampling both
levels of a nested design: Davison & Hinkley, "Bootstrap Methods and their Application",
1997, §3.8). Seeds and images are the two sources of variation a reader cares about: a
new training run, and a new image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

VERDICTS = ("better", "tie", "worse")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided confidence interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def verdict(self) -> str:
        """``better`` when the whole interval is above 0, ``worse`` when below, else ``tie``."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "tie"

    def format(self, digits: int = 3) -> str:
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def _as_grid(x: np.ndarray | list) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"scores must be (seeds, images) with at least one of each, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("scores contain NaN or Inf")
    return a


def _replicate_indices(n_seeds: int, n_images: int, n_boot: int, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(n_boot, n_seeds) seed draws and (n_boot, n_seeds, n_images) image draws: the
    images are redrawn within each drawn seed."""
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    images = rng.integers(0, n_images, size=(n_boot, n_seeds, n_images))
    return seeds, images


def paired_difference(a: np.ndarray | list, b: np.ndarray | list, n_boot: int = 4000,
                      level: float = 0.95, seed: int = 0) -> Interval:
    """Mean per-image difference ``a − b`` over seeds and images, with a two-level paired
    bootstrap percentile interval.

    Args:
        a, b: (seeds, images) per-image scores (or (images,) for one seed), paired by
            position: ``a[s, i]`` and ``b[s, i]`` are seed s's scores on image i.
        n_boot: bootstrap replicates.
        level: the interval's coverage (0.95: the 2.5th and 97.5th percentiles).
        seed: the resampling's random seed (the interval is reproducible).

    Raises:
        ValueError: shapes differ, are empty, or hold non-finite values.
    """
    a, b = _as_grid(a), _as_grid(b)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same (seeds, images) shape, got {a.shape} and {b.shape}")
    d = a - b
    s_idx, i_idx = _replicate_indices(*d.shape, n_boot, np.random.default_rng(seed))
    reps = d[s_idx[:, :, None], i_idx].mean(axis=(1, 2))
    alpha = (1 - level) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return Interval(float(d.mean()), float(low), float(high), level)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either is constant."""
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def correlation(x: np.ndarray | list, y: np.ndarray | list, n_boot: int = 2000,
                level: float = 0.95, seed: int = 0) -> Interval | None:
    """Spearman's ρ between two per-image quantities pooled over seeds, with a two-level
    bootstrap interval (seeds, then images within seeds, as :func:`paired_difference`).

    Args:
        x, y: (seeds, images) or (images,).

    Returns:
        None when there are fewer than 3 images or either quantity is constant.
    """
    x, y = _as_grid(x), _as_grid(y)
    if x.shape != y.shape:
        raise ValueError(f"correlated quantities need the same shape, got {x.shape} and {y.shape}")
    if x.shape[1] < 3:
        return None
    rho = spearman(x.ravel(), y.ravel())
    if np.isnan(rho):
        return None
    s_idx, i_idx = _replicate_indices(*x.shape, n_boot, np.random.default_rng(seed))
    reps = np.array([spearman(x[s[:, None], i].ravel(), y[s[:, None], i].ravel())
                     for s, i in zip(s_idx, i_idx, strict=True)])
    reps = reps[~np.isnan(reps)]
    alpha = (1 - level) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return Interval(rho, float(low), float(high), level)


def mean_std(values: list[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
