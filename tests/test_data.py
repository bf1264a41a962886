"""Data layer: on-disk layouts, image decoding, CoOp-style splits. Tiny real image files in tmp_path."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import ToTensor

from clipadapt.data import (
    DATASETS,
    DatasetSplits,
    ImageDataset,
    Sample,
    base_new_split,
    fewshot,
    find_unreadable_images,
    load_dataset,
    load_image,
    register_dataset,
    split_fingerprint,
)
from clipadapt.errors import DataError


def write_image(path: Path, color=(200, 30, 60), size: int = 8, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format=fmt)
    return path


def write_class_folders(root: Path, counts: dict[str, int]) -> None:
    for classname, n in counts.items():
        for i in range(n):
            write_image(root / classname / f"img{i:02d}.png", color=(i * 10, 0, 0))


def write_split_json(path: Path, image_root: Path, split: dict[str, list[tuple[str, int, str]]]) -> Path:
    """A split_zhou JSON file, creating each listed image under image_root."""
    for entries in split.values():
        for rel, _, _ in entries:
            write_image(image_root / rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: [list(e) for e in v] for k, v in split.items()}))
    return path


def toy_split(n_classes: int, n_train: int, n_val: int, n_test: int) -> dict[str, list[tuple[str, int, str]]]:
    def entries(split: str, n: int) -> list[tuple[str, int, str]]:
        return [(f"c{c}/{split}{i}.png", c, f"class_{c}") for c in range(n_classes) for i in range(n)]

    return {"train": entries("train", n_train), "val": entries("val", n_val), "test": entries("test", n_test)}


def names(samples: list[Sample], root: Path) -> list[str]:
    return [s.path.relative_to(root).as_posix() for s in samples]


# ---------------------------------------------------------------- imagefolder


def test_imagefolder_without_split_folders_splits_each_class_50_20_30(tmp_path):
    root = tmp_path / "birds"
    write_class_folders(root, {"golden_eagle": 10, "crow": 5, "tit": 3, "wren": 2, "owl": 1})
    write_image(root / "crow" / "UPPER.JPG", fmt="JPEG")  # extensions match case-insensitively
    (root / "crow" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / "README.md").write_text("top-level files are not classes")

    ds = load_dataset(f"imagefolder:{root}")

    assert ds.name == "birds" and ds.root == root and ds.template_key is None
    assert ds.classnames == ["crow", "golden eagle", "owl", "tit", "wren"]
    per_class = {
        name: tuple(sum(s.label == label for s in ds.split(split)) for split in ("train", "val", "test"))
        for label, name in enumerate(ds.classnames)
    }
    assert per_class == {
        "crow": (3, 1, 2),  # 6 images
        "golden eagle": (5, 2, 3),
        "owl": (1, 0, 0),
        "tit": (2, 0, 1),
        "wren": (1, 0, 1),
    }
    all_paths = [s.path for s in ds.train + ds.val + ds.test]
    assert len(all_paths) == len(set(all_paths)) == 22
    assert all(p.is_absolute() and p.suffix.lower() in {".png", ".jpg"} for p in all_paths)
    assert load_dataset(f"imagefolder:{root}") == ds


def test_imagefolder_with_split_folders_uses_union_of_classes(tmp_path):
    root = tmp_path / "ds"
    write_class_folders(root / "train", {"cat": 3, "dog_breed": 2})
    write_class_folders(root / "test", {"dog_breed": 1, "zebra": 2})

    ds = load_dataset(f"imagefolder:{root}")

    assert ds.classnames == ["cat", "dog breed", "zebra"]
    assert [s.label for s in ds.train] == [0, 0, 0, 1, 1]
    assert ds.val == []
    assert [(s.path.parent.name, s.label) for s in ds.test] == [("dog_breed", 1), ("zebra", 2), ("zebra", 2)]


def test_imagefolder_errors_name_the_folder(tmp_path):
    root = tmp_path / "ds"
    write_class_folders(root, {"cat": 2})
    (root / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class.*contains no images"):
        load_dataset(f"imagefolder:{root}")
    with pytest.raises(DataError, match="nowhere"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")


def test_empty_data_sets_are_refused_naming_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty has no class folders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    (tmp_path / "split_zhou_Toy.json").write_text(json.dumps({"train": [], "val": [], "test": []}))
    with pytest.raises(DataError, match=r"split_zhou_Toy.json lists no images"):
        load_dataset(f"coop:Toy:{tmp_path}")


def test_unicode_and_punctuation_class_names_run_end_to_end(tmp_path):
    from clipadapt.cli import main

    names = ["Café_au_lait", "Chuck-will's-widow", "猫 (neko)", "Black-footed Albatross, juv.", "naïve?!"]
    write_class_folders(tmp_path / "data" / "train", {name: 2 for name in names})
    write_class_folders(tmp_path / "data" / "test", {name: 2 for name in names})
    splits = load_dataset(f"imagefolder:{tmp_path / 'data'}")
    assert sorted(splits.classnames) == sorted(name.replace("_", " ") for name in names)
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "zeroshot",
                "--dataset",
                f"imagefolder:{tmp_path / 'data'}",
                "--model",
                "micro-vit",
                "--cache",
                str(tmp_path / "cache"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_classes"] == 5 and metrics["dataset"].endswith("data")
    # Every name reaches the text encoder as its own prompt: five different class weights.
    import torch

    from clipadapt import load_backbone
    from clipadapt.text import zeroshot_weights

    weights = zeroshot_weights(load_backbone("micro-vit"), splits.classnames, ["a photo of a {}."])
    assert torch.unique(weights, dim=0).shape == (5, weights.shape[1])


def test_unknown_prefix_lists_known_prefixes_and_registry_is_open(tmp_path):
    with pytest.raises(DataError, match="coop:.*csv:.*imagefolder:"):
        load_dataset(f"nosuch:{tmp_path}")

    @register_dataset("toy")
    def load_toy(arg: str) -> DatasetSplits:
        return DatasetSplits(arg, [], [], [], [], tmp_path)

    try:
        assert load_dataset("toy:a:b").name == "a:b"
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("toy")(load_toy)
    finally:
        DATASETS.pop("toy")


# ---------------------------------------------------------------- coop


def test_coop_generic_layout(tmp_path):
    split = toy_split(n_classes=3, n_train=2, n_val=1, n_test=1)
    write_split_json(tmp_path / "split_zhou_Toy.json", tmp_path, split)

    ds = load_dataset(f"coop:Toy:{tmp_path}")

    assert ds.name == "Toy" and ds.template_key is None and ds.root == tmp_path
    assert ds.classnames == ["class 0", "class 1", "class 2"]
    assert names(ds.train, tmp_path) == [e[0] for e in split["train"]]
    assert [s.label for s in ds.train] == [0, 0, 1, 1, 2, 2]
    assert (len(ds.val), len(ds.test)) == (3, 3)


@pytest.mark.parametrize("root_is_dataset_dir", [False, True])
def test_coop_oxford_pets_layout(tmp_path, root_is_dataset_dir):
    dataset_dir = tmp_path / "oxford_pets"
    split = {
        "train": [("Abyssinian_1.jpg", 0, "abyssinian"), ("american_bulldog_1.jpg", 1, "american_bulldog")],
        "val": [("Abyssinian_2.jpg", 0, "abyssinian")],
        "test": [("american_bulldog_2.jpg", 1, "american_bulldog")],
    }
    write_split_json(dataset_dir / "split_zhou_OxfordPets.json", dataset_dir / "images", split)

    ds = load_dataset(f"coop:OxfordPets:{dataset_dir if root_is_dataset_dir else tmp_path}")

    assert ds.name == ds.template_key == "OxfordPets"
    assert ds.root == dataset_dir / "images"
    assert ds.classnames == ["abyssinian", "american bulldog"]
    images = dataset_dir / "images"
    assert [s.path for s in ds.train] == [images / "Abyssinian_1.jpg", images / "american_bulldog_1.jpg"]


def test_coop_eurosat_uses_coop_class_names(tmp_path):
    split = {
        "train": [("AnnualCrop/a.jpg", 0, "AnnualCrop"), ("SeaLake/b.jpg", 1, "SeaLake")],
        "val": [],
        "test": [("SeaLake/c.jpg", 1, "SeaLake")],
    }
    write_split_json(tmp_path / "eurosat" / "split_zhou_EuroSAT.json", tmp_path / "eurosat" / "2750", split)
    ds = load_dataset(f"coop:eurosat:{tmp_path}")
    assert ds.template_key == "EuroSAT"
    assert ds.classnames == ["Annual Crop Land", "Sea or Lake"]


def test_coop_fgvc_aircraft_layout(tmp_path):
    folder = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "F/A-18"]  # CoOp's variants.txt: names with '/' and '-'
    (folder).mkdir()
    (folder / "variants.txt").write_text("\n".join(variants) + "\n")
    for split, rows in {
        "train": [("0034309", "707-320"), ("0034958", "F/A-18")],
        "val": [("0041135", "A300B4")],
        "test": [("1514522", "F/A-18"), ("0056978", "707-320")],
    }.items():
        for image_id, _ in rows:
            write_image(folder / "images" / f"{image_id}.jpg", fmt="JPEG")
        (folder / f"images_variant_{split}.txt").write_text("".join(f"{i} {v}\n" for i, v in rows))
    ds = load_dataset(f"coop:fgvcaircraft:{tmp_path}")
    assert ds.name == "FGVCAircraft" and ds.classnames == variants and ds.template_key == "FGVCAircraft"
    assert [(s.path.name, s.label) for s in ds.train] == [("0034309.jpg", 0), ("0034958.jpg", 2)]
    assert [s.label for s in ds.val] == [1] and [s.label for s in ds.test] == [2, 0]
    assert load_dataset(f"coop:FGVCAircraft:{folder}").classnames == variants  # ROOT may be the folder itself
    (folder / "images_variant_test.txt").write_text("1514522 Boeing 999\n")
    with pytest.raises(DataError, match=r"images_variant_test.txt: variant 'Boeing 999' of image 1514522 is not in"):
        load_dataset(f"coop:FGVCAircraft:{tmp_path}")
    (folder / "images_variant_test.txt").write_text("../../x 707-320\n")
    with pytest.raises(DataError, match="escapes the image root"):
        load_dataset(f"coop:FGVCAircraft:{tmp_path}")
    (folder / "images_variant_test.txt").write_text("\n")
    with pytest.raises(DataError, match="images_variant_test.txt is empty"):
        load_dataset(f"coop:FGVCAircraft:{tmp_path}")
    (folder / "images_variant_test.txt").write_text("1514522 F/A-18  \n")  # trailing spaces are not the name
    assert [s.label for s in load_dataset(f"coop:FGVCAircraft:{tmp_path}").test] == [2]
    (folder / "variants.txt").write_text("707-320\nA300B4\n707-320\n")
    with pytest.raises(DataError, match="variant '707-320' appears twice"):
        load_dataset(f"coop:FGVCAircraft:{tmp_path}")


def _imagenet_classnames(folder, wnids):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {name}\n" for w, name in wnids.items()))


WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


def test_coop_imagenet_family_layouts(tmp_path):
    imagenet = tmp_path / "imagenet"
    _imagenet_classnames(imagenet, WNIDS)
    write_class_folders(imagenet / "images" / "train", {w: 2 for w in WNIDS})
    write_class_folders(imagenet / "images" / "val", {w: 1 for w in WNIDS})
    ds = load_dataset(f"coop:ImageNet:{tmp_path}")
    assert ds.classnames == ["tench", "goldfish", "great white shark"] and not ds.val  # selection never sees test
    assert [s.label for s in ds.train] == [0, 0, 1, 1, 2, 2] and [s.label for s in ds.test] == [0, 1, 2]
    # ImageNetV2: folders named by label; -A / -R: a subset of the classes, labels among their own folders.
    v2 = tmp_path / "imagenetv2"
    _imagenet_classnames(v2, WNIDS)
    write_class_folders(v2 / "imagenetv2-matched-frequency-format-val", {"0": 1, "2": 2})
    ds = load_dataset(f"coop:ImageNetV2:{tmp_path}")
    assert [s.label for s in ds.test] == [0, 2, 2] and ds.classnames[2] == "great white shark" and not ds.train
    adversarial = tmp_path / "imagenet-adversarial"
    _imagenet_classnames(adversarial, WNIDS)
    write_class_folders(adversarial / "imagenet-a", {"n01443537": 1, "n01484850": 1})
    (adversarial / "imagenet-a" / "README.txt").write_text("not a class")
    ds = load_dataset(f"coop:ImageNetA:{tmp_path}")
    assert ds.classnames == ["goldfish", "great white shark"] and [s.label for s in ds.test] == [0, 1]
    write_class_folders(adversarial / "imagenet-a", {"n99999999": 1})
    with pytest.raises(DataError, match="n99999999 has no line in .*classnames.txt"):
        load_dataset(f"coop:ImageNetA:{tmp_path}")
    with pytest.raises(DataError, match="no classnames.txt"):
        load_dataset(f"coop:ImageNetSketch:{tmp_path}")
    (v2 / "classnames.txt").write_text("n01440764 tench\nn01440764 tench again\n")  # would shift V2's labels
    with pytest.raises(DataError, match="line 2: id n01440764 appears twice"):
        load_dataset(f"coop:ImageNetV2:{tmp_path}")


def test_coop_unknown_names(tmp_path):
    with pytest.raises(DataError, match="split_zhou_Nope.json"):
        load_dataset(f"coop:Nope:{tmp_path}")
    with pytest.raises(DataError, match="no split_zhou_OxfordPets.json"):
        load_dataset(f"coop:OxfordPets:{tmp_path}")


@pytest.mark.parametrize(
    "bad_entry, problem",
    [
        (["c0/missing.png", 0, "class_0"], "missing.png does not exist"),
        (["../outside.png", 0, "class_0"], "escapes the image root"),
        (["/etc/passwd", 0, "class_0"], "escapes the image root"),
        (["c0/train0.png", 0, "another_name"], "label 0 is named 'another_name' here but 'class_0'"),
        (["c0/train0.png", 5, "class_5"], r"labels must be 0\.\.5 without gaps"),
        (["c0/train0.png", "zero", "class_0"], "non-negative integer"),
        (["c0/train0.png", "²", "class_0"], "non-negative integer"),  # a digit to isdigit(), not to int()
    ],
)
def test_coop_bad_split_entries_name_the_split_file(tmp_path, bad_entry, problem):
    split_file = write_split_json(tmp_path / "split_zhou_Toy.json", tmp_path, toy_split(2, 1, 0, 1))
    data = json.loads(split_file.read_text())
    data["test"].append(bad_entry)
    split_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=problem) as err:
        load_dataset(f"coop:Toy:{tmp_path}")
    assert "split_zhou_Toy.json" in str(err.value)


def test_coop_split_file_that_is_not_json(tmp_path):
    (tmp_path / "split_zhou_Toy.json").write_text("{not json")
    with pytest.raises(DataError, match="split_zhou_Toy.json"):
        load_dataset(f"coop:Toy:{tmp_path}")


# ---------------------------------------------------------------- csv


def test_csv_with_and_without_label(tmp_path):
    write_image(tmp_path / "imgs" / "a.png")
    absolute = write_image(tmp_path / "elsewhere" / "b.png")
    (tmp_path / "pairs.csv").write_text(f'image,caption\nimgs/a.png,"a red, square"\n{absolute},second\n')
    (tmp_path / "labelled.csv").write_text("caption,image,label\nfirst,imgs/a.png,sea_lion\nsecond,imgs/a.png,cat\n")

    pairs = load_dataset(f"csv:{tmp_path / 'pairs.csv'}")
    assert pairs.name == "pairs" and pairs.classnames == [] and pairs.val == pairs.test == []
    assert pairs.train == [Sample(tmp_path / "imgs" / "a.png", -1, "a red, square"), Sample(absolute, -1, "second")]

    labelled = load_dataset(f"csv:{tmp_path / 'labelled.csv'}")
    assert labelled.classnames == ["cat", "sea lion"]
    assert [(s.label, s.caption) for s in labelled.train] == [(1, "first"), (0, "second")]

    # Images outside the CSV's folder (here through '..'; absolute paths alike) are sampled but not cached: a split
    # file holds paths under its root only.
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "up.csv").write_text("image,caption,label\n../imgs/a.png,a,cat\n../elsewhere/b.png,b,dog\n")
    outside = load_dataset(f"csv:{tmp_path / 'meta' / 'up.csv'}")
    assert len(fewshot(outside, shots=1, seed=0, cache_dir=tmp_path / "cache").train) == 2
    assert not (tmp_path / "cache").exists()
    assert len(fewshot(labelled, shots=1, seed=0, cache_dir=tmp_path / "cache").train) == 2  # inside: cached
    assert [p.name[:14] for p in (tmp_path / "cache").rglob("*.json")] == ["shot_1-seed_0-"]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("", "is empty"),
        ("image,text\na.png,x\n", "row 1: missing column.*caption"),
        ("image,caption\nimgs/a.png,ok\nimgs/missing.png,x\n", "row 3: image file .*missing.png does not exist"),
        ("image,caption,label\nimgs/a.png,ok,\n", "row 2: empty label"),
        ("image,caption\n", "no rows"),
        ("image,caption,label\nimgs/a.png,a dog, running,dog\n", "row 2: 4 fields but the header has 3; put fields"),
    ],
)
def test_csv_errors_name_file_and_row(tmp_path, content, problem):
    write_image(tmp_path / "imgs" / "a.png")
    (tmp_path / "pairs.csv").write_text(content)
    with pytest.raises(DataError, match=problem) as err:
        load_dataset(f"csv:{tmp_path / 'pairs.csv'}")
    assert "pairs.csv" in str(err.value)


# ---------------------------------------------------------------- few-shot and base/new


@pytest.fixture
def data_toy(tmp_path) -> DatasetSplits:
    """3 classes, 8 train / 5 val / 2 test images each, generic CoOp layout."""
    write_split_json(tmp_path / "split_zhou_Toy.json", tmp_path, toy_split(3, 8, 5, 2))
    return load_dataset(f"coop:Toy:{tmp_path}")


def test_fewshot_picks_k_per_class_deterministically(data_toy):
    picked = fewshot(data_toy, shots=2, seed=1)

    assert [sum(s.label == c for s in picked.train) for c in range(3)] == [2, 2, 2]
    assert [sum(s.label == c for s in picked.val) for c in range(3)] == [2, 2, 2]
    assert set(picked.train) <= set(data_toy.train) and len(set(picked.train)) == 6
    assert picked.test == data_toy.test and picked.classnames == data_toy.classnames

    assert fewshot(data_toy, shots=2, seed=1) == picked
    assert fewshot(data_toy, shots=2, seed=2).train != picked.train
    # Only the files and the seed matter, not the order the data set lists them in.
    reordered = DatasetSplits(**{**vars(data_toy), "train": data_toy.train[::-1]})
    assert fewshot(reordered, shots=2, seed=1).train == picked.train

    sixteen = fewshot(data_toy, shots=8, seed=0)
    assert len(sixteen.train) == 24 and len(sixteen.val) == 12  # val: min(8, 4) per class


def test_fewshot_too_many_shots(data_toy):
    with pytest.raises(DataError, match="class 'class 0'.*has only 8"):
        fewshot(data_toy, shots=9, seed=0)
    repeated = fewshot(data_toy, shots=9, seed=0, allow_repeat=True)
    assert len(repeated.train) == 27 and len(set(repeated.train)) <= 24
    assert len(repeated.val) == 12  # val is never repeated: a class keeps the 4 it is sampled

    no_train = DatasetSplits(**{**vars(data_toy), "train": [s for s in data_toy.train if s.label != 2]})
    with pytest.raises(DataError, match="class 'class 2'.*no train images"):
        fewshot(no_train, shots=1, seed=0)


def test_fewshot_cache_written_reused_and_regenerated_when_stale(data_toy, tmp_path):
    cache = tmp_path / "cache"
    first = fewshot(data_toy, shots=2, seed=3, cache_dir=cache)
    [cache_file] = (cache / "Toy").iterdir()  # no temp files left
    assert cache_file.name.startswith("shot_2-seed_3-") and cache_file.suffix == ".json"

    data = json.loads(cache_file.read_text())
    assert set(data) == {"train", "val"}  # CoOp's split format
    assert [e[0] for e in data["train"]] == names(first.train, data_toy.root)
    assert all(isinstance(e[1], int) and e[2] == f"class {e[1]}" for e in data["train"] + data["val"])

    assert fewshot(data_toy, shots=2, seed=3, cache_dir=cache) == first

    # The cache file is what decides: a hand-edited (still valid) subset is used as written.
    data["train"][0] = ["c0/train7.png", 0, "class 0"]
    data["train"][1] = ["c0/train6.png", 0, "class 0"]
    cache_file.write_text(json.dumps(data))
    edited = fewshot(data_toy, shots=2, seed=3, cache_dir=cache)
    assert names(edited.train[:2], data_toy.root) == ["c0/train7.png", "c0/train6.png"]

    # A cache listing an image the data set does not have is stale and is regenerated.
    data["train"][0] = ["c0/test0.png", 0, "class 0"]
    cache_file.write_text(json.dumps(data))
    assert fewshot(data_toy, shots=2, seed=3, cache_dir=cache) == first
    assert json.loads(cache_file.read_text())["train"][0][0] == names(first.train, data_toy.root)[0]

    # Another pool (images added since, or another data set of the same name) gets its own file, never this
    # one's subset: the same subset as without a cache.
    grown = DatasetSplits(**{**vars(data_toy), "train": data_toy.train + data_toy.test})
    assert fewshot(grown, shots=2, seed=3, cache_dir=cache) == fewshot(grown, shots=2, seed=3) != first
    assert len(list((cache / "Toy").iterdir())) == 2 and fewshot(data_toy, shots=2, seed=3, cache_dir=cache) == first

    # The digest is of paths relative to the root: the same images elsewhere (a moved data set) keep their subsets.
    for where in ("one", "two"):
        write_split_json(tmp_path / where / "split_zhou_Toy.json", tmp_path / where, toy_split(3, 8, 5, 2))
        fewshot(load_dataset(f"coop:Toy:{tmp_path / where}"), shots=2, seed=3, cache_dir=tmp_path / "shared")
    assert len(list((tmp_path / "shared" / "Toy").iterdir())) == 1


def test_base_new_split_relabels_from_zero(tmp_path):
    write_split_json(tmp_path / "split_zhou_Five.json", tmp_path, toy_split(5, 2, 1, 1))
    ds = load_dataset(f"coop:Five:{tmp_path}")

    base, new = base_new_split(ds)

    assert (base.name, new.name) == ("Five-base", "Five-new")
    assert base.classnames == ["class 0", "class 1", "class 2"]
    assert new.classnames == ["class 3", "class 4"]
    assert [s.label for s in base.train] == [0, 0, 1, 1, 2, 2]
    assert [s.label for s in new.test] == [0, 1]
    assert [s.path.parent.name for s in new.test] == ["c3", "c4"]
    assert len(base.val) + len(new.val) == len(ds.val)


def test_split_fingerprint_tracks_files_and_labels(data_toy):
    samples = data_toy.test
    fingerprint = split_fingerprint(samples)
    assert re.fullmatch("[0-9a-f]{16}", fingerprint), fingerprint
    assert split_fingerprint(list(samples)) == fingerprint
    assert split_fingerprint([Sample(samples[0].path, 1)] + samples[1:]) != fingerprint
    write_image(samples[0].path, size=9)
    assert split_fingerprint(samples) != fingerprint
    os.remove(samples[1].path)
    with pytest.raises(DataError, match=samples[1].path.name):
        split_fingerprint(samples)


def test_split_rejects_unknown_name(data_toy):
    assert data_toy.split("val") is data_toy.val
    with pytest.raises(DataError, match="no split 'validation'"):
        data_toy.split("validation")


# ---------------------------------------------------------------- images


def test_image_dataset_converts_modes_to_rgb(tmp_path):
    Image.new("L", (8, 8), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "transparent.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(tmp_path / "palette.gif")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    files = ["gray.png", "transparent.png", "palette.gif", "cmyk.jpg", "deep.png"]
    assert Image.open(tmp_path / "deep.png").mode == "I;16"

    dataset = ImageDataset([Sample(tmp_path / f, i) for i, f in enumerate(files)], transform=ToTensor())
    items = [dataset[i] for i in range(len(dataset))]

    assert [(label, index) for _, label, index in items] == [(i, i) for i in range(5)]
    assert all(t.shape == (3, 8, 8) for t, _, _ in items)
    pixel = {f: [round(float(v), 2) for v in t[:, 0, 0]] for f, (t, _, _) in zip(files, items)}
    assert pixel == {
        "gray.png": [0.5, 0.5, 0.5],
        "transparent.png": [1.0, 1.0, 1.0],  # transparency shown on white
        "palette.gif": [1.0, 0.0, 0.0],
        "cmyk.jpg": [1.0, 0.0, 0.0],
        "deep.png": [1.0, 1.0, 1.0],  # 16-bit range scaled, not clipped
    }
    assert load_image(tmp_path / "palette.gif").mode == "RGB"
    assert ImageDataset([Sample(tmp_path / "gray.png", 0)])[0][0].size == (8, 8)  # no transform: PIL image


@pytest.fixture
def data_bad_images(tmp_path) -> dict[str, Path]:
    good = write_image(tmp_path / "good.jpg", fmt="JPEG")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image at all")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:2000])
    missing = tmp_path / "missing.png"
    return {"good": good, "corrupt": corrupt, "empty": empty, "truncated": truncated, "missing": missing}


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("corrupt", "not a recognised image"),
        ("empty", "empty"),
        ("truncated", "truncated"),
        ("missing", "no such file"),
    ],
)
def test_bad_images_raise_data_error_naming_the_file(data_bad_images, kind, reason):
    path = data_bad_images[kind]
    with pytest.raises(DataError, match=reason) as err:
        load_image(path)
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match=path.name):
        ImageDataset([Sample(path, 0)])[0]


def test_find_unreadable_images_reports_only_bad_ones(data_bad_images):
    samples = [Sample(path, i) for i, path in enumerate(data_bad_images.values())]
    bad = find_unreadable_images(samples)
    assert [sample.path.stem for sample, _ in bad] == ["corrupt", "empty", "truncated", "missing"]
    assert all(reason for _, reason in bad)
    assert find_unreadable_images(samples[:1], progress=True) == []


def test_decompression_bombs_are_refused_naming_the_file(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4,096 pixels: over twice the limit, as a real bomb
    with pytest.raises(DataError, match=r"bomb\.png: refused as a possible decompression bomb"):
        load_image(tmp_path / "bomb.png")


def test_per_class_annotations_follow_class_subsets_and_must_fit_the_classes(tmp_path):
    from clipadapt.data import PerClass, select_classes

    write_class_folders(tmp_path, {"crow": 2, "owl": 2, "wren": 2})
    splits = load_dataset(f"imagefolder:{tmp_path}")
    attributes = PerClass([{"size": "large"}, {"size": "medium"}, {"size": "small"}])
    annotated = replace(splits, annotations={"class_attributes": attributes, "superclass": "bird"})
    kept = select_classes(annotated, [2, 0], "-some")
    assert kept.classnames == ["wren", "crow"]
    assert kept.annotations == {"class_attributes": [{"size": "small"}, {"size": "large"}], "superclass": "bird"}
    assert isinstance(kept.annotations["class_attributes"], PerClass)
    with pytest.raises(DataError, match="'class_attributes' has 2 values for 3 classes"):
        replace(splits, annotations={"class_attributes": PerClass(attributes[:2])})
    with pytest.raises(DataError, match="class_attributes annotation must be a PerClass"):
        replace(splits, annotations={"class_attributes": list(attributes)})
