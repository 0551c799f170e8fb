"""Benchmarks: training throughput and MFU, sampling cost vs NFE, data-loader throughput.

``python -m segflow.bench`` (``make bench``) composes each model preset from
``conf/model/`` with Hydra, builds it with ``hydra.utils.instantiate`` and measures it on
synthetic tensors; the data loader is measured on synthetic 512×512 grayscale images
through the real :class:`~segflow.data.SegDataModule`. Results go to
``outputs/bench/<time>/bench.{json,md}``. Speed claims in this project come from here,
never from timed tests.
"""

from typing import Any

__all__ = ["run_bench"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that ``python -m segflow.bench.loader`` runs its module once.
    if name == "run_bench":
        from segflow.bench.runner import run_bench

        return run_bench
    raise AttributeError(name)
