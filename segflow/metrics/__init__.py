"""Vessel segmentation metrics as torchmetrics ``Metric``s (exact across DDP ranks).

Pixel overlap and a fast binned AUC (:class:`VesselMetrics`), the exact AUC
(:class:`ExactAUC`), topology (:class:`ClDice`,
:class:`BettiErrors`), boundary distance (:class:`HD95`), calibration
(:class:`CalibrationError`), ensemble topology spread (:class:`EnsembleTopologySpread`),
and all of them together (:class:`EvalMetrics`).
"""

from segflow.metrics.auc import ExactAUC, rank_auc
from segflow.metrics.calibration import CalibrationError
from segflow.metrics.distance import HD95, hd95
from segflow.metrics.ensemble import EnsembleTopologySpread, member_topology
from segflow.metrics.segmentation import VesselMetrics
from segflow.metrics.suite import EvalMetrics
from segflow.metrics.topology import BettiErrors, ClDice, betti_numbers, cldice

__all__ = ["ExactAUC", "rank_auc", "VesselMetrics", "ClDice", "BettiErrors", "HD95", "CalibrationError",
           "EnsembleTopologySpread", "EvalMetrics", "betti_numbers", "cldice", "hd95",
           "member_topology"]
