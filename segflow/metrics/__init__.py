"""Vessel segmentation metrics as torchmetrics ``Metric``s (exact across DDP ranks).

Pixel overlap and a fast binned AUC (:class:`VesselMetrics`), the exact AUC
(:class:`ExactAUC`), topology (:class:`ClDice`,
:class:`BettiErrors`), boundary distance (:class:`HD95`), calibration
(:class:`CalibrationError`), ensemble topology spread (:class:`EnsembleTopologySpread`),
and all of them together (:class:`EvalMetrics`).

For comparisons: paired bootstrap intervals of a crossed seeds × images design
(:mod:`segflow.metrics.bootstrap`), verdicts with an equivalence margin per metric, Holm's
adjustment and the refinement check (:mod:`segflow.metrics.verdicts`), and counted FLOPs
(:mod:`segflow.metrics.flops`).
"""

from segflow.metrics.auc import ExactAUC, rank_auc
from segflow.metrics.bootstrap import Interval, bootstrap_p_value, correlation, paired_difference
from segflow.metrics.calibration import CalibrationError
from segflow.metrics.distance import HD95, hd95
from segflow.metrics.ensemble import EnsembleTopologySpread, member_topology
from segflow.metrics.flops import forward_flops, image_flops
from segflow.metrics.segmentation import VesselMetrics
from segflow.metrics.suite import EvalMetrics
from segflow.metrics.topology import BettiErrors, ClDice, betti_numbers, cldice
from segflow.metrics.verdicts import (
    DEFAULT_MARGINS,
    VERDICT_RULE,
    holm,
    parse_margins,
    refinement_check,
    verdict,
)

__all__ = ["ExactAUC", "rank_auc", "VesselMetrics", "ClDice", "BettiErrors", "HD95", "CalibrationError",
           "EnsembleTopologySpread", "EvalMetrics", "betti_numbers", "cldice", "hd95",
           "member_topology", "Interval", "paired_difference", "correlation", "bootstrap_p_value",
           "forward_flops", "image_flops", "DEFAULT_MARGINS", "VERDICT_RULE", "verdict",
           "parse_margins", "holm", "refinement_check"]
