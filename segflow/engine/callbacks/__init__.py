"""Lightning callbacks and logger tweaks."""

from segflow.engine.callbacks.ema import EMA
from segflow.engine.callbacks.epoch_log import EpochLog
from segflow.engine.callbacks.image_logger import ValImageLogger, make_grid
from segflow.engine.callbacks.loggers import TensorBoardLogger
from segflow.engine.callbacks.resume import ExactResume, InterruptCheckpoint
from segflow.engine.callbacks.summary import ModelSummary
from segflow.engine.callbacks.timing import LoaderWait, TimeToDice

__all__ = ["EMA", "EpochLog", "ExactResume", "InterruptCheckpoint", "LoaderWait", "ModelSummary",
           "TensorBoardLogger",
           "TimeToDice", "ValImageLogger", "make_grid"]
