"""Data: folder datasets, augmentation, the datamodule and synthetic vessel generators."""

from segflow.data.datamodule import SegDataModule, ShardSampler
from segflow.data.datasets import Sample, load_split
from segflow.data.io import read_image, read_mask
from segflow.data.synthetic import ensure_synthetic, synth_octa, synth_xca

__all__ = ["Sample", "SegDataModule", "ShardSampler", "ensure_synthetic", "load_split",
           "read_image", "read_mask", "synth_octa", "synth_xca"]
