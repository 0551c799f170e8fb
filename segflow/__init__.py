"""segflow: vessel segmentation with supervised, diffusion and flow-matching models."""

__version__ = "0.1.0"

# The resolvers conf/ uses to choose output folders (segflow_unique, segflow_name).
from segflow import rundirs as _rundirs  # noqa: E402,F401
