"""Data sets, image loading and CoOp-style splits."""

from . import (
    fgvc,  # noqa: F401  (registers "cub:", "dogs:", "nabirds:", "food101:")
    world,  # noqa: F401  (registers the "world:" data set prefix)
)
from .datasets import (
    DATASETS,
    DatasetSplits,
    ImageDataset,
    PerClass,
    Sample,
    drop_unreadable_images,
    find_images,
    find_unreadable_images,
    load_dataset,
    load_image,
    load_image_size,
    read_part_boxes,
    register_dataset,
)
from .splits import FEWSHOT_SAMPLERS, base_new_split, fewshot, read_coop_fewshot, select_classes, split_fingerprint

__all__ = [
    "DATASETS",
    "FEWSHOT_SAMPLERS",
    "DatasetSplits",
    "ImageDataset",
    "PerClass",
    "Sample",
    "base_new_split",
    "drop_unreadable_images",
    "fewshot",
    "find_images",
    "find_unreadable_images",
    "load_dataset",
    "load_image",
    "load_image_size",
    "read_coop_fewshot",
    "read_part_boxes",
    "register_dataset",
    "select_classes",
    "split_fingerprint",
]
