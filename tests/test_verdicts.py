"""Verdicts with an equivalence margin, metric directions, Holm's adjustment and the
whole-curve refinement check."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.metrics.bootstrap import Interval, paired_difference
from segflow.metrics.verdicts import (
    DEFAULT_MARGINS,
    VERDICT_RULE,
    VERDICTS,
    describe_margins,
    direction,
    holm,
    holm_reject,
    parse_margins,
    refinement_check,
    running_refinement,
    verdict,
)

# Margins and bounds that are exact binary fractions, so the edges are exact.
M = 0.25


@pytest.mark.parametrize(("low", "high", "expected"), [
    (-0.125, 0.125, "equivalent"),      # inside ±m, crosses 0
    (0.0625, 0.125, "equivalent"),      # inside ±m and clear of 0: equivalent wins
    (-0.125, -0.0625, "equivalent"),
    (-0.25, 0.125, "inconclusive"),     # touches −m: not inside; crosses 0
    (-0.125, 0.25, "inconclusive"),     # touches +m
    (0.0, 0.5, "inconclusive"),         # touches 0: does not exclude it
    (2 ** -20, 0.5, "better"),          # just clear of 0, beyond +m
    (0.125, 0.25, "better"),            # clear of 0, touches +m: not inside, so better
    (-0.5, -2 ** -20, "worse"),
    (-0.25, -0.125, "worse"),
    (-0.5, 0.5, "inconclusive"),
])
def test_the_verdict_rule_at_the_margins_edges(low, high, expected):
    assert verdict((low, high), "dice", margin=M) == expected
    assert verdict(Interval(0.5 * (low + high), low, high), "dice", margin=M) == expected


def test_lower_error_is_better():
    """A model with fewer β0 / β1 errors or a lower ECE has a negative difference: better."""
    for metric in ("betti0_error", "betti1_error", "ece", "betti0", "hd95"):
        assert direction(metric) == -1
        assert verdict((-4.0, -2.0), metric, margin=1.0) == "better"
        assert verdict((2.0, 4.0), metric, margin=1.0) == "worse"
        assert verdict((-0.5, 0.25), metric, margin=1.0) == "equivalent"
    for metric in ("dice", "cldice", "dice_per_image", "auc"):
        assert direction(metric) == 1
        assert verdict((2.0, 4.0), metric, margin=1.0) == "better"
    # From a bootstrap: the model makes 3 fewer components per image on every image.
    ref = np.random.default_rng(0).integers(10, 30, (3, 20)).astype(float)
    assert verdict(paired_difference(ref - 3, ref), "betti0_error") == "better"
    with pytest.raises(ValueError, match="unknown metric"):
        direction("sensitivity_score")


def test_default_margins_and_the_rule_text():
    assert DEFAULT_MARGINS["dice"] == 0.01 and DEFAULT_MARGINS["cldice"] == 0.01
    assert {"betti0_error", "betti1_error", "ece"} <= set(DEFAULT_MARGINS)
    assert verdict((-0.004, 0.006), "dice") == "equivalent"   # default margin 0.01
    assert verdict((-0.004, 0.012), "dice") == "inconclusive"
    assert set(VERDICTS) == {"better", "equivalent", "worse", "inconclusive"}
    assert "equivalent" in VERDICT_RULE and "inconclusive" in VERDICT_RULE
    assert describe_margins(DEFAULT_MARGINS, ["dice", "betti0"]) == "dice ±0.01, betti0 ±1"
    with pytest.raises(ValueError, match="low <= high"):
        verdict((0.2, 0.1), "dice")
    with pytest.raises(ValueError, match="margin"):
        verdict((0.0, 0.1), "dice", margin=0.0)


def test_parse_margins():
    m = parse_margins("dice=0.02, cldice=0.015,betti0=2,BETTI1_ERROR=0.5")
    assert m["dice"] == 0.02 and m["cldice"] == 0.015
    assert m["betti0_error"] == 2.0 and m["betti1_error"] == 0.5
    assert m["ece"] == DEFAULT_MARGINS["ece"]           # unnamed: the default
    assert parse_margins(None) == DEFAULT_MARGINS and parse_margins("") == DEFAULT_MARGINS
    assert parse_margins("dice=0.01") is not DEFAULT_MARGINS


@pytest.mark.parametrize(("text", "names"), [
    ("dice=0.01,dcie=0.01", "'dcie'"),
    ("dice=abc", "'abc' for dice"),
    ("dice=-0.01", "'-0.01' for dice"),
    ("ece=nan", "'nan' for ece"),
    ("dice=0", "'0' for dice"),
    ("dice", "'dice'"),
    ("dice=0.01,,ece=0.01", "'dice=0.01,,ece=0.01' has an empty entry"),
    ("dice=0.01,dice=0.02", "dice more than once"),
    ("betti0=1,betti0_error=2", "betti0_error more than once"),
])
def test_bad_margins_err_with_one_sentence_naming_the_entry(text, names):
    with pytest.raises(ValueError) as err:
        parse_margins(text)
    message = str(err.value)
    assert message.startswith("--margin") and names in message
    assert message.count(". ") == 0 and message.endswith((".", ")."))


def test_holm_against_a_hand_computed_example():
    """m = 4, sorted 0.005 < 0.01 < 0.03 < 0.04: 4·0.005 = 0.02, 3·0.01 = 0.03,
    2·0.03 = 0.06, 1·0.04 = 0.04 → running max 0.04 → 0.06; back in the input order."""
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    # At α = 0.05 Holm rejects the two smallest and stops at 0.03 (> 0.05 / 2).
    assert holm_reject(p).tolist() == [True, False, False, True]
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])   # capped at 1
    np.testing.assert_allclose(holm([0.02]), [0.02])            # one test: unchanged
    assert holm([]).size == 0
    with pytest.raises(ValueError, match="p-values"):
        holm([0.1, 1.5])


def test_a_steady_fall_fails_the_whole_curve_check():
    """Each step count loses 0.004 (within a 0.005 step-by-step tolerance), 0.012 in all."""
    curve = {1: 0.720, 2: 0.716, 4: 0.712, 8: 0.708}
    check = refinement_check(curve, "dice", margin=0.005)
    assert not check.refines
    assert check.largest_drop == pytest.approx(0.012) and check.at_steps == 8
    assert check.baseline_steps == 1
    so_far = running_refinement(curve, "dice", margin=0.005)
    assert [c.refines for c in so_far] == [True, True, False, False]
    assert so_far[2].largest_drop == pytest.approx(0.008)


def test_the_curve_check_edges_and_directions():
    assert refinement_check({1: 0.75, 2: 0.5}, margin=M).refines            # drop = margin
    assert not refinement_check({1: 0.75, 2: 0.5 - 2 ** -20}, margin=M).refines
    # A dip and recovery is judged by its lowest point, not by its end.
    dip = refinement_check({1: 0.72, 2: 0.70, 4: 0.725}, margin=0.01)
    assert not dip.refines and dip.at_steps == 2
    rising = refinement_check({1: 0.70, 2: 0.72, 4: 0.73}, margin=0.01)
    assert rising.refines and rising.largest_drop == pytest.approx(-0.02)
    assert refinement_check({4: 0.7}).refines                                # one point
    # β0 error: a rise is the drop.
    assert not refinement_check({1: 10.0, 2: 12.0}, "betti0_error", margin=1.0).refines
    assert refinement_check({1: 10.0, 2: 6.0}, "betti0_error", margin=1.0).refines
    with pytest.raises(ValueError, match="at least one"):
        refinement_check({})
