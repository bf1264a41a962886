"""Fine-grained data sets in their released layouts (`cub:ROOT`).

CUB-200-2011 (Wah et al. 2011), as downloaded: `ROOT/images.txt` ("<id> <path under images/>"),
`image_class_labels.txt` ("<id> <class id, 1-based>"), `train_test_split.txt` ("<id> <1 = train>"),
`classes.txt` ("<class id> <NNN.Class_Name>"), `images/`. ROOT may also be the folder holding `CUB_200_2011/`.
Class names drop the number and underscores ("001.Black_footed_Albatross" -> "Black footed Albatross"). The
release has no validation split: `val` is empty (training selects nothing on it), as the official split is
train (5,994) / test (5,794).
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from ..errors import DataError
from .datasets import DatasetSplits, Sample, _existing_dir, register_dataset


def _read_table(path: Path, columns: int) -> dict[int, list[str]]:
    """`<integer id> <field> ...` lines of a whitespace-separated table, by id; the last field may hold spaces."""
    if not path.is_file():
        raise DataError(f"missing file {path}")
    rows: dict[int, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=columns - 1)
        if len(fields) != columns or not fields[0].isdigit():
            raise DataError(f"{path}, line {number}: expected {columns} fields starting with an integer id, "
                            f"got {line!r}")
        key = int(fields[0])
        if key in rows:
            raise DataError(f"{path}, line {number}: id {key} appears twice")
        rows[key] = fields[1:]
    if not rows:
        raise DataError(f"{path} is empty")
    return rows


def _relative_image(root: Path, rel: str, where: str) -> Path:
    if os.path.isabs(rel) or PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
        raise DataError(f"{where}: image path {rel!r} escapes the image folder (absolute or containing '..')")
    image = root / rel
    if not image.exists():
        raise DataError(f"{where}: image file {image} does not exist")
    return image


@register_dataset("cub")
def load_cub(arg: str) -> DatasetSplits:
    root = _existing_dir(arg, "CUB-200-2011 folder")
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
        root = root / "CUB_200_2011"
    images = _read_table(root / "images.txt", 2)
    labels = _read_table(root / "image_class_labels.txt", 2)
    is_train = _read_table(root / "train_test_split.txt", 2)
    classes = _read_table(root / "classes.txt", 2)
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise DataError(f"{root / 'classes.txt'}: class ids must be 1..{len(classes)} without gaps")
    classnames = [re.sub(r"^\d+\.", "", classes[c][0]).replace("_", " ") for c in sorted(classes)]
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        if set(table) != set(images):
            unmatched = sorted(set(table) ^ set(images))[:5]
            raise DataError(f"{root / name} and {root / 'images.txt'} list different image ids (e.g. {unmatched})")
    train, test = [], []
    for image_id in sorted(images):
        where = f"{root / 'images.txt'}, image id {image_id}"
        label, flag = labels[image_id][0], is_train[image_id][0]
        if not label.isdigit() or int(label) not in classes:
            raise DataError(f"{root / 'image_class_labels.txt'}, image id {image_id}: class {label!r} is not in "
                            "classes.txt")
        if flag not in ("0", "1"):
            raise DataError(f"{root / 'train_test_split.txt'}, image id {image_id}: expected 0 or 1, got {flag!r}")
        sample = Sample(_relative_image(root / "images", images[image_id][0], where), int(label) - 1)
        (train if flag == "1" else test).append(sample)
    return DatasetSplits("CUB", classnames, train=train, val=[], test=test, root=root / "images")
