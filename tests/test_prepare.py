"""``segflow.prepare`` adapters on the shared real data (counts, pairing, FOV, value
ranges, manifest, idempotence) and on small hand-made layouts of the other datasets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from segflow.data.datasets import load_split
from segflow.data.prepare.adapters import find_pairs
from segflow.data.prepare.layout import check, prepare
from segflow.infra.errors import DataError


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)
    return path


def _values(path: Path) -> set[int]:
    return set(np.unique(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)).tolist())


# -- shared real data ------------------------------------------------------------------------
def test_drive_counts_pairing_fov_and_manifest(prepared):
    root = prepared("drive", "DRIVE")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 20, "test": 20}
    assert manifest["sizes"] == {"train": ["584x565"], "test": ["584x565"]}
    assert manifest["with_fov"] == 40 and manifest["image_types"] == ["uint8x3"]
    assert manifest["nonbinary_masks"] == {}  # the 2nd observer's palette GIFs are binary
    assert 0.05 < manifest["label_fraction"]["mean"] < 0.15  # DRIVE: ~9 % vessel pixels
    # Native ids pair image, manual and FOV: 21_training.tif ↔ 21_manual1.gif ↔ 21_training_mask.gif.
    entry = next(f for f in manifest["files"] if f["split"] == "train" and f["stem"] == "21")
    assert entry["source"] == {"image": "training/images/21_training.tif",
                               "label": "training/1st_manual/21_manual1.gif",
                               "fov": "training/mask/21_training_mask.gif"}
    for split, n in (("train", 20), ("test", 20)):
        for sub in ("image", "label", "fov"):
            assert len(list((root / split / sub).glob("*.png"))) == n
    assert len(list((root / "test" / "label_2nd").glob("*.png"))) == 20
    assert not (root / "train" / "label_2nd").exists()
    assert _values(root / "train/label/21.png") == {0, 255}
    assert _values(root / "train/fov/21.png") == {0, 255}
    for rel, digest in entry["sha256"].items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest
    test = load_split(root / "test", channels=3)
    assert len(test) == 20 and all(s.fov is not None for s in test)
    s = test[0]
    assert s.image.shape == (584, 565, 3) and 0.0 <= s.image.min() and s.image.max() <= 1.0
    # The FOV is the camera's disc, ~70 % of the frame; (almost) no vessel lies outside it.
    fov_fraction = float(s.fov.mean())
    outside = float((s.mask.astype(bool) & ~s.fov.astype(bool)).sum() / s.mask.sum())
    assert 0.6 < fov_fraction < 0.8, fov_fraction
    assert outside < 0.01, outside


def test_prepare_is_idempotent_and_rebuilds_a_changed_folder(prepared, shared_data):
    root = prepared("dca1", "XCA_Angios80")
    stamp = (root / "manifest.json").stat().st_mtime_ns
    again = prepare("dca1", shared_data / "XCA_Angios80", root)
    assert again["up_to_date"] is True
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    # A file edited since (a corrected label): reported and kept; --force rebuilds it.
    (root / "train/label/1.png").write_bytes(b"edited")
    kept = prepare("dca1", shared_data / "XCA_Angios80", root)
    assert kept["kept_edited"] == ["train/label/1.png"]
    assert (root / "train/label/1.png").read_bytes() == b"edited"
    rebuilt = prepare("dca1", shared_data / "XCA_Angios80", root, force=True)
    assert rebuilt["up_to_date"] is False and _values(root / "train/label/1.png") == {0, 255}
    assert not list(root.parent.glob(f".{root.name}.*"))  # no staging or backup left


def test_xca_angios80(prepared):
    root = prepared("dca1", "XCA_Angios80")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 40, "test": 40}
    assert manifest["sizes"] == {"train": ["300x300"], "test": ["300x300"]}
    assert manifest["image_types"] == ["uint8x1"] and manifest["with_fov"] == 0
    names = sorted(p.stem for p in (root / "train/image").glob("*.png"))
    assert names == sorted(p.stem for p in (root / "train/label").glob("*.png"))
    entry = next(f for f in manifest["files"] if f["split"] == "test" and f["stem"] == "7")
    assert entry["source"] == {"image": "Angios_40_testing/7.png", "label": "Angios_40_testing/7_gt.png"}
    assert _values(root / "test/label/7.png") == {0, 255}


def test_octa500_subsets_split_by_subject_and_count_absent(prepared, shared_data):
    m3 = json.loads((prepared("octa500", "OCTA-500", subset="3M") / "manifest.json").read_text())
    assert m3["counts"] == {"train": 3} and m3["sizes"] == {"train": ["304x304"]}
    assert m3["skipped"] == {"subjects of the standard 3M split absent": 197}
    assert {f["stem"] for f in m3["files"]} == {"10301", "10302", "10303"}
    assert m3["files"][0]["source"]["label"].startswith("3M/GT_LargeVessel/")
    six = check("octa500", shared_data / "OCTA-500", subset="6M", projection="OCTA(ILM_OPL)",
                label="Artery")
    assert six["counts"] == {"train": 3} and six["sizes"] == {"train": ["400x400"]}
    assert six["skipped"] == {"subjects of the standard 6M split absent": 297}
    with pytest.raises(DataError, match=r"choose --projection from .*OCTA\(FULL\)"):
        find_pairs("octa500", shared_data / "OCTA-500", projection="OCTA(WRONG)")
    with pytest.raises(DataError, match="choose --label from .*LargeVessel"):
        find_pairs("octa500", shared_data / "OCTA-500", label="Veins")


# -- hand-made layouts of datasets not in the shared folder -----------------------------------------
def test_chase_flat_folder_common_split(tmp_path):
    src = tmp_path / "CHASEDB1"
    rng = np.random.default_rng(0)
    for child in range(1, 15):
        for eye in "LR":
            stem = f"Image_{child:02d}{eye}"
            _png(src / f"{stem}.png", rng.integers(0, 255, (24, 20, 3), dtype=np.uint8))
            cv2.imwrite(str(src / f"{stem}.jpg"), cv2.imread(str(src / f"{stem}.png")))
            (src / f"{stem}.png").unlink()
            _png(src / f"{stem}_1stHO.png", (rng.random((24, 20)) > 0.8).astype(np.uint8) * 255)
            _png(src / f"{stem}_2ndHO.png", (rng.random((24, 20)) > 0.8).astype(np.uint8) * 255)
    m = prepare("chase", src, tmp_path / "chase")
    assert m["counts"] == {"train": 20, "test": 8}
    tests = sorted(p.stem for p in (tmp_path / "chase/test/image").glob("*.png"))
    assert tests[0] == "Image_11L" and tests[-1] == "Image_14R"
    assert len(list((tmp_path / "chase/train/label_2nd").glob("*.png"))) == 20


def test_dca1_pgm_flat_folder_split_by_number(tmp_path):
    src = tmp_path / "Database_134_Angiograms"
    for i in range(1, 8):
        _png(src / f"{i}.pgm", np.full((16, 16), 100 + i, np.uint8))
        _png(src / f"{i}_gt.pgm", np.eye(16, dtype=np.uint8) * 255)
    m = prepare("dca1", src, tmp_path / "dca1", n_train=5)
    assert m["counts"] == {"train": 5, "test": 2}
    assert sorted(p.stem for p in (tmp_path / "dca1/test/image").iterdir()) == ["6", "7"]


def test_xcad_skips_unlabelled_frames_and_splits_the_labelled_pool(tmp_path):
    src = tmp_path / "XCAD"
    for i in range(6):
        _png(src / "train/images" / f"{i:03d}.png", np.zeros((16, 16), np.uint8))
    for i in range(10):
        _png(src / "test/images" / f"{i:02d}.png", np.full((16, 16), i, np.uint8))
        _png(src / "test/masks" / f"{i:02d}.png", np.eye(16, dtype=np.uint8) * 255)
    m = prepare("xcad", src, tmp_path / "xcad", test_fraction=0.3)
    assert m["counts"] == {"train": 7, "test": 3}
    assert m["skipped"] == {"images without a masks/ folder (unlabelled)": 6}


def test_folder_kind_checks_a_users_layout(tmp_path):
    for split in ("train", "test"):
        for i in range(2):
            _png(tmp_path / "xca_full" / split / "image" / f"{i:04d}.png", np.zeros((8, 8), np.uint8))
            _png(tmp_path / "xca_full" / split / "label" / f"{i:04d}.png", np.zeros((8, 8), np.uint8))
    report = check("folder", tmp_path / "xca_full")
    assert report["counts"] == {"train": 2, "test": 2}
