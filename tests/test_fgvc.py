"""Fine-grained data sets in their released layouts, written small by the tests: CUB-200-2011."""
import json

import pytest

from clipadapt import ClipadaptError
from clipadapt.cli import main
from clipadapt.data import load_dataset
from conftest import COLOURS, colour_images


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
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("classes.txt", classes)):
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


@pytest.mark.parametrize("file,text,message", [
    ("classes.txt", "1 001.Red\n3 003.Blue\n", "class ids must be 1..2"),
    ("train_test_split.txt", "1 1\n", "list different image ids"),
    ("train_test_split.txt", None, "missing file"),
    ("image_class_labels.txt", "bad line\n", "line 1: expected 2 fields"),
    ("images.txt", "1 ../../etc/passwd\n", "escapes the image folder"),
])
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
    assert main(["run", "zeroshot", "--dataset", f"cub:{cub}", "--pretrained", str(weights), "--protocol", "gzsl",
                 "--unseen", str(unseen), "--cache", str(tmp_path / "cache"), "--out", str(out),
                 "--no-progress", "templates=a photo of a {}."]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_seen_classes"] == 2 and metrics["num_unseen_classes"] == 2
    assert 0 <= metrics["unseen_accuracy"] <= 100
