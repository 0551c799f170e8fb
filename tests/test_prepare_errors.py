"""Bad data at prepare time and in ``--check``: one hand-made broken folder per case. Each
error names the file and the fix, and nothing (half-)written is left in the destination."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from segflow.data.io import read_image
from segflow.data.prepare.layout import prepare
from segflow.infra.errors import DataError
from segflow.prepare import main as prepare_main


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)
    return path


def _angios(root: Path, n: int = 3, size: int = 16) -> Path:
    """A tiny Angios-style set: ``N.png`` + ``N_gt.png`` in training/testing folders."""
    for folder in ("Angios_training", "Angios_testing"):
        for i in range(1, n + 1):
            _png(root / folder / f"{i}.png", np.full((size, size), 40 * i, np.uint8))
            _png(root / folder / f"{i}_gt.png", np.eye(size, dtype=np.uint8) * 255)
    return root


def _assert_nothing_written(dest: Path) -> None:
    assert not dest.exists()
    assert not list(dest.parent.glob(f".{dest.name}.*")), "staging folder left behind"


def test_missing_folder(tmp_path):
    (tmp_path / "DRIVE" / "training" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"DRIVE/training/1st_manual is missing"):
        prepare("drive", tmp_path / "DRIVE", tmp_path / "out")
    with pytest.raises(DataError, match="does_not_exist is missing"):
        prepare("dca1", tmp_path / "does_not_exist", tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_empty_split(tmp_path):
    src = _angios(tmp_path / "src")
    for p in (src / "Angios_testing").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="no images found .*Angios_testing"):
        prepare("dca1", src, tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_image_without_label(tmp_path):
    src = _angios(tmp_path / "src")
    (src / "Angios_training" / "2_gt.png").unlink()
    with pytest.raises(DataError, match=r"image .*Angios_training/2.png has no label: expected "
                                        r".*Angios_training/2_gt.png; add the mask or remove"):
        prepare("dca1", src, tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_label_without_image(tmp_path):
    src = _angios(tmp_path / "src")
    (src / "Angios_testing" / "3.png").unlink()
    with pytest.raises(DataError, match=r"label .*Angios_testing/3_gt.png has no image: expected "
                                        r".*Angios_testing/3.png; add the image or remove"):
        prepare("dca1", src, tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_size_mismatch(tmp_path):
    src = _angios(tmp_path / "src")
    _png(src / "Angios_training" / "2_gt.png", np.zeros((16, 12), np.uint8))
    with pytest.raises(DataError, match=r"size mismatch: image .*2.png is 16x16 but its label "
                                        r".*2_gt.png is 16x12; resize one"):
        prepare("dca1", src, tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_unreadable_or_corrupt_file(tmp_path):
    src = _angios(tmp_path / "src")
    (src / "Angios_testing" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"Angios_testing/1.png is damaged \(truncated PNG"):
        prepare("dca1", src, tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_all_bad_pairs_are_reported_at_once(tmp_path):
    src = _angios(tmp_path / "src")
    for i in (1, 2):
        (src / "Angios_training" / f"{i}.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"^2 bad pair\(s\): cannot read .*1.png.*cannot read .*2.png"):
        prepare("dca1", src, tmp_path / "out")


def test_non_binary_mask_is_thresholded_with_a_count(tmp_path, caplog):
    src = _angios(tmp_path / "src")
    soft = np.eye(16, dtype=np.uint8) * 255
    soft[0, 1:4] = [60, 128, 200]  # anti-aliased edge: three pixels neither 0 nor 255
    _png(src / "Angios_training" / "1_gt.png", soft)
    with caplog.at_level(logging.WARNING):
        m = prepare("dca1", src, tmp_path / "out")
    assert "1_gt.png is not binary: 3 pixels" in caplog.text
    assert m["nonbinary_masks"] == {"train/label/1": 3}
    out = cv2.imread(str(tmp_path / "out/train/label/1.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(out)) == {0, 255}
    assert out[0, 1] == 0 and out[0, 2] == 255 and out[0, 3] == 255  # > half range is vessel


def test_16bit_and_rgba_inputs_are_kept_and_load(tmp_path):
    src = _angios(tmp_path / "src")
    ramp = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)
    _png(src / "Angios_training" / "1.png", ramp)  # 16-bit gray
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 200, 128  # green, half transparent
    _png(src / "Angios_training" / "2.png", rgba)
    m = prepare("dca1", src, tmp_path / "out")
    assert set(m["image_types"]) == {"uint16x1", "uint8x1", "uint8x4"}
    kept = cv2.imread(str(tmp_path / "out/train/image/1.png"), cv2.IMREAD_UNCHANGED)
    assert kept.dtype == np.uint16 and np.array_equal(kept, ramp)  # lossless, full depth
    gray16 = read_image(tmp_path / "out/train/image/1.png")
    assert gray16.shape == (16, 16, 1) and abs(float(gray16.max()) - 1.0) < 1e-6
    green = read_image(tmp_path / "out/train/image/2.png", channels=1, gray_from="green")
    assert np.allclose(green, 200 / 255)  # alpha dropped, colour kept


def test_failure_keeps_the_previous_preparation(tmp_path):
    src = _angios(tmp_path / "src")
    dest = tmp_path / "out"
    prepare("dca1", src, dest)
    before = (dest / "manifest.json").read_text()
    _png(src / "Angios_testing" / "2_gt.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="size mismatch"):
        prepare("dca1", src, dest)
    assert (dest / "manifest.json").read_text() == before
    assert len(list((dest / "test/image").iterdir())) == 3
    assert not list(tmp_path.glob(".out.*"))


def test_refuses_a_destination_it_did_not_write(tmp_path):
    src = _angios(tmp_path / "src")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a segflow-prepared dataset"):
        prepare("dca1", src, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_check_mode_writes_nothing_and_exits_2_with_one_sentence(tmp_path, capsys):
    src = _angios(tmp_path / "src")
    assert prepare_main(["dca1", str(src), "--check"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[: out.rindex("}") + 1])["counts"] == {"train": 3, "test": 3}
    assert "OK:" in out and not (tmp_path / "out").exists()
    (src / "Angios_training" / "3_gt.png").unlink()
    assert prepare_main(["dca1", str(src), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: image ") and "3.png has no label" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_check_of_a_users_folder_layout_via_the_cli(tmp_path):
    import subprocess

    root = tmp_path / "xca_full"
    _png(root / "train/image/0000.png", np.zeros((8, 8), np.uint8))
    _png(root / "train/label/0001.png", np.zeros((8, 8), np.uint8))
    proc = subprocess.run([sys.executable, "-m", "segflow.prepare", "folder", str(root), "--check"],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 2
    assert "image " in proc.stderr and "0000.png has no label" in proc.stderr
    assert "Traceback" not in proc.stderr
