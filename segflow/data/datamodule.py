"""The LightningDataModule: folder splits → crop batches for training, whole images for eval."""

from __future__ import annotations

import logging
import multiprocessing
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from segflow.data.datasets import (
    RandomCropDataset,
    Sample,
    WholeImageDataset,
    collate_crops,
    load_split,
)
from segflow.data.intensity import check_intensity
from segflow.data.preprocess import Preprocess
from segflow.data.synthetic import ensure_synthetic
from segflow.data.transforms import build_train_transform
from segflow.infra.errors import DataError

log = logging.getLogger(__name__)

#: Start methods a DataLoader's worker processes support.
STANDARD_START_METHODS = ("fork", "spawn", "forkserver")


def worker_context(num_workers: int) -> str | None:
    """The start method of the loader's worker processes: the process's own (None) unless
    it is one torch's workers cannot use — a ``launcher=joblib`` job runs in a loky worker
    whose default start method is ``loky`` — then the platform's usual one (fork on Linux,
    spawn on macOS and Windows)."""
    if num_workers <= 0:
        return None
    current = multiprocessing.get_start_method(allow_none=True)
    if current is None or current in STANDARD_START_METHODS:
        return None
    return "fork" if sys.platform.startswith("linux") else "spawn"


class ShardSampler(Sampler[int]):
    """Evaluation sampler for DDP: rank r takes indices r, r+W, r+2W, … with **no padding**,
    so every image is counted exactly once (``DistributedSampler`` repeats images to even
    out the shards, which biases dataset metrics)."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


class EpochSampler(Sampler[tuple[int, int]]):
    """Training sampler: a seeded shuffle per epoch, sharded over DDP ranks, that also hands
    each item its augmentation seed.

    Epoch *e* is the permutation ``default_rng([seed, e])`` of the images, padded by
    repetition to a multiple of ``world_size`` (as ``DistributedSampler`` pads); rank *r*
    takes positions r, r+W, r+2W, … and yields ``(index, item_seed)`` with ``item_seed``
    derived from (seed, epoch, position). So the training stream is a pure function of
    the run seed and the epoch — independent of the number of DataLoader workers, of
    the global RNG, and of where a resumed run restarted — which is what makes a run
    resumed from ``last.ckpt`` end with the same weights as an uninterrupted one.

    The epoch is read from ``epoch_source`` (the trainer's ``current_epoch``) when the
    iteration starts (without it, :meth:`set_epoch` sets it); ``started_epoch`` records
    it. Lightning creates the first iterator before it restores a checkpoint's epoch, and
    DataLoader workers prefetch at once, so after a resume that iterator is for epoch 0:
    :class:`segflow.engine.callbacks.ExactResume` sees the stale ``started_epoch`` and restarts it.
    """

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, epoch_source: Callable[[], int] | None = None):
        if length < 1:
            raise ValueError(f"EpochSampler needs at least one item, got length {length}")
        self.length, self.seed, self.rank, self.world_size = length, int(seed), rank, world_size
        self.shuffle, self.epoch_source = shuffle, epoch_source
        self.epoch = 0
        self.started_epoch: int | None = None  # the epoch of the latest iteration

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = int(self.epoch_source()) if self.epoch_source is not None else self.epoch
        self.started_epoch = epoch
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.length)
                 if self.shuffle else np.arange(self.length))
        order = np.resize(order, len(self) * self.world_size)  # pad by repeating, like DDP
        # One independent 32-bit seed per (run seed, epoch, position in the epoch).
        seeds = np.random.SeedSequence([self.seed, epoch]).generate_state(len(order))
        positions = range(self.rank, len(order), self.world_size)
        return iter([(int(order[p]), int(seeds[p])) for p in positions])

    def __len__(self) -> int:
        return -(-self.length // self.world_size)


class SegDataModule(pl.LightningDataModule):
    """Folder-layout data: ``<split_dir>/{image_dir,label_dir[,fov_dir]}/`` per split.

    Training: each image gives ``num_samples_per_image`` random ``image_size`` crops per
    epoch (padded when smaller) with augmentation; a batch holds ``train_bs`` images, i.e.
    ``train_bs × num_samples_per_image`` crops. Validation/test: whole images.

    Args:
        name: dataset name (run folder names, reports).
        root: dataset root; ``train_dir``/``val_dir``/``test_dir`` default to ``root/{train,val,test}``.
        train_dir, val_dir, test_dir: split folders. Without a val folder, a seeded
            ``val_fraction`` of train is held out; without a test folder, test = val.
        image_dir, label_dir, fov_dir: sub-folder names (``fov_dir`` optional: FOV masks).
        channels: 1 (gray) or 3 (RGB); ``gray_from``: ``luma`` or ``green`` for colour → gray.
        image_size: training crop side.
        train_bs, num_samples_per_image: images per batch, crops per image.
        val_bs: images per evaluation batch (1 when sizes differ).
        num_workers, pin_memory, persistent_workers: DataLoader settings (``pin_memory``
            None = on when CUDA is available).
        augment: see :func:`segflow.data.transforms.build_train_transform`.
        mean, std: intensity normalisation ``(x - mean) / std`` of [0, 1] images.
        intensity: per-image normalisation at load time, inside the FOV: ``stretch``
            ([low, high] percentiles → [0, 1]), ``clahe`` (CLAHE clip limit, e.g. 2.0),
            ``clahe_tiles`` (see :func:`segflow.data.intensity.normalise_intensity`).
        inference: how the model predicts whole images (tile size, overlap, largest
            whole image): not used by the datamodule itself; the training config hands it
            to the model (``model.inference: ${data.inference}``), so each dataset can say
            when its images need a sliding window. See :func:`segflow.inference.window.predict_image`.
        val_fraction, split_seed: the held-out split when there is no val folder.
        synthetic: when set, ``{kind, seed, image_size, n_train, n_val, n_test, options}``
            of a procedural dataset written once to ``root`` (see ``segflow.data.synthetic``).
        seed: the training stream's seed (shuffle and augmentation, see
            :class:`EpochSampler`); ``segflow.train`` passes the run's ``seed``. None: the
            torch seed when the loader is built (``seed_everything`` sets it).
        eval_crop: validate and test on the central ``eval_crop`` px square of each image
            only (``debug=default`` sets it); None = whole images.
    """

    def __init__(self, name: str = "folder", root: str | None = None, train_dir: str | None = None,
                 val_dir: str | None = None, test_dir: str | None = None, image_dir: str = "image",
                 label_dir: str = "label", fov_dir: str | None = "fov", channels: int = 1,
                 gray_from: str = "luma", image_size: int = 128, train_bs: int = 4,
                 num_samples_per_image: int = 4, val_bs: int = 1, num_workers: int = 2,
                 pin_memory: bool | None = None, persistent_workers: bool = True,
                 augment: dict[str, Any] | None = None, mean: float = 0.5, std: float = 0.5,
                 intensity: dict[str, Any] | None = None, inference: dict[str, Any] | None = None,
                 val_fraction: float = 0.1, split_seed: int = 0,
                 synthetic: dict[str, Any] | None = None, seed: int | None = None,
                 eval_crop: int | None = None):
        super().__init__()
        if root is None and train_dir is None:
            raise DataError("no data location: set data.root (a folder with train/ val/ test/) "
                            "or data.train_dir")
        self.name = name
        self.root = Path(root) if root is not None else None
        base = self.root if self.root is not None else Path(train_dir).parent
        self.split_dirs = {
            "train": Path(train_dir) if train_dir else base / "train",
            "val": Path(val_dir) if val_dir else base / "val",
            "test": Path(test_dir) if test_dir else base / "test",
        }
        self.image_dir, self.label_dir, self.fov_dir = image_dir, label_dir, fov_dir
        self.channels, self.gray_from = channels, gray_from
        if channels not in (1, 3):
            raise DataError(f"data.channels must be 1 or 3, got {channels}")
        self.image_size, self.train_bs = image_size, train_bs
        self.num_samples_per_image, self.val_bs = num_samples_per_image, val_bs
        self.num_workers, self.persistent_workers = num_workers, persistent_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.augment = dict(augment or {})
        self.mean, self.std = mean, std
        self.intensity = check_intensity(intensity)
        # The one preprocessing of every image (also what eval and predict use).
        self.preprocess = Preprocess(channels, gray_from, self.intensity, mean, std)
        self.inference = dict(inference or {})
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.synthetic = dict(synthetic) if synthetic else None
        self.seed = seed
        self.eval_crop = int(eval_crop) if eval_crop else None
        self._splits: dict[str, list[Sample]] = {}
        build_train_transform(image_size, self.augment)  # fail on bad augment keys now, not in setup

    # -- preparation / loading --------------------------------------------------------
    def prepare_data(self) -> None:
        """Write the synthetic dataset once (rank 0 of each node; the others wait)."""
        if self.synthetic is not None:
            ensure_synthetic(self.root if self.root is not None else self.split_dirs["train"].parent,
                             **self.synthetic)

    def _load(self, split: str) -> list[Sample]:
        if split in self._splits:
            return self._splits[split]
        if self.synthetic is not None:
            self.prepare_data()  # idempotent; covers use outside a Trainer (eval, notebooks)
        folder = self.split_dirs[split]
        if split == "val" and not folder.exists():
            train = self._load("train")
            n_val = max(1, int(round(self.val_fraction * len(train))))
            if len(train) < 2:
                raise DataError(f"{self.split_dirs['train']} has {len(train)} image(s) and there "
                                f"is no {folder}; add a val/ folder or more training images")
            order = np.random.default_rng(self.split_seed).permutation(len(train))
            val_idx = set(order[:n_val].tolist())
            log.warning("no %s: holding out %d of %d training images as validation (seed %d)",
                        folder, n_val, len(train), self.split_seed)
            self._splits["val"] = [s for i, s in enumerate(train) if i in val_idx]
            self._splits["train"] = [s for i, s in enumerate(train) if i not in val_idx]
            return self._splits["val"]
        if split == "test" and not folder.exists():
            log.warning("no %s: testing on the validation split", folder)
            self._splits["test"] = self._load("val")
            return self._splits["test"]
        pre = self.preprocess
        self._splits[split] = load_split(folder, self.image_dir, self.label_dir, self.fov_dir,
                                         pre.channels, pre.gray_from)
        for s in self._splits[split]:
            s.image = pre.adjust(s.image, s.fov)
        log.info("%s: %d images from %s", split, len(self._splits[split]), folder)
        return self._splits[split]

    def setup(self, stage: str | None = None) -> None:
        # Fitting decodes the test split too: a damaged test image is found before the first
        # step, not after the whole training.
        needed = {"fit": ["train", "val", "test"], "validate": ["val"], "test": ["test"],
                  "predict": ["test"], None: ["train", "val", "test"]}[stage]
        for split in needed:
            self._load(split)
        if stage in ("fit", None) and not self._splits["train"]:
            raise DataError(f"no training images left in {self.split_dirs['train']}")

    def split_used(self, split: str) -> str:
        """The split whose images ``split`` really holds: ``"val"`` for the test split of a
        dataset without a test folder (it falls back to validation), else ``split``."""
        if split == "test" and self.synthetic is None and not self.split_dirs["test"].exists():
            return "val"
        return split

    def samples(self, split: str) -> list[Sample]:
        """Decoded samples of a split (``train``, ``val`` or ``test``)."""
        return self._load(split)

    # -- loaders ------------------------------------------------------------------------
    def _dist(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None, shuffle: bool,
                collate_fn: Any = None) -> DataLoader:
        # Its own generator: creating an iterator draws a base seed from it, not from the
        # global RNG — Lightning creates iterators at different moments in a resumed run, and
        # the global RNG must then still match the uninterrupted run's.
        seed = self.seed if self.seed is not None else torch.initial_seed()
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers and self.num_workers > 0,
                          collate_fn=collate_fn, generator=torch.Generator().manual_seed(seed),
                          multiprocessing_context=worker_context(self.num_workers))

    def train_dataloader(self) -> DataLoader:
        samples = self._load("train")
        dataset = RandomCropDataset(samples, build_train_transform(self.image_size, self.augment),
                                    self.num_samples_per_image, self.mean, self.std)
        rank, world = self._dist()
        seed = self.seed if self.seed is not None else torch.initial_seed()
        sampler = EpochSampler(len(dataset), seed, rank, world, epoch_source=self._current_epoch)
        return self._loader(dataset, self.train_bs, sampler, False, collate_crops)

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = WholeImageDataset(self._load(split), self.mean, self.std, self.eval_crop)
        rank, world = self._dist()
        sampler = ShardSampler(len(dataset), rank, world) if world > 1 else None
        return self._loader(dataset, self.val_bs, sampler, False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
