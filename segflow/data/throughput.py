"""Training-loader throughput: augmented crops per second for **one** worker.

A DataLoader worker runs exactly :meth:`RandomCropDataset.__getitem__` (crop, then
augmentation, then tensors) for its items, so timing that call in one process measures
the per-worker rate; ``num_workers`` workers give at most that rate times the workers
(fewer when they share cores with training).

    python -m segflow.data.throughput                     # 512x512 gray, crop 128, default augment
    python -m segflow.data.throughput --size 1024 --crop 256 --seconds 10

:func:`crops_per_second` is the reusable function (``make bench`` can call it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segflow.data.datasets import RandomCropDataset, Sample
from segflow.data.transforms import build_train_transform

FOLDER_YAML = Path(__file__).resolve().parents[1] / "conf" / "data" / "folder.yaml"


def default_augment() -> dict[str, Any]:
    """The ``augment`` block of ``conf/data/folder.yaml`` (what every dataset config uses)."""
    from omegaconf import OmegaConf  # config file only; the data code itself stays Hydra-free

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
    p = argparse.ArgumentParser(prog="python -m segflow.data.throughput",
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
