"""Lightning callbacks and logger tweaks."""

from segflow.callbacks.image_logger import ValImageLogger, make_grid
from segflow.callbacks.loggers import TensorBoardLogger

__all__ = ["TensorBoardLogger", "ValImageLogger", "make_grid"]
