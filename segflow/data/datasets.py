"""Folder datasets: ``<split_dir>/{image,label[,fov]}/`` pairs matched by file stem.

Everything is decoded once at set-up (in the main process, so bad files raise a
clear :class:`~segflow.infra.errors.DataError` there, never inside a worker) and kept in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segflow.data.io import IMAGE_EXTS, list_images, read_image, read_mask, require_pairs
from segflow.data.preprocess import normalise
from segflow.infra.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One decoded image with its masks.

    Attributes:
        name: file name of the image (e.g. ``0001.png``).
        image: float32 (H, W, C) in [0, 1].
        mask: uint8 (H, W) in {0, 1}, or None for unlabelled images.
        fov: uint8 (H, W) in {0, 1} field-of-view mask, or None (whole image counts).
    """

    name: str
    image: np.ndarray
    mask: np.ndarray | None
    fov: np.ndarray | None


def load_split(split_dir: str | Path, image_dir: str = "image", label_dir: str = "label",
               fov_dir: str | None = "fov", channels: int = 1, gray_from: str = "luma",
               require_labels: bool = True) -> list[Sample]:
    """Decode every (image, label[, fov]) pair of one split folder.

    Raises:
        DataError: missing folder, no images, an image without label (or a label without
            image), a size mismatch or an unreadable file — naming the path and the fix.
    """
    split_dir = Path(split_dir)
    img_folder = split_dir / image_dir
    if not split_dir.is_dir():
        raise DataError(
            f"data folder {split_dir} does not exist; point data.root (or data.train_dir / "
            f"data.val_dir / data.test_dir) at a folder holding {image_dir}/ and {label_dir}/, "
            f"or convert a public dataset with `python -m segflow.prepare`"
        )
    if not img_folder.is_dir():
        raise DataError(f"{split_dir} has no {image_dir}/ folder; put the images in {img_folder} "
                        f"(or set data.image_dir to the folder's name)")
    images = list_images(img_folder)
    if not images:
        raise DataError(f"no images in {img_folder} (looked for {', '.join(IMAGE_EXTS)}); "
                        f"add images or fix the path")
    labels: dict[str, Path] = {}
    if require_labels:
        lab_folder = split_dir / label_dir
        if not lab_folder.is_dir():
            raise DataError(f"{split_dir} has no {label_dir}/ folder; put the masks in {lab_folder} "
                            f"(or set data.label_dir to the folder's name)")
        labels = list_images(lab_folder)
        require_pairs(images, labels, lambda stem: f"{lab_folder}/{stem}.<ext>",
                      lambda stem: f"{img_folder}/{stem}.<ext>")
    fovs: dict[str, Path] = {}
    if fov_dir and (split_dir / fov_dir).is_dir():
        fovs = list_images(split_dir / fov_dir)
        missing = sorted(set(images) - set(fovs))
        if missing:
            raise DataError(f"{split_dir / fov_dir} has no FOV mask for {missing[:3]}"
                            f"{' ...' if len(missing) > 3 else ''}; add them or remove the fov/ folder")
    samples = []
    for stem, path in images.items():
        image = read_image(path, channels, gray_from)
        mask = read_mask(labels[stem]) if require_labels else None
        fov = read_mask(fovs[stem]) if stem in fovs else None
        for what, other in (("label", mask), ("FOV mask", fov)):
            if other is not None and other.shape != image.shape[:2]:
                src = labels[stem] if what == "label" else fovs[stem]
                raise DataError(
                    f"size mismatch: image {path} is {image.shape[0]}x{image.shape[1]} but its "
                    f"{what} {src} is {other.shape[0]}x{other.shape[1]}; resize one to match"
                )
        samples.append(Sample(path.name, image, mask, fov))
    return samples


def center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` window of an (H, W, ...) array (whole sides that are
    already at most ``size``)."""
    h, w = array.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return array[top: top + size, left: left + size]


def _to_tensors(image: np.ndarray, mask: np.ndarray | None, valid: np.ndarray,
                mean: float, std: float) -> dict[str, torch.Tensor]:
    out = {
        "image": normalise(image, mean, std),
        "valid": torch.from_numpy(valid[None].astype(np.float32)),
    }
    if mask is not None:
        out["mask"] = torch.from_numpy(mask[None].astype(np.float32))
    return out


class RandomCropDataset(Dataset):
    """Training samples: item *i* is ``num_samples_per_image`` augmented random crops of
    image *i*, stacked as (N, C, h, w); :func:`collate_crops` flattens them into the batch.

    Randomness: given a key ``(index, seed)`` — what
    :class:`~segflow.data.datamodule.EpochSampler` yields — the augmentation generator is
    re-seeded with ``seed`` for that item, so the crops are a pure function of (run seed,
    epoch, position in the epoch): the same whatever the number of DataLoader workers,
    DDP ranks, or where a resumed run restarted. Given a plain ``index`` (use outside the
    datamodule), the generator is seeded from ``torch.initial_seed()`` whenever that
    changes (each worker's seed) and otherwise runs on.
    """

    def __init__(self, samples: list[Sample], transform: Any, num_samples_per_image: int,
                 mean: float = 0.5, std: float = 0.5):
        if num_samples_per_image < 1:
            raise ValueError(f"data.num_samples_per_image must be >= 1, got {num_samples_per_image}")
        self.samples, self.transform = samples, transform
        self.num_samples_per_image, self.mean, self.std = num_samples_per_image, mean, std
        self._seeded_with: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, item_seed = key
            self.transform.set_random_seed(item_seed)
            self._seeded_with = None
        else:
            index, seed = key, torch.initial_seed()
            if seed != self._seeded_with:
                self.transform.set_random_seed(seed % 2**32)
                self._seeded_with = seed
        s = self.samples[index]
        valid = s.fov if s.fov is not None else np.ones(s.image.shape[:2], np.uint8)
        crops = [self.transform(image=s.image, mask=s.mask, valid=valid)
                 for _ in range(self.num_samples_per_image)]
        tensors = [_to_tensors(c["image"], c["mask"], c["valid"], self.mean, self.std) for c in crops]
        out: dict[str, Any] = {k: torch.stack([t[k] for t in tensors]) for k in tensors[0]}
        out["name"] = [s.name] * self.num_samples_per_image
        return out


def collate_crops(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate items of N crops each into one batch of (B·N, ...) tensors."""
    out: dict[str, Any] = {}
    for key in items[0]:
        if key == "name":
            out[key] = [n for it in items for n in it[key]]
        else:
            out[key] = torch.cat([it[key] for it in items])
    return out


class WholeImageDataset(Dataset):
    """Validation / test / prediction samples: whole images at native size.

    ``crop``: evaluate the central ``crop`` x ``crop`` window of each image only (quick
    smoke checks; None = whole images).

    Item: ``image`` (C, H, W) normalised, ``mask`` (1, H, W) when labelled, ``valid``
    (1, H, W) FOV (ones when none), ``name``, ``index``. The network-multiple padding and
    sliding window are applied by the model, which knows its multiple.
    """

    def __init__(self, samples: list[Sample], mean: float = 0.5, std: float = 0.5,
                 crop: int | None = None):
        self.samples, self.mean, self.std, self.crop = samples, mean, std, crop

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        valid = s.fov if s.fov is not None else np.ones(s.image.shape[:2], np.uint8)
        image, mask = s.image, s.mask
        if self.crop:  # the central crop x crop (smoke checks: debug=default)
            image, mask, valid = (None if a is None else center_crop(a, self.crop)
                                  for a in (image, mask, valid))
        out: dict[str, Any] = _to_tensors(image, mask, valid, self.mean, self.std)
        out["name"] = s.name
        out["index"] = index
        return out
