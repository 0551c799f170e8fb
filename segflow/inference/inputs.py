"""What :meth:`segflow.inference.api.Run.predict` accepts, as a list of images, and batching them.

Forms (``Run.predict`` returns one :class:`~segflow.inference.api.Segmentation` for the first two,
a list in input order for the others):

* an (H, W) or (H, W, C) array, C in 1, 3, 4 (RGB order), uint8 / uint16 / bool / float;
* a path to an image file;
* an (N, H, W) or (N, H, W, C) stack of N images (a 3-D array whose last side is 1, 3 or 4
  is one colour image: pass a list for a stack of images that narrow);
* a list or tuple of paths and/or arrays (any sizes);
* a folder: every image file in it (sorted by name; see :func:`segflow.data.io.list_images`).

Anything else is refused with one sentence saying what is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segflow.data.finite import check_finite_input
from segflow.data.io import IMAGE_EXTS, list_images
from segflow.infra.errors import DataError

ACCEPTED = ("an (H, W[, C]) image array, an (N, H, W[, C]) stack, a path to an image, "
            "a list of paths or arrays, or a folder of images")


@dataclass
class Item:
    """One image to predict: ``name`` (the file name, or ``#i`` for arrays), its source."""

    name: str
    source: str | Path | np.ndarray
    fov: np.ndarray | None = None


def _check_array(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {arr.dtype}, not pixels; Run.predict takes "
                        f"{ACCEPTED}")
    if arr.size == 0:
        raise DataError(f"{where} of shape {arr.shape} has no pixels; give an image with "
                        f"height and width of at least 1")
    return check_finite_input(arr, where)


def _array_items(arr: np.ndarray, fov: Any) -> tuple[list[Item], bool]:
    arr = _check_array(arr, "the image array")
    single = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))
    if single:
        return [Item("#0", arr, None if fov is None else np.asarray(fov))], True
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[3] not in (1, 3, 4)):
        raise DataError(f"an image array of shape {arr.shape} is neither an (H, W[, C]) image "
                        f"nor an (N, H, W[, C]) stack (C in 1, 3, 4); Run.predict takes "
                        f"{ACCEPTED}")
    fovs = _per_image_fov(fov, len(arr))
    return [Item(f"#{i}", arr[i], fovs[i]) for i in range(len(arr))], False


def _per_image_fov(fov: Any, n: int) -> list[np.ndarray | None]:
    if fov is None:
        return [None] * n
    if len(fov) != n:
        raise DataError(f"fov holds {len(fov)} masks for {n} images; give one per image "
                        f"(a list or an (N, H, W) stack) or none")
    return [np.asarray(f) for f in fov]


def gather(images: Any, fov: Any = None) -> tuple[list[Item], bool]:
    """The images of any accepted form (see the module docstring).

    Returns:
        (items, single): ``single`` when one image was given as an array or a file (the
        caller returns one result, not a list).

    Raises:
        DataError: an unaccepted form, an empty array, list or folder, or a missing path.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        return _array_items(images, fov)
    if isinstance(images, str | Path):
        path = Path(images)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise DataError(f"no images in {path} (looked for {', '.join(IMAGE_EXTS)})")
            fovs = _per_image_fov(fov, len(found))
            return [Item(p.name, p, f) for p, f in zip(found.values(), fovs, strict=True)], False
        if not path.exists():
            raise DataError(f"{path} does not exist; Run.predict takes {ACCEPTED}")
        return [Item(path.name, path, None if fov is None else np.asarray(fov))], True
    if isinstance(images, Sequence) and not isinstance(images, bytes):
        if len(images) == 0:
            raise DataError(f"Run.predict got an empty list; it takes {ACCEPTED}")
        fovs = _per_image_fov(fov, len(images))
        items = []
        for i, (src, f) in enumerate(zip(images, fovs, strict=True)):
            if isinstance(src, torch.Tensor):
                src = src.detach().cpu().numpy()
            if isinstance(src, str | Path):
                if not Path(src).is_file():
                    raise DataError(f"item {i} of the list, {src}, is not an image file; give "
                                    f"paths of image files or arrays")
                items.append(Item(Path(src).name, Path(src), f))
            elif isinstance(src, np.ndarray):
                src = _check_array(src, f"item {i} of the list")
                if not (src.ndim == 2 or (src.ndim == 3 and src.shape[2] in (1, 3, 4))):
                    raise DataError(f"item {i} of the list has shape {src.shape}; each item "
                                    f"must be a path or an (H, W[, C]) image array")
                items.append(Item(f"#{i}", src, f))
            else:
                raise DataError(f"item {i} of the list is a {type(src).__name__}; each item "
                                f"must be a path or an (H, W[, C]) image array")
        return items, False
    raise DataError(f"Run.predict got a {type(images).__name__}; it takes {ACCEPTED}")


def batches(items: list[Item], prepare: Callable[[Item], torch.Tensor], batch_size: int
            ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices, (B, C, H, W) batch) of prepared images of one size, at most ``batch_size``
    each; images of other sizes wait in their own group (memory: a batch per size)."""
    if int(batch_size) < 1:
        raise DataError(f"batch_size={batch_size} must be >= 1")
    pending: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
    for i, item in enumerate(items):
        x = prepare(item)
        group = pending.setdefault(tuple(x.shape), [])
        group.append((i, x))
        if len(group) == int(batch_size):
            yield [j for j, _ in group], torch.stack([t for _, t in group])
            del pending[tuple(x.shape)]
    for group in pending.values():
        yield [j for j, _ in group], torch.stack([t for _, t in group])
