"""Convert a public dataset's native layout into segflow's folder layout, or check one.

``python -m segflow.prepare KIND SOURCE DEST`` finds the pairs (see
:mod:`segflow.data.prepare.adapters`), decodes and validates **every** pair (readable, same size,
binary masks — anything else thresholded with a count), writes
``DEST/{train,val,test}/{image,label[,fov,label_2nd]}/<stem>.png`` (lossless PNG; images
keep their bit depth and channels, masks become 0/255) and ``DEST/manifest.json``
(counts, sizes, value ranges, skipped files, SHA-256 of every written file).

Safe to repeat: a destination already prepared from the same source and options is left
as it is; anything else is built in a hidden staging folder beside ``DEST`` and moved into
place only when complete, so a failure never leaves a half-written dataset. Only files
segflow wrote (listed in the manifest) are ever replaced: files the user added are kept
(``--force`` refuses while they are there), files edited since are kept unless ``--force``,
and another dataset kind is never prepared into a prepared folder
(:mod:`segflow.data.prepare.ownership`).

``--check`` validates without writing: ``python -m segflow.prepare drive SRC --check``
(a native download) or ``python -m segflow.prepare folder data/xca_full --check``
(your own layout).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segflow.data.datasets import load_split
from segflow.data.io import decode_image, read_mask_counted
from segflow.data.prepare.adapters import ADAPTERS, SPLITS, Found, Pair, find_pairs
from segflow.data.prepare.fov import DERIVED_FOV, FOV_RULE
from segflow.data.prepare.ownership import check_dest, inspect_dest, install
from segflow.infra.errors import DataError
from segflow.infra.progress import bar

log = logging.getLogger("segflow.prepare")

MANIFEST = "manifest.json"
FORMAT = 1


@dataclass
class Checked:
    """One validated pair, decoded.

    Attributes:
        pair: where it came from.
        image: raw pixels (H, W) or (H, W, C), the file's dtype.
        masks: sub-folder name (``label``, ``fov``, ``label_2nd``) → uint8 (H, W) in {0, 1}.
        nonbinary: sub-folder name → pixels that were neither 0 nor the maximum.
    """

    pair: Pair
    image: np.ndarray
    masks: dict[str, np.ndarray]
    nonbinary: dict[str, int] = field(default_factory=dict)


def _validate(pair: Pair) -> Checked:
    """Decode one pair and check it; raises DataError naming the file and the fix."""
    image = decode_image(pair.image)
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise DataError(f"{pair.image} has {image.shape[2]} channels; segflow reads gray, RGB "
                        f"or RGBA images — re-export it as one of those")
    sources = {"label": pair.label, **({"fov": pair.fov} if pair.fov else {}), **pair.extra}
    checked = Checked(pair, image, {})
    for name, path in sources.items():
        mask, off = read_mask_counted(path)
        if mask.shape != image.shape[:2]:
            raise DataError(f"size mismatch: image {pair.image} is {image.shape[0]}x{image.shape[1]} "
                            f"but its {name} {path} is {mask.shape[0]}x{mask.shape[1]}; resize one "
                            f"to match or remove the pair")
        checked.masks[name] = mask
        if off:
            checked.nonbinary[name] = off
    return checked


def validate_all(found: Found) -> tuple[list[Checked], list[str]]:
    """Validate every pair; return the good ones and one message per bad one."""
    good, problems = [], []
    for pair in bar(found.pairs, "checking pairs", unit="pair"):
        try:
            good.append(_validate(pair))
        except DataError as exc:
            problems.append(str(exc))
    return good, problems


def _raise_problems(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 3} more problems)" if len(problems) > 3 else ""
        raise DataError(f"{len(problems)} bad pair(s): " + "; ".join(problems[:3]) + more)


def _write_png(path: Path, arr: np.ndarray) -> str:
    """Write ``arr`` losslessly as PNG (RGB(A) → OpenCV's BGR(A)); return its SHA-256."""
    if arr.dtype not in (np.uint8, np.uint16):  # float/int32 TIFFs: 16-bit keeps the precision
        arr = arr.astype(np.float64)
        hi = arr.max() if arr.max() > 1 else 1.0
        arr = np.round(arr / hi * 65535).astype(np.uint16)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:  # pragma: no cover - OpenCV always encodes uint8/uint16 PNG
        raise DataError(f"could not encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = buf.tobytes()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def add_derived_fov(kind: str, checked: list[Checked]) -> None:
    """Datasets that distribute no FOV masks (CHASE_DB1) get the thresholded one of
    :func:`segflow.data.prepare.fov.threshold_fov` as ``fov``."""
    rule = DERIVED_FOV.get(kind)
    if rule is None:
        return
    for c in checked:
        if "fov" not in c.masks:
            c.masks["fov"] = rule(c.image)


def _fingerprint(kind: str, options: dict[str, Any], found: Found) -> str:
    """Identifies the source files (paths, sizes, modification times) and the options."""
    derived = FOV_RULE if kind in DERIVED_FOV else None
    h = hashlib.sha256(json.dumps([kind, options, *([derived] if derived else [])],
                                  sort_keys=True, default=str).encode())
    for pair in found.pairs:
        for path in (pair.image, pair.label, pair.fov, *pair.extra.values()):
            if path is not None:
                st = path.stat()
                h.update(f"{pair.split}|{pair.stem}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _summary(checked: list[Checked]) -> dict[str, Any]:
    counts = {s: sum(c.pair.split == s for c in checked) for s in SPLITS}
    sizes = {s: sorted({f"{c.image.shape[0]}x{c.image.shape[1]}" for c in checked
                        if c.pair.split == s}) for s in SPLITS if counts[s]}
    dtypes = sorted({f"{c.image.dtype}x{1 if c.image.ndim == 2 else c.image.shape[2]}" for c in checked})
    vessel = [float(c.masks["label"].mean()) for c in checked]
    return {"counts": {s: n for s, n in counts.items() if n}, "sizes": sizes,
            "image_types": dtypes,
            "label_fraction": {"min": round(min(vessel), 4), "max": round(max(vessel), 4),
                               "mean": round(float(np.mean(vessel)), 4)},
            "with_fov": sum("fov" in c.masks for c in checked),
            "nonbinary_masks": {f"{c.pair.split}/{k}/{c.pair.stem}": n
                                for c in checked for k, n in c.nonbinary.items()}}


def _is_current(dest: Path, fingerprint: str) -> bool:
    """True when ``dest`` holds a complete dataset prepared from the same source/options."""
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("format") != FORMAT or manifest.get("fingerprint") != fingerprint:
        return False
    for entry in manifest.get("files", []):
        for rel, digest in entry["sha256"].items():
            f = dest / rel
            if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != digest:
                return False
    return True


def adapter_options(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` (None values dropped) that adapter ``kind`` accepts."""
    if kind not in ADAPTERS:
        raise DataError(f"unknown dataset kind {kind!r}; choose one of {sorted(ADAPTERS)}")
    accepted = set(inspect.signature(ADAPTERS[kind]).parameters) - {"source"}
    return {k: v for k, v in options.items() if k in accepted and v is not None}


def check(kind: str, source: str | Path, **options: Any) -> dict[str, Any]:
    """Validate a dataset without writing anything.

    Returns:
        the manifest's summary (counts, sizes, image types, label fraction, non-binary masks)
        plus ``skipped``.

    Raises:
        DataError: listing the bad pairs (each names the file and the fix).
    """
    found = find_pairs(kind, source, **adapter_options(kind, options))
    checked, problems = validate_all(found)
    _raise_problems(problems)
    add_derived_fov(kind, checked)
    return {"kind": kind, "source": str(Path(source).resolve()), **_summary(checked),
            "skipped": found.skipped}


def prepare(kind: str, source: str | Path, dest: str | Path, force: bool = False,
            **options: Any) -> dict[str, Any]:
    """Convert ``source`` (native layout ``kind``) into the folder layout at ``dest``.

    Args:
        kind: an adapter name (``drive``, ``chase``, ``dca1``, ``xcad``, ``octa500``, ``folder``).
        source: the unpacked download.
        dest: output root; created, or updated when it holds an earlier segflow preparation
            of the same kind (only the files that preparation wrote are replaced).
        force: rebuild even when ``dest`` is already up to date, replacing edited outputs too.
        options: adapter options (e.g. ``subset="6M"`` for OCTA-500); others are ignored.

    Returns:
        The manifest (also written to ``dest/manifest.json``); ``up_to_date`` is True when
        nothing had to be done.

    Raises:
        DataError: a layout or file problem (nothing is written), or ``dest`` exists and is
            not a segflow-prepared folder.
    """
    source, dest = Path(source), Path(dest)
    opts = adapter_options(kind, options)
    with dest_lock(dest):  # two preparations into one folder: the second is refused
        return _prepare(kind, source, dest, force, opts)


@contextmanager
def dest_lock(dest: Path) -> Iterator[None]:
    """Hold ``.<dest>.lock`` beside ``dest`` while preparing it; removed when done (the lock
    itself is released when the process ends, however it ends).

    Raises:
        DataError: another process holds it.
    """
    import fcntl

    lock = dest.parent / f".{dest.name}.lock"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle = lock.open("a+")
    except OSError as exc:
        raise DataError(f"cannot prepare {dest}: {exc.strerror or exc}; choose a writable "
                        f"destination") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not lock.exists() or os.stat(lock).st_ino != os.fstat(handle.fileno()).st_ino:
                raise OSError("the lock file was replaced meanwhile")  # its holder just ended
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise DataError(f"{dest} is being prepared by another segflow.prepare ({holder}); "
                            f"wait for it to finish (then run again: an up-to-date folder is "
                            f"left as it is) or choose another destination") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # while still held: a waiting process sees it replaced
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def _prepare(kind: str, source: Path, dest: Path, force: bool, opts: dict[str, Any]
             ) -> dict[str, Any]:
    state = inspect_dest(dest)  # only what segflow wrote may be replaced
    check_dest(state, dest, kind, force)
    found = find_pairs(kind, source, **opts)
    fingerprint = _fingerprint(kind, opts, found)
    old = state.manifest
    if (not force and old is not None and old.get("format") == FORMAT
            and old.get("fingerprint") == fingerprint and not state.missing):
        if state.edited:
            log.warning("%s is up to date except %d file(s) edited since it was prepared, kept: "
                        "%s (pass --force to replace them)", dest, len(state.edited),
                        ", ".join(state.edited[:5]))
        else:
            log.info("%s is up to date (prepared from %s); pass --force to rebuild", dest, source)
        return {**old, "up_to_date": True, "kept_edited": state.edited}
    checked, problems = validate_all(found)
    _raise_problems(problems)
    add_derived_fov(kind, checked)

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        files = []
        for c in bar(checked, f"writing {dest.name}", unit="pair"):
            split, stem = c.pair.split, c.pair.stem
            digests = {f"{split}/image/{stem}.png": _write_png(staging / split / "image" / f"{stem}.png", c.image)}
            for name, mask in c.masks.items():
                rel = f"{split}/{name}/{stem}.png"
                digests[rel] = _write_png(staging / rel, mask * np.uint8(255))
            srcs = {"image": c.pair.image, "label": c.pair.label, "fov": c.pair.fov, **c.pair.extra}
            files.append({"split": split, "stem": stem, "shape": list(c.image.shape),
                          "dtype": str(c.image.dtype), "sha256": digests,
                          "source": {k: str(v.relative_to(source)) if v.is_relative_to(source)
                                     else str(v) for k, v in srcs.items() if v is not None}})
        for split in SPLITS:  # the written folder must load exactly as training will read it
            if (staging / split).is_dir():
                load_split(staging / split, fov_dir="fov")
        manifest = {"format": FORMAT, "kind": kind, "source": str(source.resolve()),
                    "options": opts, "fingerprint": fingerprint, **_summary(checked),
                    **({"fov_rule": FOV_RULE} if kind in DERIVED_FOV else {}),
                    "skipped": found.skipped, "files": files}
        kept = install(staging, dest, manifest, state, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {**manifest, "up_to_date": False, "kept_edited": kept}
