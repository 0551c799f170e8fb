"""Field-of-view masks for fundus datasets that distribute none (CHASE_DB1).

Fundus photographs show the retina as a bright disc on a black surround. Datasets such as
DRIVE ship a mask of that disc; CHASE_DB1 does not, and the literature evaluating on it
thresholds one from the image (e.g. Fraz et al., IEEE TBME 2012; Li et al., IEEE TMI 2016
— a low threshold on the intensity, then clean-up), so that metrics count pixels inside
the retina only. :func:`threshold_fov` is that rule, written by ``segflow.prepare chase``
as ``fov/<stem>.png``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: The rule, as recorded in ``manifest.json`` (``fov_rule``).
FOV_RULE = ("thresholded: max over channels > 0.1 x the dtype's maximum, 5x5 opening, largest "
            "connected component, holes filled")


def threshold_fov(image: np.ndarray, threshold: float = 0.1, open_px: int = 5) -> np.ndarray:
    """The retina's disc of a fundus photograph, by thresholding.

    Args:
        image: raw pixels (H, W) or (H, W, C), uint8 / uint16 / float in [0, 1].
        threshold: fraction of the dtype's maximum (255, 65535, 1.0) above which a pixel
            is inside; JPEG noise in the black surround stays well below 0.1.
        open_px: side of the square opening that removes isolated bright specks.

    Returns:
        uint8 (H, W) in {0, 1}: the largest connected region above the threshold, holes
        filled (dark vessels or lesions inside the disc stay inside).
    """
    top = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(image.dtype, 1.0)
    level = image.max(axis=2) if image.ndim == 3 else image
    inside = level.astype(np.float32) > threshold * top
    if open_px > 1:
        inside = ndimage.binary_opening(inside, np.ones((open_px, open_px), bool))
    labels, n = ndimage.label(inside)
    if n == 0:
        return np.zeros(level.shape, np.uint8)
    largest = 1 + int(np.argmax(ndimage.sum_labels(inside, labels, range(1, n + 1))))
    return ndimage.binary_fill_holes(labels == largest).astype(np.uint8)


#: Adapters whose datasets get a thresholded FOV mask when a pair has none.
DERIVED_FOV = {"chase": threshold_fov}
