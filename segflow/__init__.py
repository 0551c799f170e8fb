"""segflow: vessel segmentation with supervised, diffusion and flow-matching models.

``segflow.load_run(path)`` loads a trained run for prediction (see :mod:`segflow.inference.api`):
``segflow.load_run(run_dir).predict(images)`` takes an array, a stack, files or a folder.
"""

from __future__ import annotations

from typing import Any

from segflow.infra.version import VERSION as __version__  # noqa: F401 - also in checkpoints

__all__ = ["load_run", "Run", "Segmentation"]


def __getattr__(name: str) -> Any:  # the API imports torch/Lightning: only when asked for
    if name in __all__:
        from segflow.inference import api

        return getattr(api, name)
    raise AttributeError(f"module 'segflow' has no attribute {name!r}")


def __dir__() -> list[str]:  # the lazily imported API is listed too
    return sorted({*globals(), *__all__})
