"""Derived splits as in CoOp: k-shot subsets, base/new class halves, and fingerprints for caching."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from clipadapt.data.datasets import DatasetSplits, PerClass, Sample, read_split_file, save_split_file
from clipadapt.digest import fingerprint
from clipadapt.errors import DataError

# CoOp samples the validation set with min(shots, 4) images per class.
MAX_VAL_SHOTS = 4
# How a k-shot subset is drawn: ours (each class's images sorted by path, so a subset depends only on the files and
# the seed), or exactly as Dassl's `generate_fewshot_dataset` draws it for CoOp (the same images for the same seed).
FEWSHOT_SAMPLERS = ("clipadapt", "dassl")


def _in_listed_order(samples: Sequence[Sample]) -> dict[int, list[Sample]]:
    """Each label's samples, labels in the order they first appear, samples in listed order."""
    groups: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.label].append(sample)
    return groups


def _by_label(samples: Sequence[Sample]) -> dict[int, list[Sample]]:
    # Sorted so the subset depends only on the files and the seed, not on the order they were listed in.
    return {label: sorted(items, key=lambda s: str(s.path)) for label, items in _in_listed_order(samples).items()}


def _require_train_images(splits: DatasetSplits) -> None:
    missing = sorted(set(range(len(splits.classnames))) - {s.label for s in splits.train})
    if missing:
        label = missing[0]
        raise DataError(
            f"class {splits.classnames[label]!r} (label {label}) of data set {splits.name} has no train images"
        )


def _sample_train(splits: DatasetSplits, shots: int, rng: random.Random, allow_repeat: bool) -> list[Sample]:
    groups = _by_label(splits.train)
    chosen = []
    for label, classname in enumerate(splits.classnames):
        items = groups[label]
        if len(items) >= shots:
            chosen += rng.sample(items, shots)
        elif allow_repeat:
            chosen += rng.choices(items, k=shots)
        else:
            raise DataError(
                f"{shots}-shot sampling needs {shots} train images of class {classname!r} in data set "
                f"{splits.name}, but it has only {len(items)}; use fewer shots or allow repeated images"
            )
    return chosen


def _sample_val(splits: DatasetSplits, shots: int, rng: random.Random) -> list[Sample]:
    groups = _by_label(splits.val)
    chosen = []
    for label in range(len(splits.classnames)):
        items = groups.get(label, [])
        # As CoOp (Dassl's repeat=False): a class with fewer validation images keeps all of them.
        chosen += rng.sample(items, min(shots, len(items)))
    return chosen


def _clipadapt_subset(splits: DatasetSplits, shots: int, seed: int, repeat: bool) -> tuple[list[Sample], list[Sample]]:
    _require_train_images(splits)
    rng = random.Random(seed)
    return _sample_train(splits, shots, rng, repeat), _sample_val(splits, min(shots, MAX_VAL_SHOTS), rng)


def _dassl_draw(samples: Sequence[Sample], shots: int, rng: random.Random, repeat: bool) -> list[Sample]:
    """Dassl's `generate_fewshot_dataset` on one split: the classes in the order they first appear in `samples`,
    each class's images in listed order; `shots` of them drawn with `rng.sample` when a class has that many, otherwise
    all of them (or `shots` drawn with replacement, `repeat`)."""
    chosen = []
    for items in _in_listed_order(samples).values():
        if len(items) >= shots:
            chosen += rng.sample(items, shots)
        elif repeat:
            chosen += rng.choices(items, k=shots)
        else:
            chosen += items
    return chosen


def _dassl_subset(splits: DatasetSplits, shots: int, seed: int, repeat: bool) -> tuple[list[Sample], list[Sample]]:
    """CoOp's draw: Dassl's `set_random_seed(seed)` seeds Python's generator, then the train split's `shots` and the
    val split's min(shots, 4) are drawn from it in that order (CoOp's datasets/*.py)."""
    _require_train_images(splits)
    rng = random.Random(seed)
    return _dassl_draw(splits.train, shots, rng, repeat), _dassl_draw(splits.val, min(shots, MAX_VAL_SHOTS), rng, False)


class _DatumUnpickler(pickle.Unpickler):
    """Reads CoOp's `split_fewshot/shot_K-seed_S.pkl` ({"train": [Datum, ...], "val": [...]}) as plain data: Dassl's
    `Datum` becomes a dict of its fields, and every other class a pickle may name is refused (no code runs)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("dassl.data.datasets.base_dataset", "Datum"):
            return _PlainDatum
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a CoOp few-shot file holds only Dassl's Datum")


class _PlainDatum(dict):
    """A Datum's fields (`_impath`, `_label`, `_domain`, `_classname`), set by the unpickler as instance state."""

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a Datum's state must be a dict of its fields")
        self.update(state)


def read_coop_fewshot(path: str | Path, splits: DatasetSplits) -> tuple[list[Sample], list[Sample]]:
    """The train and val subsets a CoOp `split_fewshot/shot_K-seed_S.pkl` file holds, as `splits`' own samples in
    the file's order. Its image paths are absolute on the machine that wrote it: each is matched by its longest
    ending that names an image under `splits.root`, and its label must agree with the data set's."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = _DatumUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise DataError(f"cannot read CoOp few-shot file {path}: {e}") from e
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("train", "val")):
        raise DataError(f"CoOp few-shot file {path}: expected a dict with lists 'train' and 'val'")
    root = Path(os.path.abspath(splits.root))
    by_relative = {}
    for sample in (*splits.train, *splits.val):
        try:
            by_relative[Path(os.path.abspath(sample.path)).relative_to(root).parts] = sample
        except ValueError:
            continue
    subsets = []
    for key in ("train", "val"):
        chosen = []
        for i, datum in enumerate(data[key]):
            where = f"CoOp few-shot file {path}, {key}[{i}]"
            if not isinstance(datum, _PlainDatum) or not isinstance(datum.get("_impath"), str):
                raise DataError(f"{where}: not a Dassl Datum with an image path")
            parts = Path(datum["_impath"]).parts
            sample = next((by_relative[parts[j:]] for j in range(len(parts)) if parts[j:] in by_relative), None)
            if sample is None:
                raise DataError(f"{where}: {datum['_impath']} names no image of data set {splits.name} under {root}")
            if datum.get("_label") != sample.label:  # (names may be spelled otherwise here, e.g. EuroSAT's)
                raise DataError(
                    f"{where}: {datum['_impath']} is labelled {datum.get('_label')} ({datum.get('_classname')!r}) "
                    f"there, {sample.label} ({splits.classnames[sample.label]!r}) in data set {splits.name}"
                )
            chosen.append(sample)
        subsets.append(chosen)
    return subsets[0], subsets[1]


def coop_fewshot_file(splits: DatasetSplits, shots: int, seed: int) -> Path | None:
    """CoOp's saved draw for `shots` and `seed`, where the data set's folder holds one: `split_fewshot/` beside the
    split file, which is the image folder itself or the folder above it."""
    root = Path(os.path.abspath(splits.root))
    name = f"shot_{shots}-seed_{seed}.pkl"
    return next(
        (d / "split_fewshot" / name for d in (root, root.parent) if (d / "split_fewshot" / name).is_file()), None
    )


def _pool_digest(splits: DatasetSplits, allow_repeat: bool) -> str | None:
    """What a subset is drawn from: the train and val images (paths relative to the data set's root, so that a
    moved data set keeps its subsets) with their labels, and whether images may repeat. None when an image lies
    outside the root: a split file holds paths under its root only."""
    root = Path(os.path.abspath(splits.root))
    pools = []
    for samples in (splits.train, splits.val):
        entries = []
        for sample in samples:
            try:
                entries.append((Path(os.path.abspath(sample.path)).relative_to(root).as_posix(), sample.label))
            except ValueError:
                return None
        pools.append(sorted(entries))
    return fingerprint([splits.classnames, allow_repeat], *pools, length=12)


def _read_cached(path: Path, splits: DatasetSplits, allow_repeat: bool) -> tuple[list[Sample], list[Sample]] | None:
    """The cached subset, or None when it is missing or no longer fits the data set."""
    if not path.is_file():
        return None
    try:
        cached, classnames = read_split_file(path, splits.root, keys=("train", "val"))
    except DataError:
        return None
    if classnames != splits.classnames:
        return None
    # Map entries back to the data set's own samples (which carry captions the split file does not).
    known_train = {(s.path, s.label): s for s in splits.train}
    known_val = {(s.path, s.label): s for s in splits.val}
    try:
        train = [known_train[(s.path, s.label)] for s in cached["train"]]
        val = [known_val[(s.path, s.label)] for s in cached["val"]]
    except KeyError:
        return None
    if not allow_repeat and len(set(train)) != len(train):
        return None
    return train, val


def fewshot(
    splits: DatasetSplits,
    shots: int,
    seed: int,
    cache_dir: Path | None = None,
    allow_repeat: bool = False,
    sampler: str = "clipadapt",
) -> DatasetSplits:
    """CoOp's k-shot subset: `shots` train and min(shots, 4) val images per class; test unchanged.

    `sampler="dassl"` draws the images Dassl's `generate_fewshot_dataset` draws for CoOp with this seed, in its
    order (a class with fewer images keeps all it has), or reads them from CoOp's own
    `split_fewshot/shot_<k>-seed_<s>.pkl` where the data set's folder holds one, as CoOp does.

    With `cache_dir`, the subset is stored in cache_dir/<name>/shot_<k>-seed_<s>[-dassl]-<pool>.json, `pool` a digest
    of the images it is drawn from: it is reused while they stay the same, and data sets that share a name, or a data
    set whose images changed, never get another pool's subset. Subsets of images outside the data set's root are
    not cached (a split file holds paths under its root).
    """
    if shots < 1:
        raise DataError(f"few-shot sampling needs at least 1 shot per class, got {shots}")
    if not splits.classnames:
        raise DataError(f"data set {splits.name} has no class labels; few-shot sampling needs them")
    if sampler not in FEWSHOT_SAMPLERS:
        raise DataError(f"few-shot sampler must be one of {', '.join(FEWSHOT_SAMPLERS)}, got {sampler!r}")
    if sampler == "dassl":
        coop_file = coop_fewshot_file(splits, shots, seed)
        if coop_file is not None:
            print(f"few-shot subset: CoOp's {coop_file}", file=sys.stderr)
            train, val = read_coop_fewshot(coop_file, splits)
            return replace(splits, train=train, val=val)

    pool = _pool_digest(splits, allow_repeat) if cache_dir is not None else None
    tag = "-dassl" if sampler == "dassl" else ""
    cache_file = Path(cache_dir) / splits.name / f"shot_{shots}-seed_{seed}{tag}-{pool}.json" if pool else None
    cached = _read_cached(cache_file, splits, allow_repeat) if cache_file is not None else None
    if cached is not None:
        train, val = cached
    else:
        draw = _dassl_subset if sampler == "dassl" else _clipadapt_subset
        train, val = draw(splits, shots, seed, allow_repeat)
        if cache_file is not None:
            save_split_file(cache_file, {"train": train, "val": val}, splits.root, splits.classnames)
    return replace(splits, train=train, val=val)


def select_classes(splits: DatasetSplits, selected: Sequence[int], suffix: str) -> DatasetSplits:
    """The data set restricted to the `selected` labels, relabelled 0.. in that order, name + `suffix`."""
    new_label = {old: new for new, old in enumerate(selected)}

    def keep(samples: list[Sample]) -> list[Sample]:
        return [replace(s, label=new_label[s.label]) for s in samples if s.label in new_label]

    return replace(
        splits,
        name=splits.name + suffix,
        classnames=[splits.classnames[label] for label in selected],
        annotations={
            name: PerClass(value[label] for label in selected) if isinstance(value, PerClass) else value
            for name, value in splits.annotations.items()
        },
        train=keep(splits.train),
        val=keep(splits.val),
        test=keep(splits.test),
    )


def base_new_split(splits: DatasetSplits) -> tuple[DatasetSplits, DatasetSplits]:
    """CoOp's subsample_classes: the first ceil(n/2) classes are "base", the rest "new", each relabelled from 0."""
    labels = list(range(len(splits.classnames)))
    if len(labels) < 2:
        raise DataError(f"data set {splits.name} has {len(labels)} class(es); a base/new split needs at least 2")
    m = math.ceil(len(labels) / 2)
    return select_classes(splits, labels[:m], "-base"), select_classes(splits, labels[m:], "-new")


def split_fingerprint(samples: Sequence[Sample]) -> str:
    """sha256 (first 16 hex digits) over each sample's path, label, file size and mtime, in order."""
    lines = []
    for sample in samples:
        try:
            stat = os.stat(sample.path)
        except OSError as exc:
            raise DataError(f"cannot fingerprint image {sample.path}: {exc.strerror or exc}") from exc
        lines.append(json.dumps([str(sample.path), sample.label, stat.st_size, stat.st_mtime_ns]) + "\n")
    return fingerprint(*lines)
