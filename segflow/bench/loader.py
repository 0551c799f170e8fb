"""Data-loader throughput: training crops per second, per worker and per DataLoader.

* :func:`crops_per_second` times the training dataset's item loop (crop, augmentation,
  tensors) in this process: exactly what **one** DataLoader worker runs, so
  ``num_workers`` workers give at most that rate times the workers.
* :func:`bench_loader` (the ``loader`` table of ``python -m segflow.bench``) drives the real
  :class:`~segflow.data.SegDataModule` (``RandomCropDataset`` + augmentation +
  ``collate_crops``) with N workers on synthetic grayscale XCA images written once under
  ``paths.data_dir``, composed from ``conf/data/synthetic_xca.yaml`` so the augmentation
  is the one training uses.

    python -m segflow.bench.loader                     # 512x512 gray, crop 128, one worker
    python -m segflow.bench.loader --size 1024 --crop 256 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segflow.bench.timing import Row, error_line
from segflow.data.datasets import RandomCropDataset, Sample
from segflow.data.transforms import build_train_transform


@dataclass
class LoaderCase(Row):
    """One row of the loader table."""

    workers: int
    crops_per_s: float | None
    startup_s: float | None
    batches: int
    crop: int
    train_bs: int
    num_samples_per_image: int
    source_size: int
    pin_memory: bool
    persistent_workers: bool
    error: str | None = None


def loader_datamodule(workers: int, *, source_size: int, n_images: int, crop: int, train_bs: int,
                      num_samples_per_image: int, pin_memory: bool | None,
                      persistent_workers: bool):
    """A :class:`~segflow.data.SegDataModule` over ``n_images`` synthetic XCA images of
    ``source_size``² pixels (generated once, under their own folder so they never clash
    with the training dataset), set up for fitting. Call inside a Hydra context."""
    root = f"${{paths.data_dir}}/synthetic/bench_xca_{source_size}px_n{n_images}"
    cfg = compose(config_name="train", overrides=[
        "data=synthetic_xca", f"data.root={root}", f"data.synthetic.image_size={source_size}",
        f"data.synthetic.n_train={n_images}", "data.synthetic.n_val=1", "data.synthetic.n_test=1",
        "data.channels=1", f"data.image_size={crop}", f"data.train_bs={train_bs}",
        f"data.num_samples_per_image={num_samples_per_image}", f"data.num_workers={workers}",
        f"++data.persistent_workers={str(bool(persistent_workers)).lower()}",
        f"++data.pin_memory={'null' if pin_memory is None else str(bool(pin_memory)).lower()}",
    ])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def bench_loader(workers: int, *, source_size: int = 512, n_images: int = 32, crop: int = 320,
                 train_bs: int = 4, num_samples_per_image: int = 4, epochs: int = 3,
                 pin_memory: bool | None = None, persistent_workers: bool = True) -> LoaderCase:
    """Iterate the training loader for ``epochs`` passes with ``workers`` workers.

    ``startup_s`` is the time to the first batch (worker start-up and first crops);
    ``crops_per_s`` counts every later batch over the time after the first, i.e. the
    steady rate a training loop could consume.
    """
    dm = loader_datamodule(workers, source_size=source_size, n_images=n_images, crop=crop,
                           train_bs=train_bs, num_samples_per_image=num_samples_per_image,
                           pin_memory=pin_memory, persistent_workers=persistent_workers)
    case = LoaderCase(workers, None, None, 0, crop, train_bs, num_samples_per_image, source_size,
                      bool(dm.pin_memory), bool(persistent_workers and workers > 0))
    try:
        loader = dm.train_dataloader()
        crops, first_at = 0, None
        start = time.perf_counter()
        for _ in range(max(1, epochs)):
            for batch in loader:
                if first_at is None:
                    first_at = time.perf_counter()
                else:
                    crops += batch["image"].shape[0]
                case.batches += 1
        end = time.perf_counter()
        case.startup_s = first_at - start
        if case.batches > 1:
            case.crops_per_s = crops / (end - first_at)
        del loader  # shuts persistent workers down
    except Exception as exc:  # reported in the table, the other rows still run
        case.error = error_line(exc)
    return case


FOLDER_YAML = Path(__file__).resolve().parents[1] / "conf" / "data" / "folder.yaml"


def default_augment() -> dict[str, Any]:
    """The ``augment`` block of ``conf/data/folder.yaml`` (what every dataset config uses)."""
    return dict(OmegaConf.to_container(OmegaConf.load(FOLDER_YAML).augment))


def crops_per_second(image_size: int = 512, crop_size: int = 128, channels: int = 1,
                     augment: dict[str, Any] | None = None, num_samples_per_image: int = 4,
                     n_images: int = 8, seconds: float = 5.0, seed: int = 0) -> dict[str, Any]:
    """Time the training dataset's item loop in this process (= one loader worker).

    Args:
        image_size: side of the square source images (decoded, cached, as in training).
        crop_size: ``data.image_size``.
        channels: 1 (grayscale) or 3.
        augment: ``data.augment``; None = the default of ``conf/data/folder.yaml``.
        num_samples_per_image: crops per item (``data.num_samples_per_image``).
        n_images: distinct images cycled through.
        seconds: measuring time (after one warm-up item).

    Returns:
        dict with ``crops_per_s``, ``items``, ``crops``, ``seconds``, ``torch_threads`` and
        the settings.
    """
    rng = np.random.default_rng(seed)
    samples = [Sample(f"{i}.png", rng.random((image_size, image_size, channels), np.float32),
                      (rng.random((image_size, image_size)) > 0.9).astype(np.uint8), None)
               for i in range(n_images)]
    augment = default_augment() if augment is None else augment
    dataset = RandomCropDataset(samples, build_train_transform(crop_size, augment),
                                num_samples_per_image)
    dataset[0]  # warm-up: seeding, first allocations
    items, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or items < 2:
        out = dataset[items % n_images]
        assert out["image"].shape == (num_samples_per_image, channels, crop_size, crop_size)
        items += 1
    elapsed = time.perf_counter() - start
    crops = items * num_samples_per_image
    return {"crops_per_s": round(crops / elapsed, 1), "items": items, "crops": crops,
            "seconds": round(elapsed, 2), "image_size": image_size, "crop_size": crop_size,
            "channels": channels, "num_samples_per_image": num_samples_per_image,
            "torch_threads": torch.get_num_threads(), "augment": augment}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m segflow.bench.loader",
                                description="Augmented training crops per second for one loader worker.")
    p.add_argument("--size", type=int, default=512, help="source image side (default 512)")
    p.add_argument("--crop", type=int, default=128, help="crop side, data.image_size (default 128)")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--samples", type=int, default=4, help="crops per item (default 4)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--no-augment", action="store_true", help="crop only")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # a DataLoader worker runs single-threaded
    print(json.dumps(crops_per_second(a.size, a.crop, a.channels, {} if a.no_augment else None,
                                      a.samples, seconds=a.seconds)))


if __name__ == "__main__":
    main()
