"""Lightning callbacks and logger tweaks."""

from segflow.callbacks.ema import EMA
from segflow.callbacks.image_logger import ValImageLogger, make_grid
from segflow.callbacks.loggers import TensorBoardLogger

__all__ = ["EMA", "TensorBoardLogger", "ValImageLogger", "make_grid"]
