"""segflow: vessel segmentation with supervised, diffusion and flow-matching models."""

__version__ = "0.1.0"
