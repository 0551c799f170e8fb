"""Logger tweaks."""

from __future__ import annotations

from pytorch_lightning.loggers import TensorBoardLogger as _TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from segflow.infra.compat import logger_experiment_if_open


class TensorBoardLogger(_TensorBoardLogger):
    """Lightning's TensorBoard logger, kept open between ``fit`` and ``test``.

    Lightning closes the writer at the end of each stage; the next stage then opens a
    second event file in the same folder. Keeping one writer gives exactly one event file
    per run (``segflow.train`` closes it with :meth:`close` at the very end).
    """

    @rank_zero_only
    def finalize(self, status: str) -> None:
        writer = logger_experiment_if_open(self)
        if writer is not None:
            writer.flush()
        self.save()

    @rank_zero_only
    def close(self) -> None:
        super().finalize("success")
