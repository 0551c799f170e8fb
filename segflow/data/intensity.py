"""Per-image intensity normalisation applied once at load time (before caching and crops).

Both options keep images in [0, 1], so the photometric augmentation (brightness,
contrast, gamma, noise) and the fixed ``(x - mean) / std`` that follow stay valid.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

KEYS = ("stretch", "clahe", "clahe_tiles")


def check_intensity(options: dict[str, Any] | None) -> dict[str, Any]:
    """Validate ``data.intensity``; returns a plain dict.

    Raises:
        ValueError: an unknown key or a value out of range.
    """
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(KEYS))
    if unknown:
        raise ValueError(f"data.intensity has unknown keys {unknown}; valid: {list(KEYS)}")
    stretch = opts.get("stretch")
    if stretch is not None and not (len(stretch) == 2 and 0 <= stretch[0] < stretch[1] <= 100):
        raise ValueError(f"data.intensity.stretch must be [low, high] percentiles in [0, 100], "
                         f"got {stretch}")
    clahe = opts.get("clahe")
    if clahe is not None and float(clahe) <= 0:
        raise ValueError(f"data.intensity.clahe (the clip limit) must be > 0, got {clahe}")
    return opts


def normalise_intensity(image: np.ndarray, fov: np.ndarray | None = None,
                        stretch: tuple[float, float] | list[float] | None = None,
                        clahe: float | None = None, clahe_tiles: int = 8) -> np.ndarray:
    """Per-image intensity normalisation, channel by channel.

    Args:
        image: float32 (H, W, C) in [0, 1].
        fov: uint8 (H, W) field of view; statistics use pixels inside it only (the black
            surround of fundus photographs would otherwise dominate the percentiles).
        stretch: ``[low, high]`` percentiles mapped to 0 and 1 (clipped): evens out
            exposure between images.
        clahe: clip limit of contrast-limited adaptive histogram equalisation (Zuiderveld,
            "Contrast Limited Adaptive Histogram Equalization", Graphics Gems IV, 1994),
            on 8-bit values (the clip limit's usual meaning: 256 bins); e.g. 2.0.
        clahe_tiles: CLAHE grid (tiles per side).

    Returns:
        float32 (H, W, C) in [0, 1]; pixels outside the FOV are set to 0.
    """
    out = image.astype(np.float32, copy=True)
    inside = fov.astype(bool) if fov is not None else np.ones(image.shape[:2], bool)
    for c in range(out.shape[2]):
        ch = out[..., c]
        if stretch is not None and inside.any():
            lo, hi = np.percentile(ch[inside], [float(stretch[0]), float(stretch[1])])
            ch = np.clip((ch - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        if clahe is not None:
            op = cv2.createCLAHE(clipLimit=float(clahe), tileGridSize=(clahe_tiles, clahe_tiles))
            ch = op.apply(np.round(ch * 255).astype(np.uint8)).astype(np.float32) / 255.0
        out[..., c] = np.where(inside, ch, 0.0) if fov is not None else ch
    return out
