"""Data sets as lists of image samples: the on-disk layouts clipadapt reads, and image decoding."""

from __future__ import annotations

import csv
import glob
import json
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from clipadapt.errors import DataError
from clipadapt.paths import write_text_atomic

SPLIT_NAMES = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Sample:
    """One image: its absolute path, class index (-1 for caption-only pairs) and optional caption."""

    path: Path
    label: int
    caption: str | None = None


@dataclass
class DatasetSplits:
    """A data set's class names (index = label) and its train/val/test samples."""

    name: str
    classnames: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    root: Path
    # CoOp's dataset class name when known: clipadapt.text picks CoOp's per-dataset prompt template by it.
    template_key: str | None = None
    # What the data set knows beyond its labels, by name, for the metrics and methods that use it: the world's and
    # the fine-grained loaders' are `class_attributes` (a `PerClass` of {"colour": "red", ...}: protocols report
    # per-attribute accuracy), `superclass` (one word for every class, "bird": MP-FGVC's prompts) and `part_boxes`
    # (the path of a `parts.json`, `read_part_boxes`: where each image's deciding parts are). A loader may add
    # any other; a subset of the classes keeps each `PerClass` annotation's values for its classes.
    annotations: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "class_attributes" in self.annotations and not isinstance(self.annotations["class_attributes"], PerClass):
            raise DataError(f"data set {self.name}: its class_attributes annotation must be a PerClass (one per class)")
        for name, value in self.annotations.items():
            if isinstance(value, PerClass) and len(value) != len(self.classnames):
                count = f"{len(value)} values for {len(self.classnames)} classes"
                raise DataError(f"data set {self.name}: annotation {name!r} has {count}")

    def split(self, name: str) -> list[Sample]:
        """The samples of split `name` ("train", "val" or "test")."""
        if name not in SPLIT_NAMES:
            raise DataError(f"data set {self.name} has no split {name!r}; expected one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)


class PerClass(list):
    """An annotation with one value per class (index = label)."""


def read_part_boxes(path: Path) -> dict[Path, dict[str, list[int]]]:
    """A `parts.json` (image path relative to its folder -> part name -> box) keyed by absolute image path (as
    `Sample.path`): the boxes (x0, y0, x1, y1; x1, y1 exclusive, in pixels) of the parts that decide the image's
    class."""
    path = Path(path).expanduser().absolute()
    try:
        parts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the part boxes in {path}: {exc}") from exc
    return {path.parent / rel: boxes for rel, boxes in parts.items()}


# ---------------------------------------------------------------- images


def _open_loaded(path: Path) -> Image.Image:
    with Image.open(path) as img:
        # Decode now: a truncated or corrupt file only fails here, not at Image.open.
        img.load()
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit grayscale (PNG/TIFF): PIL's own conversion clips at 255 and turns most pixels white.
        scaled = np.asarray(img).astype(np.float32) * (255.0 / 65535.0)
        return Image.fromarray(np.clip(scaled.round(), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        # Transparent pixels carry arbitrary (often black) colour; show them as a white background instead.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _failure_reason(path: Path, exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return (exc.strerror or str(exc)).lower()
    if path.is_file() and path.stat().st_size == 0:
        return "file is empty (0 bytes)"
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image (corrupt header or not an image file)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"refused as a possible decompression bomb: {exc}"
    return f"corrupt image data ({exc or type(exc).__name__})"


def load_image(path: Path) -> Image.Image:
    """Open, fully decode and convert an image to RGB; DataError naming the file on any failure."""
    try:
        return _to_rgb(_open_loaded(path))
    # PIL's decoders raise many types on malformed input (OSError, SyntaxError, struct.error, ...).
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {_failure_reason(Path(path), exc)}") from exc


def load_image_size(path: Path) -> tuple[int, int]:
    """(width, height) read from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:  # as load_image: PIL raises many types on malformed input
        raise DataError(f"cannot read image {path}: {_failure_reason(Path(path), exc)}") from exc


def find_unreadable_images(samples: Sequence[Sample], progress: bool = False) -> list[tuple[Sample, str]]:
    """Decode every sample's image; return (sample, reason) for each one that fails."""

    def check(sample: Sample) -> str | None:
        try:
            _open_loaded(sample.path)
        except Exception as exc:
            return _failure_reason(sample.path, exc)
        return None

    # Decoding releases the GIL, so threads speed up a full pass over a large data set.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        reasons = list(tqdm(pool.map(check, samples), total=len(samples), desc="checking images", disable=not progress))
    return [(sample, reason) for sample, reason in zip(samples, reasons) if reason is not None]


def drop_unreadable_images(
    splits: DatasetSplits, progress: bool = False
) -> tuple[DatasetSplits, list[tuple[Sample, str]]]:
    """The data set without the samples whose image cannot be decoded, and (sample, reason) for each dropped one:
    for users who ask to skip bad files and get a report instead of an error."""
    bad = find_unreadable_images(splits.train + splits.val + splits.test, progress=progress)
    bad_paths = {sample.path for sample, _ in bad}
    kept = {name: [s for s in splits.split(name) if s.path not in bad_paths] for name in SPLIT_NAMES}
    return replace(splits, **kept), bad


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


PATH_COLUMNS = ("path", "image", "filepath", "file", "filename")


def _paths_in_csv(path: Path) -> list[Path]:
    """The image paths a CSV lists: its `path` (or `image`, `filepath`, `file`, `filename`) column, else its first;
    relative paths are relative to the CSV's folder."""
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the image list {path}: {e}") from e
    # (line number, cells) of the lines that are not blank
    rows = [(number, row) for number, row in enumerate(rows, 1) if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"the image list {path} is empty")
    header = [cell.strip().lower() for cell in rows[0][1]]
    column = next((header.index(name) for name in PATH_COLUMNS if name in header), None)
    if column is not None:
        rows = rows[1:]
    elif not (path.parent / rows[0][1][0].strip()).is_file():  # a header naming no path column, not a path
        raise DataError(
            f"the image list {path}: its first line ({','.join(rows[0][1])[:80]}) is no image path and names no path "
            f"column ({', '.join(PATH_COLUMNS)})"
        )
    if not rows:
        raise DataError(f"the image list {path} lists no images")
    column = column or 0
    missing = [number for number, row in rows if len(row) <= column or not row[column].strip()]
    if missing:
        raise DataError(f"the image list {path}: line {missing[0]} has no path")
    return [(path.parent / row[column].strip()).absolute() for _, row in rows]


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files `inputs` name, in order, each once: files (a `.csv` is a list of image paths), folders
    (their image files, searched recursively, sorted) and glob patterns (`photos/*.jpg`, `**` recursive). An input
    that names nothing, or inputs with no image among them, raise DataError."""
    found: dict[Path, None] = {}
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_file():
            found.update(dict.fromkeys(_paths_in_csv(path) if path.suffix.lower() == ".csv" else [path.absolute()]))
        elif path.is_dir():
            images = sorted(p.absolute() for p in path.rglob("*") if _is_image_file(p))
            if not images:
                raise DataError(f"folder {path} holds no images ({' '.join(sorted(IMAGE_EXTENSIONS))})")
            found.update(dict.fromkeys(images))
        else:
            matches = sorted(Path(p).absolute() for p in glob.glob(str(path), recursive=True))
            images = [p for p in matches if _is_image_file(p)]
            if not images:
                raise DataError(f"{text} is no file or folder, and matches no image file")
            found.update(dict.fromkeys(images))
    if not found:
        raise DataError("no images given")
    return list(found)


class ImageDataset(torch.utils.data.Dataset):
    """Samples as (transformed RGB image, label, index); the index maps outputs back to samples."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], Any] | None = None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        sample = self.samples[index]
        image = load_image(sample.path)
        return (self.transform(image) if self.transform else image), sample.label, index


# ---------------------------------------------------------------- split files


def _display_name(raw: str) -> str:
    return raw.replace("_", " ")


def _parse_entry(entry: Any, where: str) -> tuple[str, int, str]:
    if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and isinstance(entry[2], str)):
        raise DataError(f"{where}: expected [relative_path, label, classname]")
    rel, label, classname = entry
    if isinstance(label, str) and label.strip().isdecimal():  # what int() accepts (isdigit also takes "²")
        label = int(label)  # CoOp's reader applies int() to the label, so "3" is as good as 3
    if not isinstance(label, int) or isinstance(label, bool) or label < 0:
        raise DataError(f"{where}: label must be a non-negative integer")
    if not rel:
        raise DataError(f"{where}: empty image path")
    check_relative_path(rel, where)
    return rel, label, classname


def check_relative_path(rel: str, where: str) -> None:
    """A path read from a data set's own files must stay under its image folder: no absolute paths, no '..'."""
    if os.path.isabs(rel) or PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
        raise DataError(f"{where}: image path {rel!r} escapes the image root (absolute or containing '..')")


def image_under(root: Path, rel: str, where: str) -> Path:
    """root/rel, checked to stay under root and to exist."""
    check_relative_path(rel, where)
    image = root / rel
    if not os.path.isfile(image):  # os.path, not Path.is_file: a name too long for the file system is just absent
        raise DataError(f"{where}: image file {image} does not exist" + (" (a folder)" if os.path.isdir(image) else ""))
    return image


def read_split_file(
    path: Path, image_root: Path, keys: Sequence[str] = SPLIT_NAMES
) -> tuple[dict[str, list[Sample]], list[str]]:
    """Read a CoOp split_zhou JSON file {split: [[relative_path, label, classname], ...]}.

    Returns the samples of each split in `keys` and the class names as written (index = label).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from exc
    missing = [key for key in keys if not isinstance(data, dict) or key not in data]
    if missing:
        raise DataError(
            f"split file {path}: expected a JSON object with lists {', '.join(keys)}; missing {', '.join(missing)}"
        )

    image_root = Path(image_root).absolute()
    names: dict[int, str] = {}
    splits: dict[str, list[Sample]] = {}
    for key in keys:
        if not isinstance(data[key], list):
            raise DataError(f"split file {path}: {key!r} must be a list of [relative_path, label, classname]")
        samples = []
        for i, entry in enumerate(data[key]):
            where = f"split file {path}, {key}[{i}] {json.dumps(entry)}"
            rel, label, classname = _parse_entry(entry, where)
            if names.setdefault(label, classname) != classname:
                raise DataError(f"{where}: label {label} is named {classname!r} here but {names[label]!r} elsewhere")
            # Existence only: opening every image would make loading a large data set slow.
            samples.append(Sample(image_under(image_root, rel, where), label))
        splits[key] = samples

    if not names:
        raise DataError(f"split file {path} lists no images")
    gaps = sorted(set(range(max(names) + 1)) - set(names))
    if gaps:
        raise DataError(
            f"split file {path}: labels must be 0..{max(names)} without gaps; no entry has label {gaps[:10]}"
        )
    return splits, [names[label] for label in range(len(names))]


def save_split_file(path: Path, splits: Mapping[str, Sequence[Sample]], root: Path, classnames: Sequence[str]) -> None:
    """Write samples as a split_zhou JSON file with paths relative to `root`, atomically."""
    root = Path(os.path.abspath(root))
    data: dict[str, list[list[Any]]] = {}
    for key, samples in splits.items():
        entries = []
        for sample in samples:
            try:  # abspath also folds '..', which a reader of the file refuses
                rel = Path(os.path.abspath(sample.path)).relative_to(root)
            except ValueError:
                raise DataError(f"cannot write split file {path}: image {sample.path} is not under {root}") from None
            entries.append([rel.as_posix(), sample.label, classnames[sample.label]])
        data[key] = entries

    try:  # a reader never sees a half-written file, even if this run is killed mid-write
        write_text_atomic(path, json.dumps(data))
    except OSError as exc:
        raise DataError(f"cannot write split file {path}: {exc}") from exc


# ---------------------------------------------------------------- registry

Loader = Callable[[str], DatasetSplits]
DATASETS: dict[str, Loader] = {}


def register_dataset(prefix: str) -> Callable[[Loader], Loader]:
    """Register a loader for specs "prefix:REST"; the loader receives REST (which may contain ':')."""
    if not prefix or ":" in prefix:
        raise ValueError(f"data set prefix must be non-empty and contain no ':', got {prefix!r}")

    def decorator(loader: Loader) -> Loader:
        if prefix in DATASETS:
            raise ValueError(f"data set prefix {prefix!r} is already registered")
        DATASETS[prefix] = loader
        return loader

    return decorator


def load_dataset(spec: str) -> DatasetSplits:
    """Load a data set from a spec such as "imagefolder:PATH", "coop:NAME:ROOT" or "csv:PATH"."""
    prefix, sep, rest = spec.partition(":")
    if not sep or prefix not in DATASETS:
        known = ", ".join(f"{p}:" for p in sorted(DATASETS))
        raise DataError(f"unknown data set spec {spec!r}; expected PREFIX:ARGUMENTS with a prefix among {known}")
    return DATASETS[prefix](rest)


def _existing_dir(arg: str, what: str) -> Path:
    path = Path(arg).expanduser().absolute()
    if not path.is_dir():
        raise DataError(f"{what} {path} does not exist or is not a directory")
    return path


# ---------------------------------------------------------------- imagefolder

# Fixed so an image folder without split sub-folders always splits the same way.
_SPLIT_SEED = 0


def _class_folders(directory: Path) -> dict[str, list[Path]]:
    """Image files (sorted) of each non-hidden sub-folder of `directory`."""
    classes = {}
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in sub.iterdir() if _is_image_file(p))
        if not images:
            raise DataError(f"class folder {sub} contains no images ({' '.join(sorted(IMAGE_EXTENSIONS))})")
        classes[sub.name] = images
    return classes


def _split_class(images: list[Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """50% train / 20% val / rest test, as CoOp's DTD.read_and_split_data, with a fixed seed."""
    shuffled = list(images)
    random.Random(_SPLIT_SEED).shuffle(shuffled)
    n = len(shuffled)
    n_train = max(1, round(n * 0.5))
    n_val = round(n * 0.2)
    if n >= 2:
        # CoOp asserts every part is non-empty; small classes here still get one train and one test image.
        n_train = min(n_train, n - 1)
        n_val = min(n_val, n - n_train - 1)
    return shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :]


@register_dataset("imagefolder")
def load_imagefolder(arg: str) -> DatasetSplits:
    """PATH/{train,val,test}/CLASS/*.jpg (any of the three), or PATH/CLASS/*.jpg split 50/20/30 per class."""
    root = _existing_dir(arg, "image folder")
    splits: dict[str, list[Sample]] = {name: [] for name in SPLIT_NAMES}
    if any((root / name).is_dir() for name in SPLIT_NAMES):
        # A target used only for evaluation may hold just test/.
        per_split = {name: _class_folders(root / name) for name in SPLIT_NAMES if (root / name).is_dir()}
        empty = [name for name, classes in per_split.items() if not classes]
        if empty:
            raise DataError(f"{root / empty[0]} has no class folders (expected one sub-folder of images per class)")
        folders = sorted(set().union(*per_split.values()))
        label_of = {folder: label for label, folder in enumerate(folders)}
        for name, classes in per_split.items():
            splits[name] = [Sample(p, label_of[folder]) for folder in sorted(classes) for p in classes[folder]]
    else:
        classes = _class_folders(root)
        if not classes:
            raise DataError(
                f"{root} has no class folders (expected one sub-folder of images per class, or train/ and test/)"
            )
        folders = sorted(classes)
        for label, folder in enumerate(folders):
            for name, images in zip(SPLIT_NAMES, _split_class(classes[folder])):
                splits[name] += [Sample(p, label) for p in images]
    return DatasetSplits(root.name, [_display_name(f) for f in folders], root=root, **splits)


# ---------------------------------------------------------------- text tables (CUB, NABirds, Food-101, CoOp lists)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"missing file {path}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


INTEGER = re.compile(r"[0-9]+")  # not str.isdigit, which also accepts digits int() rejects ("²")


def read_table(path: Path, columns: int, integer_ids: bool = True) -> dict[Any, list[str]]:
    """`<id> <field> ...` lines of a whitespace-separated table, by id (in file order); the last field may hold
    spaces. Ids are integers, or with `integer_ids=False` kept as strings (NABirds' image ids are UUIDs)."""
    rows: dict[Any, list[str]] = {}
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=columns - 1)
        if len(fields) != columns or (integer_ids and not INTEGER.fullmatch(fields[0])):
            kind = "an integer id" if integer_ids else "an id"
            raise DataError(f"{path}, line {number}: expected {columns} fields starting with {kind}, got {line!r}")
        fields[-1] = fields[-1].rstrip()  # "<id> <name> " names <name>
        key = int(fields[0]) if integer_ids else fields[0]
        if key in rows:
            raise DataError(f"{path}, line {number}: id {key} appears twice")
        rows[key] = fields[1:]
    if not rows:
        raise DataError(f"{path} is empty")
    return rows


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line."""
    lines = [(n, line.strip()) for n, line in enumerate(_read_text(path).splitlines(), 1) if line.strip()]
    if not lines:
        raise DataError(f"{path} is empty")
    return lines


# ---------------------------------------------------------------- coop

# CoOp's datasets/*.py: class name -> (dataset_dir under DATASET.ROOT, image dir under dataset_dir).
COOP_DATASETS: dict[str, tuple[str, str]] = {
    "OxfordPets": ("oxford_pets", "images"),
    "Caltech101": ("caltech-101", "101_ObjectCategories"),
    "StanfordCars": ("stanford_cars", ""),
    "OxfordFlowers": ("oxford_flowers", "jpg"),
    "Food101": ("food-101", "images"),
    "SUN397": ("sun397", "SUN397"),
    "DescribableTextures": ("dtd", "images"),
    "EuroSAT": ("eurosat", "2750"),
    "UCF101": ("ucf101", "UCF-101-midframes"),
}
# CoOp's ImageNet family: a folder per class (by WordNet id, or by label for V2) and classnames.txt
# ("<wnid> <class name>"): name -> (dataset_dir, image_dir, {split: sub-folder of image_dir}).
COOP_IMAGENETS: dict[str, tuple[str, str, dict[str, str]]] = {
    "ImageNet": ("imagenet", "images", {"train": "train", "test": "val"}),
    "ImageNetV2": ("imagenetv2", "imagenetv2-matched-frequency-format-val", {"test": ""}),
    "ImageNetSketch": ("imagenet-sketch", "images", {"test": ""}),
    "ImageNetA": ("imagenet-adversarial", "imagenet-a", {"test": ""}),
    "ImageNetR": ("imagenet-rendition", "imagenet-r", {"test": ""}),
}
# CoOp's eurosat.py NEW_CNAMES; its own split file already uses them, splits made from the raw folders do not.
_EUROSAT_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}
_COOP_RENAMES = {"EuroSAT": _EUROSAT_CLASSNAMES}


@register_dataset("coop")
def load_coop(arg: str) -> DatasetSplits:
    """NAME:ROOT in CoOp's layout (ROOT = Dassl's DATASET.ROOT or the dataset folder itself).

    An unknown NAME means ROOT/split_zhou_NAME.json with image paths relative to ROOT.
    """
    name, sep, root_arg = arg.partition(":")
    if not sep or not name or not root_arg:
        raise DataError(f"coop data set spec 'coop:{arg}' must be coop:NAME:ROOT")
    root = _existing_dir(root_arg, "CoOp data set root")
    known = (*COOP_DATASETS, "FGVCAircraft", *COOP_IMAGENETS)
    canonical = {n.lower(): n for n in known}.get(name.lower(), name)
    if canonical == "FGVCAircraft":
        return _load_coop_aircraft(_coop_dir(root, "fgvc_aircraft", "variants.txt"))
    if canonical in COOP_IMAGENETS:
        dataset_dir, image_dir, parts = COOP_IMAGENETS[canonical]
        return _load_coop_imagenet(canonical, _coop_dir(root, dataset_dir, "classnames.txt"), image_dir, parts)

    if canonical in COOP_DATASETS:
        dataset_dir, image_dir = COOP_DATASETS[canonical]
        split_name = f"split_zhou_{canonical}.json"
        found = next((d for d in (root / dataset_dir, root) if (d / split_name).is_file()), None)
        if found is None:
            raise DataError(f"CoOp data set {canonical}: no {split_name} in {root / dataset_dir} or {root}")
        split_file, image_root, template_key = found / split_name, found / image_dir, canonical
    else:
        split_file, image_root, template_key = root / f"split_zhou_{name}.json", root, None
        if not split_file.is_file():
            raise DataError(
                f"unknown CoOp data set {name!r} and no split file {split_file}; known data sets: {', '.join(known)}"
            )

    splits, raw_names = read_split_file(split_file, image_root)
    renames = _COOP_RENAMES.get(canonical, {})
    classnames = [_display_name(renames.get(n, n)) for n in raw_names]
    return DatasetSplits(canonical, classnames, root=image_root.absolute(), template_key=template_key, **splits)


def _coop_dir(root: Path, dataset_dir: str, marker: str) -> Path:
    """ROOT/dataset_dir, or ROOT itself when it is that folder: whichever holds `marker`."""
    found = next((d for d in (root / dataset_dir, root) if (d / marker).is_file()), None)
    if found is None:
        raise DataError(f"no {marker} in {root / dataset_dir} or {root}")
    return found


def _load_coop_aircraft(folder: Path) -> DatasetSplits:
    """CoOp's FGVCAircraft: variants.txt (class names in label order) and images_variant_{train,val,test}.txt
    ("<image id> <variant>", the image at images/<id>.jpg)."""
    variants_file = folder / "variants.txt"
    classnames = [line for _, line in read_lines(variants_file)]
    label_of = {name: label for label, name in enumerate(classnames)}
    if len(label_of) != len(classnames):
        repeated = next(name for name in classnames if classnames.count(name) > 1)
        raise DataError(f"{variants_file}: variant {repeated!r} appears twice")
    splits: dict[str, list[Sample]] = {}
    for split in SPLIT_NAMES:
        path = folder / f"images_variant_{split}.txt"
        samples = []
        for image_id, (variant,) in read_table(path, 2, integer_ids=False).items():
            if variant not in label_of:
                raise DataError(f"{path}: variant {variant!r} of image {image_id} is not in {variants_file}")
            samples.append(Sample(image_under(folder / "images", f"{image_id}.jpg", str(path)), label_of[variant]))
        splits[split] = samples
    return DatasetSplits("FGVCAircraft", classnames, root=folder / "images", template_key="FGVCAircraft", **splits)


def _load_coop_imagenet(name: str, folder: Path, image_dir: str, parts: dict[str, str]) -> DatasetSplits:
    """CoOp's ImageNet family. Labels: the index of the class folder among the sorted folders (ImageNet, -Sketch,
    -A, -R: for -A and -R, 200 of the classes), or the folder's own number (V2: 0..999 in classnames.txt order)."""
    names_file = folder / "classnames.txt"
    classnames = {wnid: name for wnid, (name,) in read_table(names_file, 2, integer_ids=False).items()}
    splits: dict[str, list[Sample]] = {split: [] for split in SPLIT_NAMES}
    folders: list[str] = []
    for split, sub in parts.items():
        directory = _existing_dir(str(folder / image_dir / sub), f"{name} image folder")
        classes = _class_folders(directory)
        if not classes:
            raise DataError(f"{directory} has no class folders")
        if name == "ImageNetV2":
            by_number = list(classnames)
            bad = next((f for f in classes if not f.isdecimal() or int(f) >= len(by_number)), None)
            if bad is not None:
                raise DataError(f"{directory / bad}: ImageNetV2 folders are labels 0..{len(by_number) - 1}")
            folders = by_number
            label_of = {f: int(f) for f in classes}
        else:
            folders = sorted(classes) if not folders else folders  # the train folders fix the labels
            label_of = {f: i for i, f in enumerate(folders)}
        for folder_name, images in classes.items():
            if folder_name not in label_of:
                raise DataError(f"{directory / folder_name} is not a class of {name}'s training folders")
            key = folders[label_of[folder_name]]
            if key not in classnames:
                raise DataError(f"{directory / folder_name}: class {key} has no line in {names_file}")
            splits[split] += [Sample(p, label_of[folder_name]) for p in images]
    names = [classnames[f] for f in folders]
    return DatasetSplits(name, names, root=folder / image_dir, template_key=name, **splits)


# ---------------------------------------------------------------- csv


@register_dataset("csv")
def load_csv(arg: str) -> DatasetSplits:
    """Image-text pairs: columns image, caption and optional label (a class name); all rows go to train."""
    path = Path(arg).expanduser().absolute()
    try:
        # utf-8-sig: spreadsheet programs often write a byte-order mark before the header.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read CSV file {path}: {exc}") from exc
    if not header:
        raise DataError(f"CSV file {path} is empty; expected a header row with columns image, caption[, label]")
    missing = [c for c in ("image", "caption") if c not in header]
    if missing:
        raise DataError(f"CSV file {path}, row 1: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
    if not rows:
        raise DataError(f"CSV file {path} has a header but no rows")

    has_label = "label" in header
    parsed = []
    for line, row in rows:
        if None in row:  # csv.DictReader files surplus fields under None: a comma in an unquoted caption
            raise DataError(
                f"CSV file {path}, row {line}: {len(header) + len(row[None])} fields but the header has "
                f"{len(header)}; put fields that contain commas in double quotes"
            )
        image, caption, label = (row.get("image") or "").strip(), row.get("caption"), row.get("label")
        if not image or caption is None:
            raise DataError(f"CSV file {path}, row {line}: empty image path or missing caption")
        if has_label and not (label or "").strip():
            raise DataError(f"CSV file {path}, row {line}: empty label")
        image_path = path.parent / Path(image).expanduser()
        if not image_path.is_file():
            raise DataError(f"CSV file {path}, row {line}: image file {image_path} does not exist")
        parsed.append((image_path, caption, label.strip() if has_label else None))

    raw_names = sorted({label for _, _, label in parsed}) if has_label else []
    label_of = {name: i for i, name in enumerate(raw_names)}
    train = [Sample(p, label_of[label] if has_label else -1, caption) for p, caption, label in parsed]
    return DatasetSplits(path.stem, [_display_name(n) for n in raw_names], train, [], [], root=path.parent)
