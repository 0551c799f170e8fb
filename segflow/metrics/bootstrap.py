"""Confidence intervals for model comparisons over test images and training seeds.

A comparison's unit of evidence is a per-image score of a model trained with one seed.
Two models are compared **paired**: the same test images, and the same seed values (seed
k of one model beside seed k of the other).

segflow's evaluation design is **crossed**: every seed is tested on the *same* test
images, so a score carries a seed effect, an image effect and their interaction,

    d[s, i] = Δ + a_s + b_i + e_si,

and the variance of the grand mean is σ_a²/S + σ_b²/N + σ_e²/(S·N): the image effect b_i
is shared by every seed and does not average away over seeds. The crossed (two-way,
"pigeonhole") bootstrap resamples seeds with replacement and, independently, one set of
images with replacement that every drawn seed shares, and recomputes the statistic on the
S × N sub-grid (Owen, "The pigeonhole bootstrap", Ann. Appl. Stat. 1(2), 2007, for crossed
random effects; for many rows and columns Owen shows its variance estimate is mildly
conservative rather than too small). The percentile interval of those replicates is
the confidence interval (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993,
ch. 13).

The **nested** bootstrap (seeds, then images redrawn independently *within* each drawn
seed; Davison & Hinkley, "Bootstrap Methods and their Application", 1997, §3.8) is right
only when each seed has its own test images. Applied to a crossed design it averages the
shared image effect over the S independent image draws and its intervals are too narrow
(variance σ_b²/(S·N) instead of σ_b²/N); it is kept as ``design="nested"`` for callers that
truly have per-seed test sets.

With few seeds (S = 3) neither design can estimate the seed variance well: where the seed
effect dominates, the percentile interval of a 3-seed resample undercovers (see
``tests/test_bootstrap.py`` for the measured coverage).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

VERDICTS = ("better", "tie", "worse")
#: The resampling designs :func:`paired_difference` and :func:`correlation` accept.
DESIGNS = ("crossed", "nested")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided confidence interval.

    Attributes:
        estimate, low, high: the statistic and its percentile interval.
        level: the interval's nominal coverage.
        design: the bootstrap design that produced it (``crossed`` / ``nested``; None when
            not from a bootstrap).
        replicates: the bootstrap replicates of the statistic (for :meth:`p_value`).
    """

    estimate: float
    low: float
    high: float
    level: float = 0.95
    design: str | None = None
    replicates: np.ndarray | None = field(default=None, repr=False, compare=False)

    def verdict(self) -> str:
        """``better`` when the whole interval is above 0, ``worse`` when below, else ``tie``
        (no equivalence margin: see :mod:`segflow.metrics.verdicts` for verdicts with one)."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "tie"

    def p_value(self, null: float = 0.0) -> float:
        """Two-sided bootstrap p-value of ``null`` (see :func:`bootstrap_p_value`)."""
        if self.replicates is None:
            raise ValueError("this interval holds no bootstrap replicates to compute a p-value from")
        return bootstrap_p_value(self.replicates, null)

    def format(self, digits: int = 3) -> str:
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def bootstrap_p_value(replicates: np.ndarray | list, null: float = 0.0) -> float:
    """Two-sided p-value of the hypothesis "the statistic equals ``null``" from its bootstrap
    replicates: the smallest α at which the percentile (1 − α) interval excludes ``null``,

        p = min(1, 2 · min(1 + #{θ* ≤ null}, 1 + #{θ* ≥ null}) / (B + 1)),

    the percentile interval inverted into a test (Efron & Tibshirani 1993, ch. 15–16, the
    achieved significance level of a bootstrap test); the +1 counts the observed sample
    among the replicates (Davison & Hinkley 1997, §4.2), so p is never 0.

    Raises:
        ValueError: no replicates, or non-finite ones.
    """
    reps = np.asarray(replicates, dtype=np.float64).ravel()
    if reps.size == 0 or not np.isfinite(reps).all():
        raise ValueError("a bootstrap p-value needs at least one finite replicate")
    below = 1 + int((reps <= null).sum())
    above = 1 + int((reps >= null).sum())
    return float(min(1.0, 2 * min(below, above) / (reps.size + 1)))


def _as_grid(x: np.ndarray | list) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"scores must be (seeds, images) with at least one of each, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("scores contain NaN or Inf")
    return a


def _check_design(design: str) -> None:
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")


def _replicate_indices(n_seeds: int, n_images: int, n_boot: int, rng: np.random.Generator,
                       design: str = "crossed") -> tuple[np.ndarray, np.ndarray]:
    """Seed draws (n_boot, n_seeds) and image draws: (n_boot, n_images) for the crossed
    design (one image draw shared by every drawn seed of a replicate), (n_boot, n_seeds,
    n_images) for the nested one (images redrawn within each drawn seed)."""
    _check_design(design)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    shape = (n_boot, n_images) if design == "crossed" else (n_boot, n_seeds, n_images)
    return seeds, rng.integers(0, n_images, size=shape)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` values is drawn in each row of ``idx`` (..., k) -> (..., n)."""
    rows = idx.reshape(-1, idx.shape[-1])
    flat = (rows + n * np.arange(rows.shape[0])[:, None]).ravel()
    return np.bincount(flat, minlength=n * rows.shape[0]).reshape(*idx.shape[:-1], n)


def _replicate_means(d: np.ndarray, seeds: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Mean of ``d`` (S, N) over each replicate's resampled grid, from draw counts."""
    n_seeds, n_images = d.shape
    if images.ndim == 2:  # crossed: Σ_s Σ_i c_s w_i d[s, i] = Σ_i (c @ d)_i w_i
        total = ((_counts(seeds, n_seeds) @ d) * _counts(images, n_images)).sum(axis=1)
    else:  # nested: the k-th drawn seed's row, weighted by its own image counts
        total = (d[seeds] * _counts(images, n_images)).sum(axis=(1, 2))
    return total / (n_seeds * n_images)


def _percentiles(reps: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    alpha = (1 - level) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return float(low), float(high)


def paired_difference(a: np.ndarray | list, b: np.ndarray | list, n_boot: int = 4000,
                      level: float = 0.95, seed: int = 0, *, design: str = "crossed") -> Interval:
    """Mean per-image difference ``a − b`` over seeds and images, with a paired bootstrap
    percentile interval.

    Both models get the same draws (the bootstrap resamples the differences), and a given
    ``seed`` and grid shape give the same draws for every metric, so intervals of several
    metrics of one comparison come from one set of resamples.

    Args:
        a, b: (seeds, images) per-image scores (or (images,) for one seed), paired by
            position: ``a[s, i]`` and ``b[s, i]`` are seed s's scores on image i.
        n_boot: bootstrap replicates.
        level: the interval's coverage (0.95: the 2.5th and 97.5th percentiles).
        seed: the resampling's random seed (the interval is reproducible).
        design: ``crossed`` (every seed tested on the same images: seeds and one shared
            image set resampled per replicate; Owen 2007) or ``nested`` (each seed has its
            own test images: images resampled within each drawn seed). With one seed both
            are the ordinary bootstrap of the images.

    Returns:
        the :class:`Interval`, naming its design and holding its replicates.

    Raises:
        ValueError: shapes differ, are empty, hold non-finite values, or an unknown design.
    """
    _check_design(design)
    a, b = _as_grid(a), _as_grid(b)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same (seeds, images) shape, got {a.shape} and {b.shape}")
    d = a - b
    s_idx, i_idx = _replicate_indices(*d.shape, n_boot, np.random.default_rng(seed), design)
    reps = _replicate_means(d, s_idx, i_idx)
    low, high = _percentiles(reps, level)
    return Interval(float(d.mean()), low, high, level, design, reps)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either is constant."""
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each row pair of (B, n) arrays; NaN where a row is constant."""
    rx = rankdata(x, axis=1)
    ry = rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def correlation(x: np.ndarray | list, y: np.ndarray | list, n_boot: int = 2000,
                level: float = 0.95, seed: int = 0, *, design: str = "crossed",
                chunk: int = 500) -> Interval | None:
    """Spearman's ρ between two per-image quantities pooled over seeds, with a bootstrap
    percentile interval of the same design as :func:`paired_difference` (a replicate pools
    the drawn seeds' values on the drawn images, duplicates included).

    Args:
        x, y: (seeds, images) or (images,).
        n_boot, level, seed, design: as in :func:`paired_difference`.
        chunk: replicates ranked at once (memory: chunk × seeds × images values).

    Returns:
        None when there are fewer than 3 images or either quantity is constant.
    """
    _check_design(design)
    x, y = _as_grid(x), _as_grid(y)
    if x.shape != y.shape:
        raise ValueError(f"correlated quantities need the same shape, got {x.shape} and {y.shape}")
    if x.shape[1] < 3:
        return None
    rho = spearman(x.ravel(), y.ravel())
    if np.isnan(rho):
        return None
    s_idx, i_idx = _replicate_indices(*x.shape, n_boot, np.random.default_rng(seed), design)
    cols = i_idx[:, None, :] if design == "crossed" else i_idx  # (B, 1 or S, N)
    parts = []
    for k in range(0, n_boot, chunk):
        rows, images = s_idx[k:k + chunk, :, None], cols[k:k + chunk]
        parts.append(_rowwise_spearman(x[rows, images].reshape(len(rows), -1),
                                       y[rows, images].reshape(len(rows), -1)))
    reps = np.concatenate(parts)
    reps = reps[~np.isnan(reps)]
    low, high = _percentiles(reps, level)
    return Interval(rho, low, high, level, design, reps)


def mean_std(values: list[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
