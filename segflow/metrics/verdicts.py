"""Verdicts of a model against a reference with an equivalence margin per metric, the Holm
adjustment for many comparisons, and the whole-curve check that sampling refines.

A comparison reports, per metric, the paired difference **model − reference** with a
confidence interval (:func:`segflow.metrics.bootstrap.paired_difference`). "No significant
difference" is not "the same": an interval can include 0 because it is wide. A margin m
states the smallest difference that matters, and the verdict reads the interval against
both 0 and ±m (the confidence-interval form of the two one-sided tests of equivalence:
Schuirmann, "A comparison of the two one-sided tests procedure and the power approach for
assessing the equivalence of average bioavailability", J. Pharmacokinet. Biopharm. 15(6),
1987):

* ``equivalent`` — the whole interval lies strictly inside (−m, +m);
* ``better`` — otherwise, the whole interval lies strictly on the good side of 0;
* ``worse`` — otherwise, the whole interval lies strictly on the bad side of 0;
* ``inconclusive`` — anything else (the interval crosses 0 and reaches beyond ±m).

An interval both inside ±m and clear of 0 is ``equivalent``: the difference is real but
smaller than what the margin says matters. Reading the same 95 % interval for
equivalence makes each one-sided test of Schuirmann's procedure one at α = 0.025 (his
procedure at α = 0.05 reads a 90 % interval), so ``equivalent`` is the stricter claim.
Edges: an interval that touches ±m is not inside it, and one that touches 0 does not
exclude it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

VERDICTS = ("better", "equivalent", "worse", "inconclusive")

#: The verdict rule in one line, for a table's header.
VERDICT_RULE = ("verdict: equivalent if the 95 % CI of (model − reference) lies inside ±margin; "
                "else better / worse if it lies wholly on the good / bad side of 0; "
                "else inconclusive")

#: Whether a larger value is better, per metric key of ``metrics.json`` / ``per_image.csv``.
HIGHER_IS_BETTER: dict[str, bool] = {
    "dice": True, "dice_per_image": True, "cldice": True, "cldice_per_image": True,
    "iou": True, "auc": True,
    "betti0_error": False, "betti1_error": False, "ece": False, "hd95": False,
}

#: Short names accepted for metric keys (``--margin betti0=1``).
ALIASES = {"betti0": "betti0_error", "betti1": "betti1_error", "b0": "betti0_error",
           "b1": "betti1_error"}

#: Default equivalence margins, in each metric's own unit (the ranges quoted are those of
#: the DCA1 comparison in docs/results.md).
#:
#: * ``dice``, ``cldice`` (and their per-image means), ``iou``: 0.01 — one point of overlap;
#:   seed-to-seed standard deviations of the models compared are 0.002–0.006 (0.03 for an
#:   unstable U-Net), so a smaller margin would call training noise a difference.
#: * ``betti0_error``: 1.0 — one connected component per image (the errors compared are
#:   11–24 components per image): under one fragment per image is below what a figure shows
#:   and within the labelling's sensitivity to a few stray pixels.
#: * ``betti1_error``: 0.2 — one loop in five images (errors compared are 0.7–1.1 loops per
#:   image, so a whole loop per image would call nearly every pair equivalent).
#: * ``ece``: 0.005 — half a percentage point of mean |confidence − frequency| gap, a quarter
#:   of the smallest ECE compared (0.02–0.045).
#: * ``auc``: 0.005; ``hd95``: 1.0 pixel, the resolution of the distance itself.
#:
#: A paper should state the margins it used; ``--margin`` overrides any of them.
DEFAULT_MARGINS: dict[str, float] = {
    "dice": 0.01, "dice_per_image": 0.01, "cldice": 0.01, "cldice_per_image": 0.01,
    "iou": 0.01, "auc": 0.005, "betti0_error": 1.0, "betti1_error": 0.2, "ece": 0.005,
    "hd95": 1.0,
}


def metric_key(name: str) -> str:
    """The canonical metric key of ``name`` (aliases resolved, case ignored).

    Raises:
        ValueError: a metric with no known direction.
    """
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(HIGHER_IS_BETTER)}")
    return key


def direction(metric: str) -> int:
    """+1 where a larger value of ``metric`` is better, −1 where a smaller one is."""
    return 1 if HIGHER_IS_BETTER[metric_key(metric)] else -1


def _bounds(interval: Any) -> tuple[float, float]:
    low, high = (interval.low, interval.high) if hasattr(interval, "low") else interval
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"an interval needs finite bounds low <= high, got [{low}, {high}]")
    return low, high


def _positive(value: float, what: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive finite number, got {value}")
    return float(value)


def verdict(interval: Any, metric: str, margin: float | None = None) -> str:
    """The verdict of a difference interval (model − reference) of ``metric``.

    Args:
        interval: an object with ``low`` and ``high`` (an
            :class:`~segflow.metrics.bootstrap.Interval`) or a ``(low, high)`` pair.
        metric: the metric key (its direction decides which side of 0 is better).
        margin: the equivalence margin (> 0); None: :data:`DEFAULT_MARGINS`.

    Returns:
        one of :data:`VERDICTS` (see the module for the rule and its edges).
    """
    key = metric_key(metric)
    m = _positive(DEFAULT_MARGINS[key] if margin is None else margin, f"the margin of {key}")
    low, high = _bounds(interval)
    # In the good direction: a positive difference is an improvement.
    lo, hi = (low, high) if HIGHER_IS_BETTER[key] else (-high, -low)
    if -m < lo and hi < m:
        return "equivalent"
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "inconclusive"


def parse_margins(text: str | None, defaults: Mapping[str, float] = DEFAULT_MARGINS
                  ) -> dict[str, float]:
    """The margins of a ``--margin`` string such as ``dice=0.01,cldice=0.01,betti0=1``,
    over ``defaults`` (metrics not named keep their default).

    Raises:
        ValueError: one sentence naming the bad entry: not ``metric=value``, an unknown
            metric, a value that is not a positive finite number, or a metric named twice.
    """
    margins = dict(defaults)
    if text is None or not text.strip():
        return margins
    seen: set[str] = set()
    for item in text.split(","):
        if not item.strip():
            raise ValueError(f"--margin {text.strip()!r} has an empty entry between commas.")
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not name or not value:
            raise ValueError(f"--margin entry {item.strip()!r} is not metric=value, as in dice=0.01.")
        try:
            key = metric_key(name)
        except ValueError:
            raise ValueError(f"--margin names an unknown metric {name!r} in {item.strip()!r} "
                             f"(known: {', '.join([*HIGHER_IS_BETTER, *ALIASES])}).") from None
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise ValueError(f"--margin value {value!r} for {name} is not a positive finite number.")
        if key in seen:
            raise ValueError(f"--margin gives {key} more than once in {text.strip()!r}.")
        seen.add(key)
        margins[key] = number
    return margins


def describe_margins(margins: Mapping[str, float], metrics: Sequence[str]) -> str:
    """``dice ±0.01, cldice ±0.01, ...`` for the named metrics (a table header's margins)."""
    return ", ".join(f"{m} ±{margins[metric_key(m)]:g}" for m in metrics)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm, "A simple sequentially rejective multiple
    test procedure", Scand. J. Statist. 6(2), 1979), in the input's order.

    With the m p-values sorted ascending, p_(1) ≤ … ≤ p_(m), the adjusted value of the j-th
    is max_{k ≤ j} min(1, (m − k + 1) · p_(k)); rejecting where it is ≤ α controls the
    family-wise error rate at α under any dependence between the tests (the same as Holm's
    sequential procedure).

    Raises:
        ValueError: not a flat list of numbers in [0, 1].
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("Holm's adjustment needs a flat list of p-values in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def holm_reject(p_values: Sequence[float] | np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Which hypotheses Holm's procedure rejects at family-wise level ``alpha``."""
    return holm(p_values) <= alpha


#: The refinement rule in one line, for a table's header.
REFINEMENT_RULE = ("refines: no step count's value is worse than the fewest-steps value by more "
                   "than the margin (the largest drop over the whole curve)")


@dataclass(frozen=True)
class CurveCheck:
    """The whole-curve refinement check of one metric against sampling steps.

    Attributes:
        baseline_steps: the fewest steps on the curve (the value every other is held to).
        largest_drop: the largest worsening from the baseline value, in the metric's unit
            (≤ 0 when no step count is worse than the baseline).
        at_steps: the step count where it occurs (the baseline itself when the curve has one
            point).
        margin: the allowed drop.
        refines: ``largest_drop <= margin``.
    """

    baseline_steps: int
    largest_drop: float
    at_steps: int
    margin: float
    refines: bool


def refinement_check(curve: Mapping[int, float], metric: str = "dice",
                     margin: float | None = None) -> CurveCheck:
    """Whether more sampling steps keep ``metric`` within ``margin`` of its fewest-steps value.

    The check is on the whole curve, not step by step: values 0.720, 0.716, 0.712, 0.708 at
    1, 2, 4, 8 steps fall by 0.004 per step count, each step within 0.005, but 0.012 in all,
    and fail a margin of 0.005. A drop equal to the margin passes.

    Args:
        curve: {steps: value}, e.g. the one-sample Dice at steps 1, 2, 4, 8.
        metric: its key; the direction decides what a drop is (a rise of β0 error is one).
        margin: the allowed drop (> 0); None: :data:`DEFAULT_MARGINS` of the metric.

    Raises:
        ValueError: an empty curve, non-finite values, or a bad margin.
    """
    key = metric_key(metric)
    m = _positive(DEFAULT_MARGINS[key] if margin is None else margin, f"the margin of {key}")
    if not curve:
        raise ValueError("a refinement curve needs at least one step count")
    steps = sorted(int(s) for s in curve)
    values = {int(s): float(v) for s, v in curve.items()}
    if not all(math.isfinite(v) for v in values.values()):
        raise ValueError(f"a refinement curve of {key} holds non-finite values: {values}")
    sign = direction(key)
    base = steps[0]
    drops = {s: sign * (values[base] - values[s]) for s in steps}
    worst = max(steps[1:], key=lambda s: drops[s], default=base)
    return CurveCheck(base, drops[worst], worst, m, drops[worst] <= m)


def running_refinement(curve: Mapping[int, float], metric: str = "dice",
                       margin: float | None = None) -> list[CurveCheck]:
    """:func:`refinement_check` of the curve up to each step count, in step order (a
    table's "refines so far" column)."""
    steps = sorted(int(s) for s in curve)
    values = {int(s): v for s, v in curve.items()}
    return [refinement_check({s: values[s] for s in steps[:k + 1]}, metric, margin)
            for k in range(len(steps))]
