"""Lightning callbacks and logger tweaks."""

from segflow.callbacks.ema import EMA
from segflow.callbacks.epoch_log import EpochLog
from segflow.callbacks.image_logger import ValImageLogger, make_grid
from segflow.callbacks.loggers import TensorBoardLogger
from segflow.callbacks.resume import ExactResume, InterruptCheckpoint
from segflow.callbacks.timing import LoaderWait, TimeToDice

__all__ = ["EMA", "EpochLog", "ExactResume", "InterruptCheckpoint", "LoaderWait", "TensorBoardLogger",
           "TimeToDice", "ValImageLogger", "make_grid"]
