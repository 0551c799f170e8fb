"""Procedural vessel images: the built-in default dataset (no downloads).

Two generators, deterministic by seed:

* :func:`synth_xca` — X-ray coronary angiography–like: dark, tapering, branching
  vessel trees (contrast ∝ vessel thickness, overlaps darken), a catheter (a dark tube
  that is *not* a vessel), low-frequency anatomy background, blur and quantum noise.
* :func:`synth_octa` — OCT-angiography–like: bright large vessels growing from the
  border towards a foveal avascular zone (FAZ), a dense capillary mesh, speckle. The
  label is the large vessels (as OCTA-500's ``GT_LargeVessel``), or all vessels.

:func:`ensure_synthetic` writes a dataset once into the folder layout
(``<root>/{train,val,test}/{image,label}/NNNN.png``) and the normal loader reads it back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from segflow.infra.progress import counter

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency random field in roughly [-1, 1] (bicubic upsampled Gaussian noise)."""
    coarse = rng.normal(size=(cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _grow_tree(rng: np.random.Generator, start: np.ndarray, direction: float, radius: float,
               size: int, segments: list[tuple[np.ndarray, np.ndarray, float]],
               min_radius: float, branch_prob: float, curvature: float,
               taper: float, forbid: np.ndarray | None = None, depth: int = 0) -> None:
    """Random-walk a tapering vessel from ``start``, spawning side branches.

    Appends (p0, p1, radius) line segments. Stops when the vessel leaves the image,
    thins below ``min_radius``, or enters ``forbid`` (a boolean map, e.g. the FAZ).
    """
    pos, angle, turn = start.astype(np.float64), direction, 0.0
    step = 2.0
    for _ in range(4 * size):
        turn = 0.85 * turn + rng.normal(0.0, curvature)
        angle += turn
        nxt = pos + step * np.array([np.cos(angle), np.sin(angle)])
        if not (-8 <= nxt[0] < size + 8 and -8 <= nxt[1] < size + 8):
            return
        if forbid is not None:
            x, y = int(nxt[0]), int(nxt[1])
            if 0 <= x < size and 0 <= y < size and forbid[y, x]:
                return
        segments.append((pos.copy(), nxt.copy(), radius))
        pos = nxt
        radius *= taper
        if radius < min_radius:
            return
        if depth < 6 and rng.random() < branch_prob:
            side = rng.choice([-1.0, 1.0])
            child_angle = angle + side * rng.uniform(0.45, 1.1)
            child_r = radius * rng.uniform(0.5, 0.8)
            radius *= rng.uniform(0.85, 0.97)  # the parent loses some calibre at a bifurcation
            if child_r >= min_radius:
                _grow_tree(rng, pos, child_angle, child_r, size, segments, min_radius,
                           branch_prob, curvature, taper, forbid, depth + 1)


def _draw(segments: list[tuple[np.ndarray, np.ndarray, float]], size: int,
          value_of_radius, supersample: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise segments: a binary mask and a max-composited value map, anti-aliased by
    drawing at ``supersample``× and area-downsampling."""
    big = size * supersample
    mask = np.zeros((big, big), np.uint8)
    value = np.zeros((big, big), np.float32)
    for p0, p1, r in segments:
        a = tuple(int(round(c * supersample)) for c in p0)
        b = tuple(int(round(c * supersample)) for c in p1)
        thick = max(1, int(round(2 * r * supersample)))
        cv2.line(mask, a, b, 1, thick, cv2.LINE_8)
        cv2.line(value, a, b, float(value_of_radius(r)), thick, cv2.LINE_8)
    mask_small = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    value_small = cv2.resize(value, (size, size), interpolation=cv2.INTER_AREA)
    return (mask_small >= 0.5).astype(np.uint8), value_small


def synth_xca(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One XCA-like image (float32 (H, W) in [0, 1]) and its vessel mask (uint8 {0, 1})."""
    s = size / 256.0
    # Anatomy: smooth brightness variations, a darker diffuse blob (heart/diaphragm shadow).
    bg = 0.62 + 0.08 * _smooth_field(rng, size, 5) + 0.03 * _smooth_field(rng, size, 12)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = rng.uniform(0, size, 2)
    blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.35 * size) ** 2)))
    bg -= rng.uniform(0.05, 0.15) * blob
    # Vessel trees entering from the upper/left part, as a coronary tree does.
    segments: list = []
    for _ in range(rng.integers(1, 3)):
        edge = rng.integers(0, 3)
        if edge == 0:
            start = np.array([rng.uniform(0.2, 0.8) * size, rng.uniform(0.0, 0.15) * size])
        elif edge == 1:
            start = np.array([rng.uniform(0.0, 0.15) * size, rng.uniform(0.2, 0.8) * size])
        else:
            start = np.array([rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size])
        aim = np.arctan2(size / 2 - start[1], size / 2 - start[0]) + rng.normal(0, 0.5)
        _grow_tree(rng, start, aim, rng.uniform(3.0, 4.5) * s, size, segments,
                   min_radius=0.6 * s, branch_prob=0.06, curvature=0.018, taper=0.993)
    strength = rng.uniform(0.35, 0.55)
    mask, atten = _draw(segments, size, lambda r: strength * min(1.0, 0.45 + r / (4.0 * s)))
    # Catheter: a long smooth tube of constant width and strong contrast — not a vessel.
    cath: list = []
    start = np.array([rng.uniform(0.3, 1.0) * size, size + 4.0])
    _grow_tree(rng, start, -np.pi / 2 + rng.normal(0, 0.3), 2.2 * s, size, cath,
               min_radius=0.0, branch_prob=0.0, curvature=0.01, taper=1.0)
    cath = cath[: int(rng.uniform(0.4, 0.8) * len(cath))]
    _, cath_atten = _draw(cath, size, lambda r: 0.6, supersample=2)
    img = bg * (1.0 - np.maximum(atten, 0.0)) * (1.0 - cath_atten)
    img = cv2.GaussianBlur(img, (0, 0), 0.7)
    # Quantum (Poisson-like) noise grows with the signal; plus a little detector noise.
    img = img + rng.normal(0, 1, img.shape).astype(np.float32) * (0.035 * np.sqrt(np.clip(img, 0, 1)))
    img = img + rng.normal(0, 0.01, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32), mask


def synth_octa(rng: np.random.Generator, size: int = 256, label: str = "large"
               ) -> tuple[np.ndarray, np.ndarray]:
    """One OCTA-like image (float32 (H, W) in [0, 1]) and its mask (uint8 {0, 1}).

    Args:
        label: ``large`` (large vessels only, like OCTA-500 GT_LargeVessel) or ``all``.
    """
    if label not in ("large", "all"):
        raise ValueError(f"synthetic OCTA label must be 'large' or 'all', got {label!r}")
    s = size / 256.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    fc = np.array([size / 2, size / 2]) + rng.normal(0, 0.04 * size, 2)
    faz_r = rng.uniform(0.07, 0.11) * size
    dist = np.sqrt((xx - fc[0]) ** 2 + (yy - fc[1]) ** 2)
    faz = dist < faz_r * (1 + 0.15 * _smooth_field(rng, size, 6))
    # Capillary mesh: each random node joined to its nearest neighbours by thin bright lines.
    n_nodes = int(size * size / 90)
    nodes = rng.uniform(0, size, (n_nodes, 2))
    cap = np.zeros((size, size), np.float32)
    grid: dict[tuple[int, int], list[int]] = {}
    cell = 12.0
    for i, (x, y) in enumerate(nodes):
        grid.setdefault((int(x // cell), int(y // cell)), []).append(i)
    for i, (x, y) in enumerate(nodes):
        gx, gy = int(x // cell), int(y // cell)
        near = [j for dx in (-1, 0, 1) for dy in (-1, 0, 1) for j in grid.get((gx + dx, gy + dy), []) if j != i]
        if not near:
            continue
        d = np.linalg.norm(nodes[near] - nodes[i], axis=1)
        for j in np.array(near)[np.argsort(d)[: rng.integers(2, 4)]]:
            cv2.line(cap, (int(x), int(y)), (int(nodes[j][0]), int(nodes[j][1])),
                     float(rng.uniform(0.3, 0.6)), 1, cv2.LINE_AA)
    cap_mask = (cap > 0.15) & ~faz
    cap[faz] = 0
    # Large vessels: trees from the border towards the fovea, stopping at the FAZ.
    segments: list = []
    for k in range(rng.integers(4, 7)):
        theta = 2 * np.pi * (k + rng.uniform(0, 0.8)) / 6
        start = np.clip(fc + 0.5 * size * np.array([np.cos(theta), np.sin(theta)]), 0, size - 1)
        aim = theta + np.pi + rng.normal(0, 0.25)
        _grow_tree(rng, start, aim, rng.uniform(2.2, 3.5) * s, size, segments,
                   min_radius=0.8 * s, branch_prob=0.04, curvature=0.02, taper=0.994,
                   forbid=faz)
    large_mask, large = _draw(segments, size, lambda r: min(1.0, 0.75 + 0.08 * r / s))
    img = 0.08 + 0.03 * _smooth_field(rng, size, 8) + np.maximum(cap, large)
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    speckle = rng.gamma(4.0, 0.25, img.shape).astype(np.float32)  # mean 1 multiplicative
    img = img * speckle + rng.normal(0, 0.02, img.shape).astype(np.float32)
    mask = large_mask if label == "large" else (large_mask.astype(bool) | cap_mask).astype(np.uint8)
    return np.clip(img, 0, 1).astype(np.float32), mask


GENERATORS = {"xca": synth_xca, "octa": synth_octa}


def ensure_synthetic(root: str | Path, kind: str = "xca", seed: int = 0, image_size: int = 256,
                     n_train: int = 40, n_val: int = 4, n_test: int = 10,
                     options: dict | None = None) -> Path:
    """Write a synthetic dataset in the folder layout once; return its root.

    Idempotent and safe against concurrent writers (several jobs or ranks): the dataset
    is generated in a temporary folder beside ``root`` and renamed into place; a
    ``manifest.json`` marks a complete dataset and records the parameters, which must
    match on later calls.
    """
    if kind not in GENERATORS:
        raise ValueError(f"unknown synthetic kind {kind!r}: use one of {sorted(GENERATORS)}")
    root = Path(root)
    params = {"kind": kind, "seed": seed, "image_size": image_size, "n_train": n_train,
              "n_val": n_val, "n_test": n_test, "options": dict(options or {}),
              "version": GENERATOR_VERSION}
    manifest = root / "manifest.json"
    if manifest.is_file():
        existing = json.loads(manifest.read_text())
        if existing != params:
            raise ValueError(
                f"{root} holds a synthetic dataset made with different parameters "
                f"({existing}); delete the folder or set a different data.root"
            )
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp", dir=root.parent))
    try:
        index = 0
        progress = counter(n_train + n_val + n_test, f"synthetic {kind} -> {root.name}", "image")
        for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
            (tmp / split / "image").mkdir(parents=True)
            (tmp / split / "label").mkdir(parents=True)
            for _ in range(count):
                progress.update(1)
                # One generator per image: image i is the same whatever the split sizes before it.
                rng = np.random.default_rng([seed, index])
                image, mask = GENERATORS[kind](rng, image_size, **(options or {}))
                name = f"{index:04d}.png"
                cv2.imwrite(str(tmp / split / "image" / name), np.round(image * 255).astype(np.uint8))
                cv2.imwrite(str(tmp / split / "label" / name), mask * 255)
                index += 1
        progress.close()
        (tmp / "manifest.json").write_text(json.dumps(params, indent=2))
        try:
            os.rename(tmp, root)
            log.info("wrote synthetic %s dataset to %s", kind, root)
        except OSError:
            if not manifest.is_file():  # not another writer's success: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def preview(path: str | Path, per_kind: int = 3, size: int = 256) -> Path:
    """Write a PNG of a few synthetic samples (image | label pairs, XCA row then OCTA row)."""
    rows = []
    for kind, seed in (("xca", 0), ("octa", 0)):
        tiles = []
        for i in range(per_kind):
            image, mask = GENERATORS[kind](np.random.default_rng([seed, i]), size)
            tiles += [image, np.ones((size, 4), np.float32), mask.astype(np.float32),
                      np.ones((size, 12), np.float32)]
        rows += [np.hstack(tiles[:-1]), None]
    width = rows[0].shape[1]
    grid = np.vstack([r if r is not None else np.ones((8, width), np.float32) for r in rows[:-1]])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.round(grid * 255).astype(np.uint8))
    return path


if __name__ == "__main__":  # python -m segflow.data.synthetic docs/synthetic_samples.png
    import sys

    print(preview(sys.argv[1] if len(sys.argv) > 1 else "synthetic_samples.png"))
