"""Native layouts of public vessel datasets → a list of (split, stem, image, label, fov) pairs.

Each adapter only *finds and pairs* files; decoding, validation and writing are done by
:mod:`segflow.data.prepare.layout`. Adapters raise :class:`~segflow.infra.errors.DataError` naming the
file or folder and the fix when the layout is not what the dataset's download contains.

Kinds: ``drive``, ``chase``, ``dca1`` (alias ``angios``: the XCA "Angios" sets, ``N.png``
+ ``N_gt.png``, and DCA1's ``N.pgm`` + ``N_gt.pgm``), ``xcad``, ``octa500``, ``folder``
(segflow's own layout, for ``--check`` or a re-validated copy).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segflow.data.io import IMAGE_EXTS, list_images, require_pairs
from segflow.infra.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Pair:
    """One image with its masks, located in the native layout.

    Attributes:
        split: ``train``, ``val`` or ``test``.
        stem: output file stem (unique within the split).
        image, label: source files.
        fov: source field-of-view mask, or None.
        extra: further masks written beside the label, e.g. ``{"label_2nd": path}``
            (a second human observer).
    """

    split: str
    stem: str
    image: Path
    label: Path
    fov: Path | None = None
    extra: dict[str, Path] = field(default_factory=dict)


@dataclass
class Found:
    """What an adapter returns: the pairs, and what it skipped (reason → count)."""

    pairs: list[Pair]
    skipped: dict[str, int] = field(default_factory=dict)


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path} is missing: {what}; point the source at the dataset's "
                        f"unpacked download (see README, 'Public datasets')")
    return path


def _match(folder: Path, pattern: str) -> tuple[dict[str, Path], list[Path]]:
    """Files of ``folder`` whose name matches ``pattern`` (group ``id`` = the key), and
    the image files that did not match."""
    rx = re.compile(pattern, re.IGNORECASE)
    found: dict[str, Path] = {}
    unmatched: list[Path] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in IMAGE_EXTS:
            continue
        m = rx.fullmatch(p.name)
        if m is None:
            unmatched.append(p)
            continue
        key = m.group("id")
        if key in found:
            raise DataError(f"{found[key]} and {p} are the same sample; keep one of them")
        found[key] = p
    return found, unmatched


def _pair(images: dict[str, Path], labels: dict[str, Path], image_hint: str,
          label_hint: str) -> list[str]:
    """Keys present in both; an image without label (or the reverse) is an error."""
    require_pairs(images, labels, lambda key: label_hint.format(id=key),
                  lambda key: image_hint.format(id=key))
    if not images:
        raise DataError(f"no images found (expected files like {image_hint.format(id='1')}); "
                        f"check the source folder")
    return sorted(images, key=_natural)


def _natural(key: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def _skip(skipped: dict[str, int], reason: str, n: int) -> None:
    if n:
        skipped[reason] = skipped.get(reason, 0) + n


# -- DRIVE ---------------------------------------------------------------------------------
def drive(source: Path) -> Found:
    """DRIVE (Staal et al., IEEE TMI 2004): ``training|test/{images/*.tif,
    1st_manual/*.gif, mask/*.gif}`` (+ ``test/2nd_manual``) → train (20) / test (20),
    FOV masks as ``fov/``, the second observer as ``label_2nd/``."""
    out = Found([])
    for native, split in (("training", "train"), ("test", "test")):
        d = _need_dir(source / native, f"DRIVE has {native}/ with images/, 1st_manual/, mask/")
        imgs, extra_i = _match(_need_dir(d / "images", "the fundus photographs (*.tif)"),
                               rf"(?P<id>\d+)_{native}\.\w+")
        labs, extra_l = _match(_need_dir(d / "1st_manual", "the manual vessel masks (*.gif)"),
                               r"(?P<id>\d+)_manual1\.\w+")
        fovs, extra_f = _match(_need_dir(d / "mask", "the field-of-view masks (*.gif)"),
                               rf"(?P<id>\d+)_{native}_mask\.\w+")
        second: dict[str, Path] = {}
        if (d / "2nd_manual").is_dir():
            second, _ = _match(d / "2nd_manual", r"(?P<id>\d+)_manual2\.\w+")
        _skip(out.skipped, "files not named like DRIVE's", len(extra_i) + len(extra_l) + len(extra_f))
        keys = _pair(imgs, labs, f"{d}/images/{{id}}_{native}.tif",
                     f"{d}/1st_manual/{{id}}_manual1.gif")
        for key in keys:
            if key not in fovs:
                raise DataError(f"image {imgs[key]} has no FOV mask: expected "
                                f"{d}/mask/{key}_{native}_mask.gif; add it or remove the image")
            extra = {"label_2nd": second[key]} if key in second else {}
            out.pairs.append(Pair(split, key, imgs[key], labs[key], fovs[key], extra))
    return out


# -- CHASE_DB1 -----------------------------------------------------------------------------
def chase(source: Path, train_ids: tuple[int, int] = (1, 10)) -> Found:
    """CHASE_DB1 (Fraz et al., IEEE TBME 2012): one flat folder of ``Image_01L.jpg`` +
    ``Image_01L_1stHO.png`` (+ ``_2ndHO``). The common split: children 01–10 (20 images)
    train, 11–14 (8) test. No FOV masks are distributed: ``prepare`` writes thresholded
    ones (:func:`segflow.data.prepare.fov.threshold_fov`), as the literature evaluating on it does."""
    _need_dir(source, "CHASE_DB1 is one folder of Image_NNx.jpg with Image_NNx_1stHO.png")
    imgs, rest = _match(source, r"(?P<id>Image_\d+[LR])\.(jpg|jpeg|png|tif)")
    labs, _ = _match(source, r"(?P<id>Image_\d+[LR])_1stHO\.\w+")
    second, _ = _match(source, r"(?P<id>Image_\d+[LR])_2ndHO\.\w+")
    out = Found([])
    _skip(out.skipped, "files not named like CHASE_DB1's",
          len([p for p in rest if not re.search(r"_(1st|2nd)HO\.", p.name, re.I)]))
    for key in _pair(imgs, labs, f"{source}/{{id}}.jpg", f"{source}/{{id}}_1stHO.png"):
        child = int(re.search(r"\d+", key).group())
        split = "train" if train_ids[0] <= child <= train_ids[1] else "test"
        extra = {"label_2nd": second[key]} if key in second else {}
        out.pairs.append(Pair(split, key, imgs[key], labs[key], None, extra))
    return out


# -- XCA "Angios" sets / DCA1 ------------------------------------------------------------------
def _split_of(name: str) -> str | None:
    low = name.lower()
    for key, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if key in low:
            return split
    return None


def dca1(source: Path, n_train: int = 100) -> Found:
    """DCA1 / XCA Angios sets (Cervantes-Sanchez et al., Appl. Sci. 2019): ``N.png`` +
    ``N_gt.png`` (or ``N.pgm`` + ``N_gt.pgm``). Sub-folders named ``*train*`` /
    ``*val*`` / ``*test*`` (``Angios_40_training``, ``Angios_40_testing``) give the split;
    a flat folder is split by number: 1..``n_train`` train, the rest test (DCA1: 100/34)."""
    _need_dir(source, "a folder of N.png + N_gt.png (or .pgm)")
    subdirs = [d for d in sorted(source.iterdir()) if d.is_dir() and _split_of(d.name)]
    folders = [(d, _split_of(d.name)) for d in subdirs] or [(source, None)]
    out = Found([])
    for folder, split in folders:
        imgs, rest = _match(folder, r"(?P<id>\d+)\.(png|pgm|bmp|tif|tiff)")
        labs, _ = _match(folder, r"(?P<id>\d+)_gt\.(png|pgm|bmp|tif|tiff)")
        _skip(out.skipped, "files not named N.ext / N_gt.ext",
              len([p for p in rest if not re.fullmatch(r"\d+_gt\.\w+", p.name)]))
        ext = next(iter(imgs.values())).suffix if imgs else ".png"
        for key in _pair(imgs, labs, f"{folder}/{{id}}{ext}", f"{folder}/{{id}}_gt{ext}"):
            s = split or ("train" if int(key) <= n_train else "test")
            out.pairs.append(Pair(s, key, imgs[key], labs[key]))
    return out


# -- XCAD ------------------------------------------------------------------------------------
def xcad(source: Path, test_fraction: float = 0.2, seed: int = 0) -> Found:
    """XCAD (Ma et al., ICCV 2021): ``images/`` + ``masks/`` folders, at the root or in
    ``train/``, ``val/``, ``test/`` sub-folders. Images without a ``masks/`` folder (XCAD's
    unlabelled training frames) are skipped with a count. When the labelled images carry
    no train/test split, a seeded ``test_fraction`` becomes test."""
    _need_dir(source, "XCAD holds images/ and masks/ folders")
    candidates = [source, *(d for d in sorted(source.iterdir()) if d.is_dir())]
    out = Found([])
    labelled: list[tuple[Path, str | None]] = []
    for d in candidates:
        if (d / "images").is_dir():
            if (d / "masks").is_dir():
                labelled.append((d, _split_of(d.name) if d != source else None))
            else:
                _skip(out.skipped, "images without a masks/ folder (unlabelled)",
                      len(list_images(d / "images")))
    if not labelled:
        raise DataError(f"{source} has no images/ + masks/ folders; XCAD's labelled images are "
                        f"in <root>/test/images and <root>/test/masks")
    splits = {s for _, s in labelled}
    pairs: list[Pair] = []
    for d, split in labelled:
        imgs, labs = list_images(d / "images"), list_images(d / "masks")
        for key in _pair(imgs, labs, f"{d}/images/{{id}}.png", f"{d}/masks/{{id}}.png"):
            pairs.append(Pair(split or "train", key, imgs[key], labs[key]))
    if "train" not in splits or "test" not in splits:  # one pool: seeded split
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_test = max(1, int(round(test_fraction * len(pairs))))
        test_idx = set(order[:n_test].tolist())
        pairs = [Pair("test" if i in test_idx else "train", p.stem, p.image, p.label)
                 for i, p in enumerate(pairs)]
    out.pairs = pairs
    return out


# -- OCTA-500 --------------------------------------------------------------------------------
OCTA500_SPLITS = {
    "3M": {"train": (10301, 10440), "val": (10441, 10450), "test": (10451, 10500)},
    "6M": {"train": (10001, 10180), "val": (10181, 10200), "test": (10201, 10300)},
}


def octa500(source: Path, subset: str = "3M", projection: str = "OCTA(FULL)",
            label: str = "LargeVessel") -> Found:
    """OCTA-500 (Li et al., Medical Image Analysis 2024):
    ``{3M,6M}/ProjectionMaps/<projection>/ID.bmp`` + ``{3M,6M}/GT_<label>/ID.bmp``.
    The standard split by subject id (3M: 10301–10440 / 10441–10450 / 10451–10500;
    6M: 10001–10180 / 10181–10200 / 10201–10300); absent subjects are counted, not errors.

    Args:
        subset: ``3M`` or ``6M``.
        projection: a folder of ``ProjectionMaps`` (``OCTA(FULL)``, ``OCTA(ILM_OPL)``,
            ``OCTA(OPL_BM)``, ``OCT(FULL)``, ...).
        label: ``LargeVessel``, ``Artery``, ``Vein``, ``Capillary`` or ``FAZ``
            (with or without the ``GT_`` prefix).
    """
    subset = subset.upper()
    if subset not in OCTA500_SPLITS:
        raise DataError(f"OCTA-500 subset must be 3M or 6M, got {subset!r}")
    root = source / subset if (source / subset).is_dir() else source
    proj_root = _need_dir(root / "ProjectionMaps", f"OCTA-500 {subset} has ProjectionMaps/")
    proj = root / "ProjectionMaps" / projection
    if not proj.is_dir():
        have = sorted(p.name for p in proj_root.iterdir() if p.is_dir())
        raise DataError(f"{proj} is missing; choose --projection from {have}")
    label_name = label if label.startswith("GT_") else f"GT_{label}"
    gt = root / label_name
    if not gt.is_dir():
        have = sorted(p.name[3:] for p in root.iterdir() if p.is_dir() and p.name.startswith("GT_"))
        raise DataError(f"{gt} is missing; choose --label from {have}")
    imgs, rest_i = _match(proj, r"(?P<id>\d+)\.\w+")
    labs, rest_l = _match(gt, r"(?P<id>\d+)\.\w+")
    out = Found([])
    _skip(out.skipped, "files not named <subject id>.bmp", len(rest_i) + len(rest_l))
    ranges = OCTA500_SPLITS[subset]
    keys = _pair(imgs, labs, f"{proj}/{{id}}.bmp", f"{gt}/{{id}}.bmp")
    for key in keys:
        split = next((s for s, (lo, hi) in ranges.items() if lo <= int(key) <= hi), None)
        if split is None:
            _skip(out.skipped, f"subject ids outside the {subset} ranges", 1)
            continue
        out.pairs.append(Pair(split, key, imgs[key], labs[key]))
    expected = sum(hi - lo + 1 for lo, hi in ranges.values())
    _skip(out.skipped, f"subjects of the standard {subset} split absent", expected - len(out.pairs))
    return out


# -- segflow's own folder layout ----------------------------------------------------------------
def folder(source: Path, image_dir: str = "image", label_dir: str = "label",
           fov_dir: str = "fov") -> Found:
    """segflow's layout ``<root>/{train,val,test}/{image,label[,fov]}/`` (``--check`` of a
    folder of your own images, e.g. ``data/xca_full``)."""
    _need_dir(source, "a folder with train/ (and optionally val/, test/)")
    present = [s for s in SPLITS if (source / s).is_dir()]
    if not present:
        raise DataError(f"{source} has none of train/, val/, test/; put the images in "
                        f"{source}/train/{image_dir} and the masks in {source}/train/{label_dir}")
    out = Found([])
    for split in present:
        d = source / split
        imgs = list_images(_need_dir(d / image_dir, f"the {split} images"))
        labs = list_images(_need_dir(d / label_dir, f"the {split} masks"))
        fovs = list_images(d / fov_dir) if (d / fov_dir).is_dir() else {}
        for key in _pair(imgs, labs, f"{d}/{image_dir}/{{id}}.png", f"{d}/{label_dir}/{{id}}.png"):
            if fovs and key not in fovs:
                raise DataError(f"{d / fov_dir} has no FOV mask for {imgs[key].name}; add "
                                f"{d / fov_dir}/{key}.png or remove the {fov_dir}/ folder")
            out.pairs.append(Pair(split, key, imgs[key], labs[key], fovs.get(key)))
    return out


ADAPTERS: dict[str, Callable[..., Found]] = {
    "drive": drive, "chase": chase, "dca1": dca1, "angios": dca1,
    "xcad": xcad, "octa500": octa500, "folder": folder,
}


def find_pairs(kind: str, source: str | Path, **options: Any) -> Found:
    """Run the adapter ``kind`` on ``source`` with its keyword ``options``.

    Raises:
        DataError: unknown kind, or a layout problem (names the file and the fix).
    """
    if kind not in ADAPTERS:
        raise DataError(f"unknown dataset kind {kind!r}; choose one of {sorted(ADAPTERS)}")
    found = ADAPTERS[kind](Path(source), **options)
    if not found.pairs:
        raise DataError(f"{source}: no {kind} image/label pairs found; check the source folder")
    return found
