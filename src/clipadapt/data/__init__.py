"""Data sets, image loading and CoOp-style splits."""

from .datasets import (
    DATASETS,
    DatasetSplits,
    ImageDataset,
    drop_unreadable_images,
    Sample,
    find_unreadable_images,
    load_dataset,
    load_image,
    load_image_size,
    register_dataset,
)
from .splits import base_new_split, fewshot, select_classes, split_fingerprint
from . import fgvc  # noqa: F401  (registers "cub:", "dogs:", "nabirds:", "food101:")
from . import world  # noqa: F401  (registers the "world:" data set prefix)

__all__ = [
    "DATASETS",
    "DatasetSplits",
    "ImageDataset",
    "Sample",
    "base_new_split",
    "drop_unreadable_images",
    "fewshot",
    "find_unreadable_images",
    "load_dataset",
    "load_image",
    "load_image_size",
    "register_dataset",
    "select_classes",
    "split_fingerprint",
]
