"""Training-time augmentation (albumentations): crop first, then everything else."""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2


def build_train_transform(crop_size: int, augment: dict[str, Any] | None = None) -> A.Compose:
    """Pad-if-needed + random crop, then geometric and photometric augmentation.

    The crop comes first so every later transform works on ``crop_size``² pixels, not on
    the whole image. The ``valid`` target (1 inside the image/FOV) is padded and rotated
    with zeros, so padding and pixels rotated in from outside are excluded from the loss.

    Args:
        crop_size: side of the square crop (``data.image_size``).
        augment: probabilities/limits; keys (all optional): ``hflip``, ``vflip``, ``rot90``
            (probabilities), ``affine`` (probability) with ``scale`` [lo, hi] and
            ``rotate`` (degrees), ``brightness_contrast`` (probability) with ``limit``,
            ``gamma`` (probability), ``noise`` (probability) with ``noise_std`` [lo, hi]
            (fraction of the intensity range). An empty dict disables augmentation.
    """
    aug = dict(augment or {})
    ops: list[A.BasicTransform] = [
        A.PadIfNeeded(crop_size, crop_size, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
        A.RandomCrop(crop_size, crop_size),
    ]
    if aug.get("hflip", 0):
        ops.append(A.HorizontalFlip(p=aug["hflip"]))
    if aug.get("vflip", 0):
        ops.append(A.VerticalFlip(p=aug["vflip"]))
    if aug.get("rot90", 0):
        ops.append(A.RandomRotate90(p=aug["rot90"]))
    if aug.get("affine", 0):
        ops.append(A.Affine(scale=tuple(aug.get("scale", (0.9, 1.1))),
                            rotate=(-aug.get("rotate", 15), aug.get("rotate", 15)),
                            border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=aug["affine"]))
    if aug.get("brightness_contrast", 0):
        lim = aug.get("limit", 0.2)
        ops.append(A.RandomBrightnessContrast(lim, lim, p=aug["brightness_contrast"]))
    if aug.get("gamma", 0):
        ops.append(A.RandomGamma((80, 120), p=aug["gamma"]))
    if aug.get("noise", 0):
        ops.append(A.GaussNoise(std_range=tuple(aug.get("noise_std", (0.01, 0.04))), p=aug["noise"]))
    unknown = set(aug) - {"hflip", "vflip", "rot90", "affine", "scale", "rotate",
                          "brightness_contrast", "limit", "gamma", "noise", "noise_std"}
    if unknown:
        raise ValueError(f"data.augment has unknown keys {sorted(unknown)}")
    return A.Compose(ops, additional_targets={"valid": "mask"}, seed=0)
