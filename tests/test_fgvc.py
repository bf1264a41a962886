"""Fine-grained data sets in their released layouts, written small by the tests: CUB-200-2011, Stanford Dogs,
NABirds and Food-101."""

import json

import numpy as np
import pytest
import scipy.io
from conftest import COLOURS, colour_images
from PIL import Image

from clipadapt import ClipadaptError
from clipadapt.cli import main
from clipadapt.data import load_dataset


def write_cub(root, per_class=(3, 2), colours=COLOURS):
    """CUB_200_2011/ as released: images/NNN.Name/*.png and the four tables (1-based ids), here with the colour
    images as "species"."""
    cub = root / "CUB_200_2011"
    colour_images(cub / "raw", per_split={"train": per_class[0], "test": per_class[1]}, colours=colours)
    images, labels, split, classes = [], [], [], []
    for c, name in enumerate(colours, 1):
        folder = f"{c:03d}.{name.capitalize()}_Warbler"
        classes.append(f"{c} {folder}")
        (cub / "images" / folder).mkdir(parents=True)
        for part, flag in (("train", 1), ("test", 0)):
            for source in sorted((cub / "raw" / part / name).iterdir()):
                image_id = len(images) + 1
                target = cub / "images" / folder / f"{part}_{source.name}"
                source.rename(target)
                images.append(f"{image_id} {folder}/{target.name}")
                labels.append(f"{image_id} {c}")
                split.append(f"{image_id} {flag}")
    for name, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("classes.txt", classes),
    ):
        (cub / name).write_text("\n".join(lines) + "\n")
    return cub


def test_cub_layout(tmp_path):
    cub = write_cub(tmp_path)
    for spec in (f"cub:{cub}", f"cub:{tmp_path}"):  # the release folder or the folder holding it
        splits = load_dataset(spec)
        assert splits.classnames == ["Red Warbler", "Green Warbler", "Blue Warbler", "Yellow Warbler"]
        assert len(splits.train) == 4 * 3 and len(splits.test) == 4 * 2 and splits.val == []
        assert all(s.path.name.startswith("train_") for s in splits.train)
        assert [s.label for s in splits.test] == [0, 0, 1, 1, 2, 2, 3, 3]
        assert splits.annotations["superclass"] == "bird"


@pytest.mark.parametrize(
    "file,text,message",
    [
        ("classes.txt", "1 001.Red\n3 003.Blue\n", "class ids must be 1..2"),
        ("train_test_split.txt", "1 1\n", "list different image ids"),
        ("train_test_split.txt", None, "missing file"),
        ("image_class_labels.txt", "bad line\n", "line 1: expected 2 fields"),
        ("images.txt", "1 ../../etc/passwd\n", "escapes the image root"),
    ],
)
def test_cub_bad_files_name_the_file(tmp_path, file, text, message):
    cub = write_cub(tmp_path, per_class=(1, 0))
    if file == "images.txt":  # keep the other tables consistent with the one hostile entry
        for other, line in (("image_class_labels.txt", "1 1"), ("train_test_split.txt", "1 1")):
            (cub / other).write_text(line + "\n")
    if text is None:
        (cub / file).unlink()
    else:
        (cub / file).write_text(text)
    with pytest.raises(ClipadaptError, match=message) as error:
        load_dataset(f"cub:{cub}")
    assert file in str(error.value) or "images.txt" in str(error.value)


def test_cub_gzsl_with_an_unseen_class_file(colour_world, tmp_path):
    _, weights = colour_world
    cub = write_cub(tmp_path / "data")
    unseen = tmp_path / "unseen.txt"
    unseen.write_text("Blue Warbler\nYellow Warbler\n")
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "zeroshot",
                "--dataset",
                f"cub:{cub}",
                "--pretrained",
                str(weights),
                "--protocol",
                "gzsl",
                "--unseen",
                str(unseen),
                "--cache",
                str(tmp_path / "cache"),
                "--out",
                str(out),
                "--no-progress",
                "templates=a photo of a {}.",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_seen_classes"] == 2 and metrics["num_unseen_classes"] == 2
    assert 0 <= metrics["unseen_accuracy"] <= 100


# ---------------------------------------------------------------- Stanford Dogs

DOG_FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02086240-Shih-Tzu"]


def cells(strings):
    """A MATLAB cell array (N x 1) of strings, as scipy.io.savemat writes numpy object arrays."""
    array = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        array[i, 0] = s
    return array


def write_dog_list(path, files, labels):
    """One of lists.tar's .mat files: file_list, annotation_list (paths without extension), labels (N x 1)."""
    scipy.io.savemat(
        path,
        {
            "file_list": cells(files),
            "annotation_list": cells([f.rsplit(".", 1)[0] for f in files]),
            "labels": np.array(labels, dtype=np.float64).reshape(-1, 1),
        },
    )


def write_dogs(root, per_class=(2, 1), folders=DOG_FOLDERS, flat=False):
    """Stanford Dogs as released: Images/<wnid>-<Breed>/<wnid>_<n>.png and train_list.mat / test_list.mat."""
    colours = dict(list(COLOURS.items())[: len(folders)])
    colour_images(root / "raw", per_split={"train": per_class[0], "test": per_class[1]}, colours=colours)
    lists = {"train": ([], []), "test": ([], [])}
    for label, (folder, name) in enumerate(zip(folders, colours), 1):
        (root / "Images" / folder).mkdir(parents=True)
        for part in ("train", "test"):
            for source in sorted((root / "raw" / part / name).iterdir()):
                target = f"{folder.split('-')[0]}_{part}{source.stem}.png"
                source.rename(root / "Images" / folder / target)
                lists[part][0].append(f"{folder}/{target}")
                lists[part][1].append(label)
    lists_dir = root if flat else root / "lists"  # flat: as lists.tar unpacks, next to Images/
    lists_dir.mkdir(exist_ok=True)
    for part, (files, labels) in lists.items():
        write_dog_list(lists_dir / f"{part}_list.mat", files, labels)
    return root


def test_dogs_layout(tmp_path):
    dogs = write_dogs(tmp_path / "dogs")
    splits = load_dataset(f"dogs:{dogs}")
    assert splits.classnames == ["Chihuahua", "Japanese spaniel", "Shih-Tzu"]
    assert splits.annotations["superclass"] == "dog" and splits.name == "StanfordDogs" and splits.val == []
    assert [s.label for s in splits.train] == [0, 0, 1, 1, 2, 2] and [s.label for s in splits.test] == [0, 1, 2]
    assert all(s.path.is_file() and s.path.parent.parent == dogs / "Images" for s in splits.train + splits.test)
    assert splits.test[1].path.name == "n02085782_test0.png"


def test_dogs_lists_unpacked_into_the_root(tmp_path):
    dogs = write_dogs(tmp_path / "dogs", flat=True)
    splits = load_dataset(f"dogs:{dogs}")
    assert len(splits.train) == 6 and len(splits.test) == 3


def _dog_files(dogs, part):
    mat = scipy.io.loadmat(dogs / "lists" / f"{part}_list.mat")
    return [str(c[0][0]) for c in mat["file_list"]], [int(x) for x in mat["labels"].ravel()]


@pytest.mark.parametrize(
    "change,message",
    [
        ("missing", "missing file"),
        ("not a mat file", "cannot read MATLAB file"),
        ("no labels", "no variable 'labels'"),
        ("label 0", "entry 1: class id 0 is out of range"),
        ("label gap", r"class ids must be 1\.\.5 without gaps; no image has class \[3, 4\]"),
        ("escape", "escapes the image root"),
        ("fewer labels", "file_list has 3 entries but labels has 2"),
        ("label in another folder", "class 1 is the folder 'n02085782-Japanese_spaniel' here"),
        ("folder with two labels", "folder 'n02085620-Chihuahua' has class 4 here but 1 elsewhere"),
        ("missing image", "entry 3: image file .* does not exist"),
        ("listed twice", "is listed twice"),
    ],
)
def test_dogs_bad_lists_name_the_file(tmp_path, change, message):
    dogs = write_dogs(tmp_path / "dogs", per_class=(1, 1))
    test_list = dogs / "lists" / "test_list.mat"
    files, labels = _dog_files(dogs, "test")
    if change == "missing":
        test_list.unlink()
    elif change == "not a mat file":
        test_list.write_text("file_list labels\n")
    elif change == "no labels":
        scipy.io.savemat(test_list, {"file_list": cells(files)})
    elif change == "fewer labels":
        write_dog_list(test_list, files, labels[:2])
    elif change == "missing image":
        write_dog_list(test_list, files[:2] + [files[2].replace(".png", "_gone.png")], labels)
    elif change == "listed twice":
        write_dog_list(test_list, files + _dog_files(dogs, "train")[0][:1], labels + [1])
    else:
        labels = {
            "label 0": [0, 2, 3],
            "label gap": [1, 2, 5],
            "label in another folder": [1, 1, 3],
            "folder with two labels": [4, 2, 3],
        }.get(change, labels)
        if change == "label gap":  # Shih-Tzu is class 5 in both lists: consistent, but classes 3 and 4 are empty
            write_dog_list(dogs / "lists" / "train_list.mat", _dog_files(dogs, "train")[0], [1, 2, 5])
        if change == "escape":
            files = ["../../etc/passwd"] + files[1:]
        write_dog_list(test_list, files, labels)
    with pytest.raises(ClipadaptError, match=message) as error:
        load_dataset(f"dogs:{dogs}")
    assert "test_list.mat" in str(error.value)


def test_dogs_without_images_folder(tmp_path):
    dogs = write_dogs(tmp_path / "dogs", per_class=(1, 0))
    (dogs / "Images").rename(dogs / "photos")
    with pytest.raises(ClipadaptError, match="has no Images/ folder"):
        load_dataset(f"dogs:{dogs}")


# ---------------------------------------------------------------- NABirds

# A slice of NABirds' taxonomy: sparse ids, internal nodes without images, names with spaces and parentheses.
NABIRDS_CLASSES = {
    0: "Birds",
    1: "Perching Birds",
    22: "Wrens",
    295: "Bewick's Wren",
    296: "Carolina Wren",
    700: "Hawks",
    813: "Red-tailed Hawk (Adult)",
}
NABIRDS_PARENTS = {1: 0, 22: 1, 295: 22, 296: 22, 700: 0, 813: 700}
NABIRDS_LEAVES = {"red": 813, "green": 295, "blue": 296}  # the colours as leaf classes, not in id order


def image_uuid(n):
    return f"{n:08x}-21dc-4d0c-bfe1-4cae3c85c829"


def write_nabirds(root, per_class=(2, 1)):
    """nabirds/ as released: images/NNNN/<uuid without dashes>.png, the CUB-style tables keyed by UUID strings,
    classes.txt over the whole taxonomy and hierarchy.txt."""
    nabirds = root / "nabirds"
    colours = {name: COLOURS[name] for name in NABIRDS_LEAVES}
    colour_images(nabirds / "raw", per_split={"train": per_class[0], "test": per_class[1]}, colours=colours)
    images, labels, split = [], [], []
    for name, class_id in NABIRDS_LEAVES.items():
        folder = f"{class_id:04d}"
        (nabirds / "images" / folder).mkdir(parents=True)
        for part, flag in (("train", 1), ("test", 0)):
            for source in sorted((nabirds / "raw" / part / name).iterdir()):
                image_id = image_uuid(len(images))
                target = nabirds / "images" / folder / f"{image_id.replace('-', '')}.png"
                source.rename(target)
                images.append(f"{image_id} {folder}/{target.name}")
                labels.append(f"{image_id} {class_id}")
                split.append(f"{image_id} {flag}")
    tables = {
        "images.txt": images,
        "image_class_labels.txt": labels,
        "train_test_split.txt": split,
        "classes.txt": [f"{c} {n}" for c, n in NABIRDS_CLASSES.items()],
        "hierarchy.txt": [f"{c} {p}" for c, p in NABIRDS_PARENTS.items()],
    }
    for name, lines in tables.items():
        (nabirds / name).write_text("\n".join(lines) + "\n")
    return nabirds


def test_nabirds_layout(tmp_path):
    nabirds = write_nabirds(tmp_path)
    for spec in (f"nabirds:{nabirds}", f"nabirds:{tmp_path}"):  # the release folder or the folder holding it
        splits = load_dataset(spec)
        # Only the classes with images, in increasing class id: 295, 296, 813.
        assert splits.classnames == ["Bewick's Wren", "Carolina Wren", "Red-tailed Hawk (Adult)"]
        assert splits.annotations["superclass"] == "bird" and splits.name == "NABirds" and splits.val == []
        assert [s.label for s in splits.train] == [2, 2, 0, 0, 1, 1] and [s.label for s in splits.test] == [2, 0, 1]
        assert all(s.path.is_file() for s in splits.train + splits.test)
        assert splits.train[0].path.parent.name == "0813"


def _replace_line(path, index, line):
    lines = path.read_text().splitlines()
    lines[index] = line
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "file,change,message",
    [
        ("hierarchy.txt", None, "missing file"),
        ("images.txt", (0, "only-one-field"), "line 1: expected 2 fields starting with an id"),
        ("classes.txt", (1, "one Perching Birds"), "line 2: expected 2 fields starting with an integer id"),
        ("image_class_labels.txt", (0, f"{image_uuid(0)} 999"), "class '999' is not in classes.txt"),
        ("image_class_labels.txt", (0, f"{image_uuid(0)} bird"), "class 'bird' is not in classes.txt"),
        ("image_class_labels.txt", (0, f"{image_uuid(99)} 813"), "list different image ids"),
        ("train_test_split.txt", (1, f"{image_uuid(0)} 1"), "line 2: id .* appears twice"),
        ("train_test_split.txt", (0, f"{image_uuid(0)} yes"), "expected 0 or 1, got 'yes'"),
        ("images.txt", (0, f"{image_uuid(0)} ../../../etc/passwd"), "escapes the image root"),
        ("images.txt", (0, f"{image_uuid(0)} 0813/gone.png"), "image file .* does not exist"),
        ("hierarchy.txt", (5, "813 1234"), "parent class '1234' is not in classes.txt"),
        ("hierarchy.txt", (5, "999 700"), "child class 999 is not in classes.txt"),
        ("hierarchy.txt", (0, "1 22"), "cycle"),
        ("hierarchy.txt", (4, "700 700"), "cycle"),
        ("hierarchy.txt", (5, ""), r"2 separate trees \(roots 'Birds', 'Red-tailed Hawk \(Adult\)'\)"),
    ],
)
def test_nabirds_bad_files_name_the_file(tmp_path, file, change, message):
    nabirds = write_nabirds(tmp_path, per_class=(1, 0))
    if change is None:
        (nabirds / file).unlink()
    else:
        _replace_line(nabirds / file, *change)
    with pytest.raises(ClipadaptError, match=message) as error:
        load_dataset(f"nabirds:{nabirds}")
    assert file in str(error.value)


def test_nabirds_superclass_is_the_named_root(tmp_path):
    nabirds = write_nabirds(tmp_path, per_class=(1, 0))
    for name, superclass in (("Songbirds", "songbird"), ("Waterfowl", "waterfowl"), ("Grass", "grass")):
        _replace_line(nabirds / "classes.txt", 0, f"0 {name}")  # lower-cased, a plural "s" dropped
        assert load_dataset(f"nabirds:{nabirds}").annotations["superclass"] == superclass


# ---------------------------------------------------------------- Food-101

FOODS = {"red": "apple_pie", "green": "edamame", "blue": "baby_back_ribs"}


def write_food101(root, per_class=(2, 1)):
    """food-101/ as released: images/<class>/<numeric id>.jpg and meta/{classes,train,test}.txt."""
    food = root / "food-101"
    colours = {name: COLOURS[name] for name in FOODS}
    colour_images(food / "raw", per_split={"train": per_class[0], "test": per_class[1]}, colours=colours)
    lists = {"train": [], "test": []}
    for colour, dish in FOODS.items():
        (food / "images" / dish).mkdir(parents=True)
        for part in ("train", "test"):
            for source in sorted((food / "raw" / part / colour).iterdir()):
                image_id = str(1005649 + 10 * len(lists["train"] + lists["test"]))
                # Real JPEGs: the lists name images without extension, and the loader adds ".jpg".
                Image.open(source).save(food / "images" / dish / f"{image_id}.jpg")
                lists[part].append(f"{dish}/{image_id}")
    (food / "meta").mkdir()
    (food / "meta" / "classes.txt").write_text("\n".join(FOODS.values()) + "\n")
    for part, lines in lists.items():
        (food / "meta" / f"{part}.txt").write_text("\n".join(lines) + "\n")
    return food


def test_food101_layout(tmp_path):
    food = write_food101(tmp_path)
    for spec in (f"food101:{food}", f"food101:{tmp_path}"):  # the release folder or the folder holding it
        splits = load_dataset(spec)
        assert splits.classnames == ["apple pie", "edamame", "baby back ribs"]  # classes.txt order
        assert splits.annotations["superclass"] == "food" and splits.template_key == "Food101" and splits.val == []
        assert [s.label for s in splits.train] == [0, 0, 1, 1, 2, 2] and [s.label for s in splits.test] == [0, 1, 2]
        assert splits.test[0].path == food / "images" / "apple_pie" / f"{1005649 + 20}.jpg"
        assert splits.root == food / "images"


@pytest.mark.parametrize(
    "file,text,message",
    [
        ("meta/test.txt", None, "missing file"),
        ("meta/classes.txt", None, "missing file"),
        ("meta/classes.txt", "apple_pie\nedamame\napple_pie\n", "line 3: class 'apple_pie' appears twice"),
        ("meta/classes.txt", "apple pie\n", "line 1: expected one class folder name"),
        ("meta/classes.txt", "\n\n", "is empty"),
        ("meta/test.txt", "apple_pie\n", "line 1: expected <class>/<image id>, got 'apple_pie'"),
        ("meta/test.txt", "apple_pie/1/2\n", "expected <class>/<image id>"),
        ("meta/test.txt", "apple_pie/1005659\nsushi/1\n", "line 2: class 'sushi' is not in .*classes.txt"),
        ("meta/test.txt", "../../../etc/passwd\n", "escapes the image root"),
        ("meta/test.txt", "/etc/passwd\n", "escapes the image root"),
        ("meta/test.txt", "apple_pie/42\n", r"line 1: image file .*apple_pie/42\.jpg does not exist"),
        ("meta/test.txt", "apple_pie/1005649\n", "listed twice .*also in train.txt"),
    ],
)
def test_food101_bad_files_name_the_file(tmp_path, file, text, message):
    food = write_food101(tmp_path, per_class=(1, 1))
    if text is None:
        (food / file).unlink()
    else:
        (food / file).write_text(text)
    with pytest.raises(ClipadaptError, match=message) as error:
        load_dataset(f"food101:{food}")
    assert file.split("/")[1] in str(error.value)
