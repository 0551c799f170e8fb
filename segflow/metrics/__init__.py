"""Vessel segmentation metrics as torchmetrics ``Metric``s (exact across DDP ranks)."""

from segflow.metrics.segmentation import VesselMetrics

__all__ = ["VesselMetrics"]
