"""The one preprocessing of an image, shared by training, evaluation and prediction.

A file (or an array) becomes a network input in three steps, all set by the run's data
config and stored with the run (the resolved config in every checkpoint, and
``preprocess.json`` in the run folder):

1. **read** — channels (1 gray / 3 RGB) and how colour becomes gray (``gray_from``), to
   float32 (H, W, C) in [0, 1] (:func:`segflow.data.io.read_image`);
2. **intensity** — the per-image normalisation ``data.intensity`` (percentile stretch,
   CLAHE; inside the FOV when there is one; :func:`segflow.data.intensity.normalise_intensity`);
3. **normalise** — ``(x - mean) / std`` to a float32 tensor (C, H, W).

The datamodule (training crops, validation/test images), ``segflow.eval`` and
``segflow.predict`` / :func:`segflow.load_run` all go through :class:`Preprocess`, so a
model sees the same pixels when it is trained, evaluated and used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segflow.data.intensity import check_intensity, normalise_intensity
from segflow.data.io import _to_unit_float, read_image, to_channels

KEYS = ("channels", "gray_from", "intensity", "mean", "std")


def normalise(image: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """float (H, W, C) in [0, 1] → float32 tensor (C, H, W) ``(x - mean) / std``."""
    return torch.from_numpy((image.transpose(2, 0, 1) - mean) / std).float()


def array_to_unit(image: np.ndarray, channels: int = 1, gray_from: str = "luma") -> np.ndarray:
    """An in-memory image (H, W), (H, W, 1/3/4), uint8 / uint16 / bool / float, in RGB
    order → float32 (H, W, channels) in [0, 1], exactly as :func:`read_image` does a file."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"an image array must be (H, W) or (H, W, 1|3|4), got shape {arr.shape}")
    return to_channels(_to_unit_float(arr), channels, gray_from)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a network input (see the module docstring).

    Args:
        channels: 1 (gray) or 3 (RGB).
        gray_from: ``luma`` or ``green`` (colour → gray).
        intensity: ``data.intensity`` (``stretch``, ``clahe``, ``clahe_tiles``); empty: none.
        mean, std: ``(x - mean) / std`` of [0, 1] images.
    """

    channels: int = 1
    gray_from: str = "luma"
    intensity: dict[str, Any] = field(default_factory=dict)
    mean: float = 0.5
    std: float = 0.5

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels}")
        if self.gray_from not in ("luma", "green"):
            raise ValueError(f"data.gray_from must be 'luma' or 'green', got {self.gray_from!r}")
        object.__setattr__(self, "intensity", check_intensity(_plain(self.intensity)))

    @classmethod
    def from_data_config(cls, data: Any) -> Preprocess:
        """From a run's ``data`` config (a DictConfig or dict); missing keys take defaults."""
        data = data or {}
        got = {k: _plain(data.get(k)) for k in KEYS if data.get(k) is not None}
        return cls(**got)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- the three steps ------------------------------------------------------------------
    def read(self, source: str | Path | np.ndarray) -> np.ndarray:
        """A file path or an array → float32 (H, W, channels) in [0, 1]."""
        if isinstance(source, (str, Path)):
            return read_image(source, self.channels, self.gray_from)
        return array_to_unit(source, self.channels, self.gray_from)

    def adjust(self, image: np.ndarray, fov: np.ndarray | None = None) -> np.ndarray:
        """Apply ``intensity`` (a no-op when empty)."""
        return normalise_intensity(image, fov, **self.intensity) if self.intensity else image

    def to_tensor(self, image: np.ndarray) -> torch.Tensor:
        return normalise(image, self.mean, self.std)

    def __call__(self, source: str | Path | np.ndarray, fov: np.ndarray | None = None
                 ) -> torch.Tensor:
        """All three steps: a file or array → float32 tensor (C, H, W)."""
        return self.to_tensor(self.adjust(self.read(source), fov))


def _plain(value: Any) -> Any:
    """OmegaConf containers → plain Python (lists, dicts)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value
