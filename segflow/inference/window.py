"""Whole-image inference (pure torch): pad to the network's multiple and crop back, or a
sliding window with Gaussian blending for images above a configured size.

Public functions (also used by the eval / predict entry points):

* :func:`predict_image` — the one to call: whole image or sliding window by size;
* :func:`predict_whole` — pad to ``net.size_multiple``, predict, crop back;
* :func:`predict_sliding` — overlapping tiles blended with a Gaussian weight map;
* :func:`pad_to_multiple`, :func:`gaussian_weight`, :func:`tile_starts` — the pieces.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.infra.errors import ConfigError
from segflow.methods.base import Method, Prediction

INFERENCE_KEYS = ("tile_size", "overlap", "max_whole_size", "sigma_scale", "tile_batch")


def resolve_device(name: str) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; anything else as given.

    Raises:
        ConfigError: a CUDA device was asked for on a machine without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name} is not a device; use auto, cpu, cuda or cuda:<index>"
                          ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu "
                          f"(or device=auto)")
    return device


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) at the bottom/right so H and W are multiples of ``multiple``.

    Reflection padding (edge replication when the image is too small to reflect), so the
    network sees plausible context rather than a black border. Returns the padded
    tensor and the original (H, W).
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def _crop(x: Tensor | None, hw: tuple[int, int]) -> Tensor | None:
    return None if x is None else x[..., : hw[0], : hw[1]]


def predict_whole(method: Method, net: nn.Module, image: Tensor,
                  generator: torch.Generator | None = None) -> Prediction:
    """Segment whole images of any size: pad to ``net.size_multiple``, predict, crop back.

    Args:
        image: (B, C, H, W) normalised images.
    Returns:
        :class:`Prediction` at the input's (H, W).
    """
    padded, hw = pad_to_multiple(image, getattr(net, "size_multiple", 1))
    pred = method.predict(net, padded, generator=generator)
    return Prediction(probs=_crop(pred.probs, hw), uncertainty=_crop(pred.uncertainty, hw),
                      samples=_crop(pred.samples, hw), nfe=pred.nfe)


def gaussian_weight(tile: int, sigma_scale: float = 0.125, device: torch.device | None = None
                    ) -> Tensor:
    """(tile, tile) Gaussian importance map, peak 1 at the centre, σ = ``sigma_scale`` · tile.

    Tile borders — where a network sees the least context — get little weight, so
    overlapping tiles blend without seams (the weighting of MONAI's ``mode="gaussian"``).
    Clamped away from 0 so every pixel keeps a positive total weight.
    """
    coords = torch.arange(tile, dtype=torch.float32, device=device) - (tile - 1) / 2
    g = torch.exp(-0.5 * (coords / max(sigma_scale * tile, 1e-6)) ** 2)
    w = g[:, None] * g[None, :]
    return (w / w.max()).clamp_min(1e-3)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering [0, length) with at most ``stride``
    between starts; the last tile ends exactly at ``length`` (``length >= tile``)."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(n)})


class TileStepNoise:
    """Per-step noise for one batch of sliding-window tiles, cut from whole-image fields.

    Each call draws the next whole-image field of standard Gaussian noise, (B, N, C, H, W)
    (the same values as the (B·N, C, H, W) field a whole-image ``method.predict`` draws),
    from a generator started at ``state``, and returns the crops of the tiles in ``boxes``
    stacked as the tile batch is (tile, image, member). Every tile batch replays the same
    stream from the same ``state``, so at every step overlapping tiles add the same noise
    where they overlap, and the fields are exactly those a whole-image prediction from
    that generator state would draw.

    Args:
        state: the generator state the stream starts from (``Generator.get_state()``).
        device: the generator's device.
        shape: (B, N, C, H, W) of the whole (padded) image's fields.
        boxes: top-left corners of this batch's tiles.
        tile: tile side.
        out_device: where the crops go (the images' device).
    """

    def __init__(self, state: Tensor, device: torch.device, shape: tuple[int, ...],
                 boxes: list[tuple[int, int]], tile: int, out_device: torch.device):
        self.generator = torch.Generator(device=device)
        self.generator.set_state(state)
        self.shape, self.boxes, self.tile, self.out_device = shape, boxes, tile, out_device

    def __call__(self) -> Tensor:
        _, _, c, _, _ = self.shape
        field = torch.randn(self.shape, generator=self.generator, device=self.generator.device)
        t = self.tile
        return torch.cat([field[..., y: y + t, x: x + t] for y, x in self.boxes]
                         ).reshape(-1, c, t, t).to(self.out_device)


@torch.no_grad()
def predict_sliding(method: Method, net: nn.Module, image: Tensor, tile_size: int,
                    overlap: float = 0.25, sigma_scale: float = 0.125, tile_batch: int = 4,
                    generator: torch.Generator | None = None) -> Prediction:
    """Sliding-window prediction with Gaussian blending.

    Tiles of ``tile_size`` (rounded up to ``net.size_multiple``) overlap by ``overlap``;
    each output pixel is the Gaussian-weighted mean of the tiles covering it. For a
    :class:`~segflow.methods.base.GenerativeMethod`, **one** noise field of the whole
    image's size is drawn (from ``generator``) and each tile starts from its crop of it;
    samplers that add noise at every step (DDPM, DDIM with η > 0) take it from one
    whole-image field per step in the same way (:class:`TileStepNoise`). Overlapping
    tiles therefore follow the same trajectory and agree where they meet, and with a
    per-pixel network the result equals the whole-image prediction from the same generator.

    Args:
        image: (B, C, H, W) normalised images; smaller than a tile is padded (reflection).
        tile_size: tile side in pixels.
        overlap: fraction of a tile shared with its neighbour, in [0, 1).
        sigma_scale: Gaussian σ as a fraction of the tile side.
        tile_batch: tiles per network call (memory vs. speed).

    Returns:
        :class:`Prediction` at (H, W): ``probs`` (B, C_out, H, W); ``uncertainty`` and
        ``samples`` (B, N, C_out, H, W) blended the same way when the method returns them;
        ``nfe``: the network evaluations of every tile batch, summed (per ensemble member).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"inference.overlap must be in [0, 1), got {overlap}")
    multiple = getattr(net, "size_multiple", 1)
    tile = max(multiple, math.ceil(int(tile_size) / multiple) * multiple)
    b, _, h, w = image.shape
    # Pad to at least one tile, then to the multiple (a tile that fits is already aligned).
    padded = image
    if h < tile or w < tile:
        ph, pw = max(0, tile - h), max(0, tile - w)
        mode = "reflect" if ph < h and pw < w else "replicate"
        padded = F.pad(image, (0, pw, 0, ph), mode=mode)
    H, W = padded.shape[-2:]
    stride = max(1, int(round(tile * (1 - overlap))))
    boxes = [(y, x) for y in tile_starts(H, tile, stride) for x in tile_starts(W, tile, stride)]

    shape = method.noise_shape(net, padded)  # (B·N, C_out, H, W) or None
    noise = None if shape is None else torch.randn(shape, generator=generator,
                                                   device=image.device, dtype=image.dtype)
    step_stream: torch.Generator | None = None
    if shape is not None and method.stochastic_steps():
        # The per-step fields continue the generator's stream, as a whole image's would;
        # without a generator, a seeded one from the global RNG keeps tiles consistent.
        step_stream = generator
        if step_stream is None:
            seed = int(torch.randint(2**62, (1,)))
            step_stream = torch.Generator(device=image.device).manual_seed(seed)
        step_state = step_stream.get_state()
        step_shape = (b, shape[0] // b, *shape[1:])  # (B, N, C_out, H, W)
    weight = gaussian_weight(tile, sigma_scale, image.device)
    acc: dict[str, Tensor] = {}
    norm = torch.zeros((H, W), device=image.device)
    nfe = 0
    for k in range(0, len(boxes), max(1, int(tile_batch))):
        chunk = boxes[k: k + max(1, int(tile_batch))]
        tiles = torch.cat([padded[..., y: y + tile, x: x + tile] for y, x in chunk])  # (T·B, C, t, t)
        kwargs: dict[str, Any] = {"generator": generator}
        if noise is not None:
            kwargs["noise"] = torch.cat([noise[..., y: y + tile, x: x + tile] for y, x in chunk])
        if step_stream is not None:
            kwargs["step_noise"] = step_noise = TileStepNoise(
                step_state, step_stream.device, step_shape, chunk, tile, image.device)
        pred = method.predict(net, tiles, **kwargs)
        nfe += pred.nfe
        parts = {"probs": pred.probs, "uncertainty": pred.uncertainty, "samples": pred.samples}
        for name, value in parts.items():
            if value is None:
                continue
            if name not in acc:
                acc[name] = torch.zeros((b, *value.shape[1:-2], H, W), device=image.device,
                                        dtype=torch.float32)
            per_tile = value.float().reshape(len(chunk), b, *value.shape[1:])
            for i, (y, x) in enumerate(chunk):
                acc[name][..., y: y + tile, x: x + tile] += per_tile[i] * weight
        for y, x in chunk:
            norm[y: y + tile, x: x + tile] += weight
    if step_stream is not None:  # leave the generator where a whole image would have
        step_stream.set_state(step_noise.generator.get_state())
    out = {name: (v / norm)[..., :h, :w] for name, v in acc.items()}
    return Prediction(probs=out["probs"], uncertainty=out.get("uncertainty"),
                      samples=out.get("samples"), nfe=nfe)


def check_inference(settings: dict[str, Any] | None) -> dict[str, Any]:
    """Validate inference settings (``model.inference`` / ``data.inference``).

    Raises:
        ValueError: an unknown key or an impossible value, naming it.
    """
    # Plain Python values (checkpoint hyper-parameters load with weights_only=True).
    s = {str(k): v for k, v in dict(settings or {}).items() if v is not None}
    unknown = sorted(set(s) - set(INFERENCE_KEYS))
    if unknown:
        raise ValueError(f"inference settings have unknown keys {unknown}; valid: {list(INFERENCE_KEYS)}")
    if s.get("max_whole_size") is not None and s.get("tile_size") is None:
        raise ValueError("inference.max_whole_size is set but inference.tile_size is not; "
                         "set the sliding-window tile side (e.g. the training crop data.image_size)")
    if s.get("tile_size") is not None and int(s["tile_size"]) < 1:
        raise ValueError(f"inference.tile_size must be >= 1, got {s['tile_size']}")
    if not 0 <= float(s.get("overlap", 0.25)) < 1:
        raise ValueError(f"inference.overlap must be in [0, 1), got {s['overlap']}")
    return s


# The dihedral transforms in the order test-time augmentation adds them: identity, horizontal
# flip, vertical flip, half turn, then the quarter turns and the two transposes. Each is
# (quarter turns, mirror the last axis afterwards).
_DIHEDRAL = ((0, False), (0, True), (2, True), (2, False), (1, False), (3, False), (1, True),
             (3, True))


def dihedral(x: Tensor, index: int) -> Tensor:
    """The ``index``-th transform of :data:`_DIHEDRAL` applied to (..., H, W)."""
    turns, mirror = _DIHEDRAL[index]
    x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return x.flip(-1) if mirror else x


def dihedral_inverse(x: Tensor, index: int) -> Tensor:
    """Undo :func:`dihedral` (the same ``index``)."""
    turns, mirror = _DIHEDRAL[index]
    x = x.flip(-1) if mirror else x
    return torch.rot90(x, -turns, dims=(-2, -1)) if turns else x


def predict_image(method: Method, net: nn.Module, image: Tensor,
                  generator: torch.Generator | None = None, tile_size: int | None = None,
                  overlap: float = 0.25, max_whole_size: int | None = None,
                  sigma_scale: float = 0.125, tile_batch: int = 4) -> Prediction:
    """Segment images of any size: whole (padded) when ``max(H, W) <= max_whole_size``
    (or ``max_whole_size`` is None), else a Gaussian-blended sliding window of
    ``tile_size`` tiles (``max_whole_size: 0`` always tiles).

    With ``method.tta = n > 1`` (test-time augmentation), the image is also predicted
    under the first n of: horizontal flip, vertical flip, half turn, quarter turns,
    transposes; each prediction is mapped back and every pass (× every ensemble member)
    becomes a member: ``probs`` is their mean, ``uncertainty`` their per-pixel standard
    deviation (Wang et al., "Aleatoric uncertainty estimation with test-time augmentation
    for medical image segmentation", Neurocomputing 2019), and the image costs n times the
    network evaluations.

    Args:
        image: (B, C, H, W) normalised images.
        generator: reproducible sampling for generative methods.
        tile_size, overlap, sigma_scale, tile_batch: see :func:`predict_sliding`.
        max_whole_size: largest image side predicted in one pass.

    Returns:
        :class:`Prediction` at the input's (H, W).
    """
    passes = int(getattr(method, "tta", 1))
    min_component = int(getattr(method, "min_component", 0) or 0)
    if min_component > 0 and getattr(method, "generative", False):
        raise ValueError("min_component is a setting of one-pass methods")

    def one(x: Tensor) -> Prediction:
        if max_whole_size is None or max(x.shape[-2:]) <= int(max_whole_size):
            return predict_whole(method, net, x, generator)
        if tile_size is None:
            raise ValueError("inference.tile_size is needed when images exceed max_whole_size")
        return predict_sliding(method, net, x, int(tile_size), overlap, sigma_scale, tile_batch,
                               generator)

    if passes == 1:
        return remove_small_components(one(image), min_component)
    members, nfe = [], 0
    for index in range(passes):
        pred = one(dihedral(image, index))
        stack = pred.samples if pred.samples is not None else pred.probs.unsqueeze(1)
        members.append(dihedral_inverse(stack, index))
        nfe = pred.nfe
    samples = torch.cat(members, dim=1)  # (B, passes x members, C, H, W)
    return remove_small_components(
        Prediction(probs=samples.mean(dim=1), uncertainty=samples.std(dim=1, unbiased=False),
                   samples=samples, nfe=nfe), min_component)


def remove_small_components(pred: Prediction, min_size: int, threshold: float = 0.5
                            ) -> Prediction:
    """``pred`` with the probability of every 8-connected foreground component (at
    ``threshold``) smaller than ``min_size`` pixels set to 0 — the usual post-processing
    answer to fragmented masks (spurious islands raise the β0 error), applied to the map so
    every metric sees it. ``min_size`` 0 returns ``pred`` unchanged."""
    if min_size <= 0:
        return pred
    import numpy as np
    from scipy import ndimage

    probs = pred.probs.clone()
    fg = (probs > threshold).cpu().numpy()
    keep = np.ones_like(fg)
    structure = np.ones((3, 3), bool)
    for b in range(fg.shape[0]):
        for c in range(fg.shape[1]):
            labels, n = ndimage.label(fg[b, c], structure=structure)
            if n == 0:
                continue
            sizes = np.bincount(labels.ravel())
            small = np.flatnonzero(sizes < min_size)
            small = small[small > 0]
            keep[b, c] = ~np.isin(labels, small)
    probs = probs * torch.from_numpy(keep).to(probs.device, probs.dtype)
    return Prediction(probs=probs, uncertainty=pred.uncertainty, samples=pred.samples, nfe=pred.nfe)
