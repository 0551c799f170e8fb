"""Folder datasets, synthetic generators, augmentation and bad-data errors."""

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segflow.data import SegDataModule, ensure_synthetic, load_split, read_image, read_mask
from segflow.data.datamodule import ShardSampler
from segflow.data.datasets import RandomCropDataset, collate_crops
from segflow.data.transforms import build_train_transform
from segflow.infra.errors import DataError


def _write_pair(root: Path, stem: str, size=(20, 24), split="train", label=True, image=True):
    img = (np.random.default_rng(0).random(size) * 255).astype(np.uint8)
    msk = np.zeros(size, np.uint8)
    msk[5:10, 5:12] = 255
    if image:
        (root / split / "image").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / split / "image" / f"{stem}.png"), img)
    if label:
        (root / split / "label").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / split / "label" / f"{stem}.png"), msk)


def test_synthetic_is_deterministic_and_in_folder_layout(tmp_path):
    a = ensure_synthetic(tmp_path / "a", "xca", seed=3, image_size=48, n_train=3, n_val=1, n_test=1)
    b = ensure_synthetic(tmp_path / "b", "xca", seed=3, image_size=48, n_train=3, n_val=1, n_test=1)
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        files = sorted((a / split / "image").iterdir())
        assert len(files) == n and len(list((a / split / "label").iterdir())) == n
        for f in files:
            assert np.array_equal(cv2.imread(str(f)), cv2.imread(str(b / split / "image" / f.name)))
    mask = read_mask(a / "train" / "label" / "0000.png")
    assert 0.005 < mask.mean() < 0.3  # some vessel, mostly background
    c = ensure_synthetic(tmp_path / "c", "xca", seed=4, image_size=48, n_train=3, n_val=1, n_test=1)
    assert not np.array_equal(cv2.imread(str(a / "train/image/0000.png")), cv2.imread(str(c / "train/image/0000.png")))


def test_synthetic_refuses_a_folder_made_with_other_parameters(tmp_path):
    ensure_synthetic(tmp_path / "d", "octa", seed=0, image_size=48, n_train=2, n_val=1, n_test=1)
    ensure_synthetic(tmp_path / "d", "octa", seed=0, image_size=48, n_train=2, n_val=1, n_test=1)  # idempotent
    with pytest.raises(ValueError, match="different parameters"):
        ensure_synthetic(tmp_path / "d", "octa", seed=1, image_size=48, n_train=2, n_val=1, n_test=1)


def test_missing_folder_names_the_path_and_fix(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*data.root"):
        load_split(tmp_path / "nope" / "train")


def test_empty_split(tmp_path):
    (tmp_path / "train" / "image").mkdir(parents=True)
    (tmp_path / "train" / "label").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images in .*train/image"):
        load_split(tmp_path / "train")


def test_image_without_label_and_label_without_image(tmp_path):
    _write_pair(tmp_path, "a")
    _write_pair(tmp_path, "b", label=False)
    with pytest.raises(DataError, match=r"image .*b\.png has no label.*add the mask"):
        load_split(tmp_path / "train")
    (tmp_path / "train" / "image" / "b.png").unlink()
    _write_pair(tmp_path, "c", image=False)
    with pytest.raises(DataError, match=r"label .*c\.png has no image"):
        load_split(tmp_path / "train")


def test_unreadable_image(tmp_path):
    _write_pair(tmp_path, "a")
    (tmp_path / "train" / "image" / "a.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"cannot read .*a\.png.*corrupt"):
        load_split(tmp_path / "train")


def test_size_mismatch(tmp_path):
    _write_pair(tmp_path, "a")
    cv2.imwrite(str(tmp_path / "train" / "label" / "a.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"size mismatch.*20x24.*10x10"):
        load_split(tmp_path / "train")


def test_non_binary_mask_is_thresholded_with_a_count(tmp_path, caplog):
    m = np.zeros((4, 4), np.uint8)
    m[0, :2] = 255
    m[1, 0] = 200  # -> 1
    m[1, 1] = 30  # -> 0
    cv2.imwrite(str(tmp_path / "m.png"), m)
    with caplog.at_level(logging.WARNING):
        out = read_mask(tmp_path / "m.png")
    assert "2 pixels" in caplog.text
    assert out.sum() == 3 and out.dtype == np.uint8


def test_16bit_rgba_and_gif_inputs(tmp_path):
    img16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)
    cv2.imwrite(str(tmp_path / "a.png"), img16)
    a = read_image(tmp_path / "a.png")
    assert a.shape == (4, 4, 1) and a.max() == pytest.approx(60000 / 65535)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 1] = 200  # green (BGRA order on disk)
    rgba[..., 3] = 255
    cv2.imwrite(str(tmp_path / "b.png"), rgba)
    assert read_image(tmp_path / "b.png", channels=3).shape == (4, 4, 3)
    assert read_image(tmp_path / "b.png", channels=1, gray_from="green")[0, 0, 0] == pytest.approx(200 / 255)
    from PIL import Image

    Image.fromarray((np.eye(4) * 255).astype(np.uint8)).save(tmp_path / "m.gif")
    assert read_mask(tmp_path / "m.gif").sum() == 4


def test_random_crops_pad_small_images_and_mark_padding_invalid():
    from segflow.data.datasets import Sample

    s = Sample("x.png", np.ones((20, 24, 1), np.float32), np.ones((20, 24), np.uint8), None)
    ds = RandomCropDataset([s], build_train_transform(32, {}), num_samples_per_image=3)
    item = ds[0]
    assert item["image"].shape == (3, 1, 32, 32)
    assert item["valid"].sum(dim=(1, 2, 3)).tolist() == [20 * 24] * 3  # padding excluded
    batch = collate_crops([item, ds[0]])
    assert batch["image"].shape == (6, 1, 32, 32) and len(batch["name"]) == 6


def test_crops_are_reproducible_and_change_between_draws():
    from segflow.data.datasets import Sample

    rng = np.random.default_rng(0)
    s = Sample("x.png", rng.random((64, 64, 1)).astype(np.float32), np.zeros((64, 64), np.uint8), None)
    aug = {"hflip": 0.5, "rot90": 0.5}
    torch.manual_seed(7)
    a = RandomCropDataset([s], build_train_transform(16, aug), 2)
    first, second = a[0]["image"], a[0]["image"]
    assert not torch.equal(first, second)  # the generator runs on between epochs
    torch.manual_seed(7)
    b = RandomCropDataset([s], build_train_transform(16, aug), 2)
    assert torch.equal(b[0]["image"], first)  # same seed, same crops


def test_missing_val_split_is_a_seeded_holdout(tmp_path):
    for i in range(10):
        _write_pair(tmp_path, f"{i:02d}")
    dm = SegDataModule(root=str(tmp_path), num_workers=0, val_fraction=0.2)
    dm.setup("fit")
    names_val = {s.name for s in dm.samples("val")}
    assert len(names_val) == 2 and len(dm.samples("train")) == 8
    assert names_val.isdisjoint({s.name for s in dm.samples("train")})
    dm2 = SegDataModule(root=str(tmp_path), num_workers=0, val_fraction=0.2)
    dm2.setup("fit")
    assert {s.name for s in dm2.samples("val")} == names_val


def test_shard_sampler_covers_each_image_once():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))


def test_bad_augment_key_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        SegDataModule(root=str(tmp_path), augment={"hflipp": 0.5})
