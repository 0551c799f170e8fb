"""The model summary at the start of fitting, without a column of zeros."""

from __future__ import annotations

import logging
from typing import Any

from pytorch_lightning.callbacks import ModelSummary as LightningModelSummary

from segflow.infra.compat import summary_table_without_flops

log = logging.getLogger("pytorch_lightning.callbacks.model_summary")


class ModelSummary(LightningModelSummary):
    """Lightning's summary (layers, parameters, size, modes); the FLOPs column and total
    only when they were counted (never for segflow's modules, which have no
    ``example_input_array``: Lightning would print ``Total FLOPs: 0``)."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int,
                  trainable_parameters: int, model_size: float,
                  total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        if total_flops:
            LightningModelSummary.summarize(summary_data, total_parameters, trainable_parameters,
                                            model_size, total_training_modes, total_flops,
                                            **summarize_kwargs)
            return
        log.info("\n%s", summary_table_without_flops(summary_data, total_parameters,
                                                     trainable_parameters, model_size,
                                                     total_training_modes))
