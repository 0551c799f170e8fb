"""Reading images and masks from disk into numpy, with clear errors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from segflow.data.finite import check_finite_image
from segflow.data.strict import imread_strict
from segflow.infra.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".pgm", ".ppm")


def _decode(path: Path) -> np.ndarray:
    """Decode any supported file to an array (H, W) or (H, W, C), RGB(A) channel order."""
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; check the data folder path")
    arr = imread_strict(path, cv2.IMREAD_UNCHANGED)  # truncated JPEG/PNG: DataError
    if arr is not None and arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    if arr is None:  # OpenCV builds without GIF (or odd TIFFs): fall back to Pillow
        try:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode == "P":
                    im = im.convert("RGB")
                arr = np.asarray(im)
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
            raise DataError(
                f"cannot read {path}: the file is corrupt or not an image ({type(exc).__name__}); "
                f"re-export it (PNG recommended) or remove it from the folder"
            ) from None
    if arr.size == 0:
        raise DataError(f"{path} decodes to an empty image; re-export it or remove it")
    return check_finite_image(arr, path)  # a float TIFF can hold NaN / Inf


def _to_unit_float(arr: np.ndarray) -> np.ndarray:
    """Integer or float pixels → float32 in [0, 1] (8-bit /255, 16-bit /65535)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == bool:
        return arr.astype(np.float32)
    arr = arr.astype(np.float32)
    hi = float(arr.max()) if arr.size else 1.0
    return arr / hi if hi > 1.0 else arr


def read_image(path: str | Path, channels: int = 1, gray_from: str = "luma") -> np.ndarray:
    """Read an image as float32 (H, W, channels) in [0, 1].

    Args:
        path: image file (PNG/JPG/TIF/BMP/GIF/PGM; 8- or 16-bit; gray, RGB or RGBA).
        channels: 1 (grayscale) or 3 (RGB). Gray files are repeated to 3 channels.
        gray_from: how colour becomes one channel: ``luma`` (ITU-R 601) or ``green``
            (the usual choice for fundus images, where vessels contrast best).
    """
    return to_channels(_to_unit_float(_decode(Path(path))), channels, gray_from)


def to_channels(img: np.ndarray, channels: int = 1, gray_from: str = "luma") -> np.ndarray:
    """float32 (H, W) or (H, W, 1|3|4) in [0, 1], RGB(A) order → (H, W, ``channels``): the
    channel handling of :func:`read_image`, for arrays already in memory."""
    if img.ndim == 3 and img.shape[2] == 4:  # drop alpha
        img = img[..., :3]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if channels == 1:
        if img.ndim == 3:
            if gray_from == "green":
                img = img[..., 1]
            elif gray_from == "luma":
                img = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            else:
                raise ConfigError(f"data.gray_from={gray_from} is not understood; use luma "
                                  f"(ITU-R 601 weights) or green (fundus images)")
        return np.ascontiguousarray(img[..., None], dtype=np.float32)
    if channels == 3:
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        return np.ascontiguousarray(img, dtype=np.float32)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary mask as uint8 (H, W) in {0, 1}.

    Masks may be 0/1, 0/255 or 0/65535, gray or colour (any non-zero channel counts);
    any mask with exactly two levels is binary (the higher one is foreground).
    A non-binary mask (e.g. anti-aliased or JPEG-compressed) is thresholded at half its
    range, with a warning that counts the pixels that were neither 0 nor the maximum.
    """
    return read_mask_counted(path)[0]


def read_mask_counted(path: str | Path) -> tuple[np.ndarray, int]:
    """:func:`read_mask` that also returns how many pixels were neither 0 nor the maximum
    (0 for a clean binary mask), so callers such as ``segflow.prepare`` can report it."""
    path = Path(path)
    arr = _decode(path)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    values = np.unique(arr)
    if len(values) == 2 and values[0] < values[1] and values[1] > 1:
        # Two levels are binary whatever they are: palette GIFs such as DRIVE's second
        # observer store background/vessel as (4, 2, 4) / (252, 254, 252).
        return (arr == values[1]).astype(np.uint8), 0
    if arr.dtype == np.uint8:
        top = 255 if arr.max() > 1 else 1
    elif arr.dtype == np.uint16:
        top = 65535 if arr.max() > 255 else (255 if arr.max() > 1 else 1)
    else:
        arr = arr.astype(np.float32)
        top = float(arr.max()) if arr.max() > 1 else 1.0
    off = int(np.count_nonzero((arr != 0) & (arr != top)))
    if off:
        log.warning(
            "mask %s is not binary: %d pixels are neither 0 nor %s; thresholded at %s",
            path, off, top, top / 2,
        )
    return (arr > top / 2).astype(np.uint8), off


def list_images(folder: Path) -> dict[str, Path]:
    """Map file stem → path for the image files of ``folder`` (sorted, hidden files skipped).

    Raises:
        DataError: two files share a stem (``a.png`` and ``a.tif``): the pairing would be ambiguous.
    """
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in IMAGE_EXTS:
            continue
        if p.stem in found:
            raise DataError(
                f"{found[p.stem]} and {p} have the same name stem in {folder}; "
                f"keep one of them so images and labels pair unambiguously"
            )
        found[p.stem] = p
    return found


def decode_image(path: str | Path) -> np.ndarray:
    """Decode a file to its raw pixel array (H, W) or (H, W, C) in RGB(A) order, keeping
    the file's dtype (uint8, uint16, ...): what ``segflow.prepare`` re-writes losslessly.

    Raises:
        DataError: the file is missing, corrupt or not an image.
    """
    return _decode(Path(path))


def require_pairs(images: dict[str, Path], labels: dict[str, Path],
                  expected_label: Callable[[str], str], expected_image: Callable[[str], str]
                  ) -> None:
    """Every image has a label and every label an image (same key); else a DataError naming
    the first file without its partner and where the partner was expected
    (``expected_label(key)``, ``expected_image(key)``)."""
    for key, path in images.items():
        if key not in labels:
            raise DataError(f"image {path} has no label: expected {expected_label(key)}; "
                            f"add the mask or remove the image")
    for key, path in labels.items():
        if key not in images:
            raise DataError(f"label {path} has no image: expected {expected_image(key)}; "
                            f"add the image or remove the label")
