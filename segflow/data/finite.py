"""Non-finite values never pass silently.

* :func:`finite_problem` — how many NaN / Inf values an array holds (None: all finite);
  the one check shared by the file readers and the Python API.
* :func:`check_finite_image` — a float image file (a TIFF can hold NaN) with NaN or Inf
  pixels is refused with one sentence naming the file: segflow does not guess values for
  them (a NaN pixel would turn the whole network output into NaN).
* :func:`check_finite_output` — a network output with NaN / Inf (weights that diverged,
  an input the network cannot handle) stops evaluation or prediction with the image's
  name, instead of writing NaN metrics or an empty mask.
* :func:`check_finite_input` — an array or tensor handed to the Python API
  (``Run.predict``, ``Run.predict_tensor``) with NaN / Inf values: one sentence naming the
  input and the count.
* :func:`check_finite_loss` — a training loss that is NaN / Inf stops training at that
  step (:class:`DivergedError`), before the optimiser writes non-finite weights and before
  any checkpoint of them: the run is marked ``FAILED`` and keeps its earlier checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segflow.infra.errors import ConfigError, DataError


def finite_problem(array: Any) -> str | None:
    """``"12 NaN and 3 Inf values of 4096"`` when ``array`` (NumPy or torch) holds
    non-finite values; None when every value is finite (integer arrays always are)."""
    if hasattr(array, "detach"):  # a torch tensor
        import torch

        if not torch.is_floating_point(array):
            return None
        nan, inf, total = int(torch.isnan(array).sum()), int(torch.isinf(array).sum()), array.numel()
    else:
        arr = np.asarray(array)
        if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.complexfloating):
            return None
        nan, inf, total = int(np.isnan(arr).sum()), int(np.isinf(arr).sum()), arr.size
    if nan == 0 and inf == 0:
        return None
    parts = [f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else ""]
    return f"{' and '.join(p for p in parts if p)} values of {total}"


def check_finite_image(array: np.ndarray, path: str | Path) -> np.ndarray:
    """``array`` (the decoded pixels of ``path``) if every pixel is finite.

    Raises:
        DataError: naming the file and how many pixels are NaN / Inf.
    """
    problem = finite_problem(array)
    if problem is not None:
        raise DataError(f"{path} has {problem.replace('values', 'pixel values')}; segflow does not "
                        f"guess them: replace them in the file (e.g. with 0 or the image's "
                        f"background) and save it again, or remove it from the folder")
    return array


def check_finite_output(probs: Any, name: str) -> None:
    """Stop when the network's output for image ``name`` is not finite.

    Raises:
        DataError: naming the image; nothing is written for it.
    """
    problem = finite_problem(probs)
    if problem is not None:
        raise DataError(f"the network output for {name} is not finite ({problem}): stopped "
                        f"before writing metrics or masks; the checkpoint's weights may have "
                        f"diverged (evaluate an earlier checkpoint, e.g. which=last, or retrain "
                        f"with a lower model.learning_rate) or the image holds values far "
                        f"outside the training range")


def check_finite_batch(probs: Any, names: Any) -> None:
    """:func:`check_finite_output` for a batch (N, ...) of outputs named ``names``: one
    device→host read when every value is finite, then the first bad image is named."""
    import torch

    if bool(torch.isfinite(probs).all()):
        return
    for i, name in enumerate(names):
        check_finite_output(probs[i], str(name))


def check_finite_input(array: Any, where: str) -> Any:
    """``array`` (an image, stack or batch given to the Python API) if every value is finite.

    Raises:
        DataError: naming ``where`` and how many values are NaN / Inf.
    """
    problem = finite_problem(array)
    if problem is not None:
        raise DataError(f"{where} has {problem}; segflow does not guess them: replace them "
                        f"(e.g. numpy.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0)) before "
                        f"predicting")
    return array


class DivergedError(ConfigError):
    """The training loss became NaN / Inf (exit 2): a setting to change, but the run folder
    is kept and marked ``FAILED`` (its log and earlier checkpoints are results)."""

    keeps_run = True


def check_finite_training(values: Any, what: str, step: int, learning_rate: Any,
                          precision: Any, checkpoint: Any = None) -> None:
    """Stop training when ``values`` (the loss, or the network's validation output) hold
    NaN / Inf at optimiser step ``step``; ``what`` names them ("the loss is", "the
    validation output holds"); ``checkpoint``: the newest one saved before, if any.

    Raises:
        DivergedError: naming the step, the values and the settings that usually cause it.
    """
    import torch

    values = values.detach()
    if bool(torch.isfinite(values).all()):
        return
    shown = (f"{float(values.float().flatten()[0])}" if values.numel() == 1
             else finite_problem(values))
    kept = (f"the last good checkpoint, {checkpoint}, is kept (continue from it with "
            f"ckpt_path=...)" if checkpoint else "no checkpoint had been saved yet")
    lr = f"{learning_rate:g}" if isinstance(learning_rate, int | float) else learning_rate
    full = str(precision).split("-")[0] in ("32", "64")
    prec = (f"trainer.precision={precision} (full precision, not the cause)" if full else
            f"trainer.precision=32-true (now {precision}: half precision can overflow)")
    raise DivergedError(
        f"training diverged at step {step}: {what} {shown} (not finite), so training stopped "
        f"before saving those weights; {kept}; lower model.learning_rate (now {lr}), try "
        f"{prec}, set trainer.gradient_clip_val=1.0, or check the data for extreme values")
