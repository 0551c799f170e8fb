"""Data-loader throughput: training crops per second vs DataLoader workers.

Self-contained on purpose: it drives the real :class:`~segflow.data.SegDataModule`
(``RandomCropDataset`` + augmentation + ``collate_crops``) on synthetic grayscale XCA
images written once under ``paths.data_dir``, composed from ``conf/data/synthetic_xca.yaml``
so the augmentation is the one training uses.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from hydra import compose
from hydra.utils import instantiate


@dataclass
class LoaderCase:
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        case.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return case
