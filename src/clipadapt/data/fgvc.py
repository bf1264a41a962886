"""Fine-grained data sets in their released layouts (`cub:ROOT`, `dogs:ROOT`, `nabirds:ROOT`, `food101:ROOT`).

None of the releases has a validation split: `val` is empty (training selects nothing on it) and train/test are
the official split. Each sets the `superclass` annotation, the kind of thing all its classes are ("bird", "dog",
"food").

CUB-200-2011 (Wah et al. 2011), as downloaded: `ROOT/images.txt` ("<id> <path under images/>"),
`image_class_labels.txt` ("<id> <class id, 1-based>"), `train_test_split.txt` ("<id> <1 = train>"),
`classes.txt` ("<class id> <NNN.Class_Name>"), `images/`. ROOT may also be the folder holding `CUB_200_2011/`.
Class names drop the number and underscores ("001.Black_footed_Albatross" -> "Black footed Albatross"). The
official split is train (5,994) / test (5,794).

Stanford Dogs (Khosla et al. 2011), as downloaded: `ROOT/Images/<wnid>-<Breed_Name>/<file>.jpg` (images.tar)
and `train_list.mat`, `test_list.mat` (lists.tar) in `ROOT/lists/` or in ROOT itself. The MATLAB files hold
`file_list` (cell array of paths under Images/, "n02085620-Chihuahua/n02085620_5927.jpg") and `labels` (class
ids, 1-based, 1..N without gaps); `annotation_list` is not read. Class names are the breed folders without the
wnid and underscores ("n02085782-Japanese_spaniel" -> "Japanese spaniel"); all images of a label must lie in
one folder, and each folder must have one label. The official split is train (12,000) / test (8,580).

NABirds (Van Horn et al. 2015), as downloaded: CUB's four tables plus `hierarchy.txt`, in ROOT or
`ROOT/nabirds/`. Image ids are strings (UUIDs), not integers; paths are under `images/`. `classes.txt`
("<class id> <name with spaces>") lists every node of the taxonomy, with ids that are not contiguous, and
`hierarchy.txt` ("<child class id> <parent class id>") links them into a tree. The classes are the ones that
have images (the 555 leaves in the release), labelled 0..n-1 in increasing class id, named as in classes.txt.
The superclass is the name of the tree's root, lower-cased with a plural "s" dropped ("Birds" -> "bird"). The
official split is train (23,929) / test (24,633).

Food-101 (Bossard et al. 2014), as downloaded: `ROOT/images/<class>/<id>.jpg`, `ROOT/meta/classes.txt` (one
class per line, "apple_pie"), `meta/train.txt` and `meta/test.txt` ("apple_pie/1005649": the image
images/apple_pie/1005649.jpg). ROOT may also be the folder holding `food-101/`. Class names are the folder
names with underscores as spaces ("apple_pie" -> "apple pie"), in classes.txt order. The official split is
train (75,750) / test (25,250). Its `template_key` is "Food101", so CoOp's food template applies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import DataError
from .datasets import (
    INTEGER,
    DatasetSplits,
    Sample,
    _existing_dir,
    check_relative_path,
    image_under,
    read_lines,
    read_table,
    register_dataset,
)


def _check_same_ids(root: Path, images: dict, tables: Iterable[tuple[str, dict]]) -> None:
    for name, table in tables:
        if set(table) != set(images):
            unmatched = sorted(set(table) ^ set(images))[:5]
            raise DataError(f"{root / name} and {root / 'images.txt'} list different image ids (e.g. {unmatched})")


def _split_by_flag(
    root: Path, image_ids: Iterable, images: dict, labels: dict, is_train: dict, label_of: dict[int, int]
) -> tuple[list[Sample], list[Sample]]:
    """Train and test samples of CUB-style tables: `label_of` maps a class id of image_class_labels.txt to a label."""
    train, test = [], []
    for image_id in image_ids:
        where = f"{root / 'images.txt'}, image id {image_id}"
        label, flag = labels[image_id][0], is_train[image_id][0]
        if not INTEGER.fullmatch(label) or int(label) not in label_of:
            raise DataError(
                f"{root / 'image_class_labels.txt'}, image id {image_id}: class {label!r} is not in classes.txt"
            )
        if flag not in ("0", "1"):
            raise DataError(f"{root / 'train_test_split.txt'}, image id {image_id}: expected 0 or 1, got {flag!r}")
        sample = Sample(image_under(root / "images", images[image_id][0], where), label_of[int(label)])
        (train if flag == "1" else test).append(sample)
    return train, test


# ---------------------------------------------------------------- CUB-200-2011


@register_dataset("cub")
def load_cub(arg: str) -> DatasetSplits:
    root = _existing_dir(arg, "CUB-200-2011 folder")
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
        root = root / "CUB_200_2011"
    images = read_table(root / "images.txt", 2)
    labels = read_table(root / "image_class_labels.txt", 2)
    is_train = read_table(root / "train_test_split.txt", 2)
    classes = read_table(root / "classes.txt", 2)
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise DataError(f"{root / 'classes.txt'}: class ids must be 1..{len(classes)} without gaps")
    classnames = [re.sub(r"^\d+\.", "", classes[c][0]).replace("_", " ") for c in sorted(classes)]
    _check_same_ids(root, images, (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)))
    train, test = _split_by_flag(root, sorted(images), images, labels, is_train, {c: c - 1 for c in classes})
    return DatasetSplits(
        "CUB", classnames, train=train, val=[], test=test, root=root / "images", annotations={"superclass": "bird"}
    )


# ---------------------------------------------------------------- Stanford Dogs


def _load_mat(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"missing file {path}")
    import scipy.io  # here, not at import time: only this loader needs scipy

    try:
        return scipy.io.loadmat(str(path))
    # scipy raises several types on a file that is not a MATLAB file (ValueError, MatReadError, TypeError, ...).
    except Exception as exc:
        raise DataError(f"cannot read MATLAB file {path}: {exc or type(exc).__name__}") from exc


def _mat_strings(path: Path, mat: dict[str, Any], key: str) -> list[str]:
    """A cell array of strings (or a char matrix) as a list of str."""
    if key not in mat:
        raise DataError(f"{path}: no variable {key!r} (expected a cell array of image paths)")
    value = np.asarray(mat[key])
    if value.dtype.kind == "U":  # a char matrix: one padded row per string
        return [str(s).rstrip() for s in value.ravel()]
    if value.dtype != object:
        raise DataError(f"{path}: {key} must be a cell array of strings, got a {value.dtype} array")
    strings = []
    for i, cell in enumerate(value.ravel(), 1):
        if isinstance(cell, str):
            strings.append(cell)
        elif isinstance(cell, np.ndarray) and cell.dtype.kind == "U" and cell.size <= 1:
            strings.append(str(cell.ravel()[0]) if cell.size else "")
        else:
            raise DataError(f"{path}: {key}, entry {i} is not a string (got {cell!r:.60})")
    return strings


def _mat_labels(path: Path, mat: dict[str, Any], key: str) -> list[int]:
    """A numeric vector of positive integer class ids."""
    if key not in mat:
        raise DataError(f"{path}: no variable {key!r} (expected a vector of class ids)")
    value = np.asarray(mat[key])
    if value.dtype.kind not in "iuf":
        raise DataError(f"{path}: {key} must be a numeric vector of class ids, got a {value.dtype} array")
    labels = []
    for i, label in enumerate(value.ravel().tolist(), 1):
        if not float(label).is_integer() or label < 1:
            raise DataError(f"{path}: {key}, entry {i}: class id {label:g} is out of range (expected 1, 2, ...)")
        labels.append(int(label))
    return labels


def _breed_name(folder: str) -> str:
    return re.sub(r"^n\d+-", "", folder).replace("_", " ")


@register_dataset("dogs")
def load_dogs(arg: str) -> DatasetSplits:
    root = _existing_dir(arg, "Stanford Dogs folder")
    # lists.tar unpacks its .mat files into the current folder; many copies keep them in lists/.
    flat = (root / "train_list.mat").is_file() and not (root / "lists").is_dir()
    lists = root if flat else root / "lists"
    images_root = root / "Images"
    if not images_root.is_dir():
        raise DataError(f"Stanford Dogs folder {root} has no Images/ folder (from images.tar)")
    folder_of: dict[int, str] = {}
    label_of: dict[str, int] = {}
    splits: dict[str, list[Sample]] = {}
    seen: dict[Path, Path] = {}
    for split in ("train", "test"):
        path = lists / f"{split}_list.mat"
        mat = _load_mat(path)
        files, labels = _mat_strings(path, mat, "file_list"), _mat_labels(path, mat, "labels")
        if len(files) != len(labels):
            raise DataError(f"{path}: file_list has {len(files)} entries but labels has {len(labels)}")
        samples = []
        for i, (rel, label) in enumerate(zip(files, labels), 1):
            where = f"{path}, entry {i}"
            image = image_under(images_root, rel, where)
            parts = PurePosixPath(rel).parts
            if len(parts) != 2:
                raise DataError(f"{where}: expected <breed folder>/<file> under Images/, got {rel!r}")
            folder = parts[0]
            if folder_of.setdefault(label, folder) != folder:
                raise DataError(
                    f"{where}: class {label} is the folder {folder!r} here but {folder_of[label]!r} elsewhere"
                )
            if label_of.setdefault(folder, label) != label:
                raise DataError(f"{where}: folder {folder!r} has class {label} here but {label_of[folder]} elsewhere")
            if image in seen:
                raise DataError(f"{where}: image {rel!r} is listed twice (also in {seen[image]})")
            seen[image] = path
            samples.append(Sample(image, label - 1))
        splits[split] = samples
    if not folder_of:
        raise DataError(f"{lists / 'train_list.mat'} and {lists / 'test_list.mat'} list no images")
    gaps = sorted(set(range(1, max(folder_of) + 1)) - set(folder_of))
    if gaps:
        raise DataError(
            f"{lists / 'train_list.mat'} and {lists / 'test_list.mat'}: class ids must be "
            f"1..{max(folder_of)} without gaps; no image has class {gaps[:10]}"
        )
    classnames = [_breed_name(folder_of[label]) for label in sorted(folder_of)]
    return DatasetSplits(
        "StanfordDogs",
        classnames,
        train=splits["train"],
        val=[],
        test=splits["test"],
        root=images_root,
        annotations={"superclass": "dog"},
    )


# ---------------------------------------------------------------- NABirds


def _taxonomy_root(path: Path, parent: dict[int, int], class_id: int) -> int:
    """The class at the top of `class_id`'s chain of parents in hierarchy.txt (at `path`)."""
    chain = [class_id]
    while chain[-1] in parent:
        if parent[chain[-1]] in chain:
            raise DataError(f"{path}: the hierarchy has a cycle through class {parent[chain[-1]]}")
        chain.append(parent[chain[-1]])
    return chain[-1]


@register_dataset("nabirds")
def load_nabirds(arg: str) -> DatasetSplits:
    root = _existing_dir(arg, "NABirds folder")
    if not (root / "images.txt").is_file() and (root / "nabirds" / "images.txt").is_file():
        root = root / "nabirds"
    images = read_table(root / "images.txt", 2, integer_ids=False)
    labels = read_table(root / "image_class_labels.txt", 2, integer_ids=False)
    is_train = read_table(root / "train_test_split.txt", 2, integer_ids=False)
    classes = read_table(root / "classes.txt", 2)
    hierarchy = read_table(root / "hierarchy.txt", 2)
    parent: dict[int, int] = {}
    for child, (parent_id,) in hierarchy.items():
        if child not in classes:
            raise DataError(f"{root / 'hierarchy.txt'}: child class {child} is not in classes.txt")
        if not INTEGER.fullmatch(parent_id) or int(parent_id) not in classes:
            raise DataError(
                f"{root / 'hierarchy.txt'}, class {child}: parent class {parent_id!r} is not in classes.txt"
            )
        parent[child] = int(parent_id)
    _check_same_ids(root, images, (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)))
    used = set()
    for image_id, (label,) in labels.items():
        if not INTEGER.fullmatch(label) or int(label) not in classes:
            raise DataError(
                f"{root / 'image_class_labels.txt'}, image id {image_id}: class {label!r} is not in classes.txt"
            )
        used.add(int(label))
    class_ids = sorted(used)
    tops = {_taxonomy_root(root / "hierarchy.txt", parent, c) for c in class_ids}
    if len(tops) != 1:
        names = ", ".join(repr(classes[c][0]) for c in sorted(tops)[:5])
        raise DataError(
            f"{root / 'hierarchy.txt'}: the classes with images belong to {len(tops)} separate trees "
            f"(roots {names}); expected one root such as 'Birds'"
        )
    superclass = re.sub(r"(?<!s)s$", "", classes[tops.pop()][0].strip().lower())
    label_of = {class_id: label for label, class_id in enumerate(class_ids)}
    train, test = _split_by_flag(root, images, images, labels, is_train, label_of)
    return DatasetSplits(
        "NABirds",
        [classes[c][0] for c in class_ids],
        train=train,
        val=[],
        test=test,
        root=root / "images",
        annotations={"superclass": superclass},
    )


# ---------------------------------------------------------------- Food-101


@register_dataset("food101")
def load_food101(arg: str) -> DatasetSplits:
    root = _existing_dir(arg, "Food-101 folder")
    if not (root / "meta" / "classes.txt").is_file() and (root / "food-101" / "meta" / "classes.txt").is_file():
        root = root / "food-101"
    meta = root / "meta"
    label_of: dict[str, int] = {}
    for number, name in read_lines(meta / "classes.txt"):
        if len(name.split()) != 1 or "/" in name:
            raise DataError(f"{meta / 'classes.txt'}, line {number}: expected one class folder name, got {name!r}")
        if name in label_of:
            raise DataError(f"{meta / 'classes.txt'}, line {number}: class {name!r} appears twice")
        label_of[name] = len(label_of)
    splits: dict[str, list[Sample]] = {}
    seen: dict[str, str] = {}
    for split in ("train", "test"):
        path = meta / f"{split}.txt"
        samples = []
        for number, entry in read_lines(path):
            where = f"{path}, line {number}"
            check_relative_path(entry, where)
            parts = PurePosixPath(entry).parts
            if len(parts) != 2 or len(entry.split()) != 1:
                raise DataError(f"{where}: expected <class>/<image id>, got {entry!r}")
            if parts[0] not in label_of:
                raise DataError(f"{where}: class {parts[0]!r} is not in {meta / 'classes.txt'}")
            if entry in seen:
                raise DataError(f"{where}: image {entry!r} is listed twice (also in {seen[entry]})")
            seen[entry] = path.name
            samples.append(Sample(image_under(root / "images", entry + ".jpg", where), label_of[parts[0]]))
        splits[split] = samples
    classnames = [name.replace("_", " ") for name in label_of]
    return DatasetSplits(
        "Food101",
        classnames,
        train=splits["train"],
        val=[],
        test=splits["test"],
        root=root / "images",
        template_key="Food101",
        annotations={"superclass": "food"},
    )
