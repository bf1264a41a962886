"""Property-based fuzzing (hypothesis) of what reads user files and text: the CoOp split JSON, caption CSVs,
CUB's tables, and the tokenizer path of prompts. Each either loads something consistent or raises DataError /
ClipadaptError naming the problem; no other exception escapes. Examples are derandomized so CI is repeatable."""

import csv
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import colour_images
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clipadapt import load_backbone
from clipadapt.data import load_dataset
from clipadapt.data.datasets import read_split_file
from clipadapt.errors import ClipadaptError, DataError

FUZZ = settings(
    derandomize=True,
    deadline=None,
    max_examples=400,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Paths that exist under the data root, paths that escape it, and anything else.
PATHS = st.sampled_from(
    [
        "train/red/0.png",
        "train/blue/1.png",
        "../train/red/0.png",
        "/etc/passwd",
        "",
        "train/../../x.png",
        "missing.png",
        "train/red",
        "./train/red/0.png",
    ]
) | st.text(max_size=12)
# Labels as CoOp writes them, as strings (which CoOp's int() accepts, or not), and of other JSON types.
LABELS = st.sampled_from([0, 1, 3, -1, "0", " 1", "²", "٣", "-1", "1.5", True, None, 1.5, 10**20]) | st.text(max_size=3)
NAMES = st.sampled_from(["red", "blue", "Red_Cardinal"]) | st.text(max_size=8)
ENTRIES = st.tuples(PATHS, LABELS, NAMES).map(list) | st.lists(PATHS | LABELS, max_size=4)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
SPLIT_DOCUMENTS = (
    st.fixed_dictionaries(
        {
            "train": st.lists(ENTRIES, max_size=4),
            "val": st.lists(ENTRIES, max_size=2) | JSON,
            "test": st.lists(ENTRIES, max_size=3),
        }
    )
    | JSON
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return colour_images(tmp_path_factory.mktemp("fuzz"), {"train": 2})


@FUZZ
@given(document=SPLIT_DOCUMENTS, raw=st.none() | st.binary(max_size=40))
@example(document={"train": [["train/red", 0, "red"]], "val": [], "test": []}, raw=None)  # a folder, not an image
@example(document={"train": [["train/red/0.png", "²", "red"]], "val": [], "test": []}, raw=None)
def test_split_file_loads_consistently_or_says_why(data_root, document, raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "split_zhou_Fuzz.json"
        path.write_bytes(raw if raw is not None else json.dumps(document).encode())
        try:
            splits, classnames = read_split_file(path, data_root)
        except DataError as error:
            assert str(path) in str(error)
            return
    root = data_root.resolve()
    for samples in splits.values():
        for sample in samples:
            assert sample.path.resolve().is_relative_to(root) and sample.path.is_file()
            assert 0 <= sample.label < len(classnames)


CELLS = st.sampled_from(
    [
        "train/red/0.png",
        "train/blue/1.png",
        "missing.png",
        "",
        " ",
        "red",
        'a, "quoted" caption',
        "line\nbreak",
        "\ufeffimage",
    ]
) | st.text(max_size=10)
HEADERS = st.lists(st.sampled_from(["image", "caption", "label", " image ", "Image", "extra", ""]), max_size=4)


@FUZZ
@given(header=HEADERS, rows=st.lists(st.lists(CELLS, max_size=4), max_size=4), raw=st.none() | st.text(max_size=60))
def test_caption_csv_loads_consistently_or_says_why(data_root, header, rows, raw):
    path = data_root / "fuzz.csv"
    if raw is None:
        text = io.StringIO()
        csv.writer(text).writerows([header, *rows])
        raw = text.getvalue()
    path.write_text(raw, encoding="utf-8")
    try:
        splits = load_dataset(f"csv:{path}")
    except DataError as error:
        assert str(path) in str(error)
        return
    assert splits.train and all(sample.path.is_file() for sample in splits.train)
    assert all(-1 <= sample.label < len(splits.classnames) for sample in splits.train)


TABLE_LINES = st.lists(
    st.sampled_from(
        [
            "1 001.Red/0.png",
            "2 002.Blue/1.png",
            "1 1",
            "2 2",
            "1 0",
            "2 1",
            "1 001.Red",
            "2 002.Blue",
            "3 003.Green",
            "1",
            "x y",
            "1 ../../etc/passwd",
            "2 /abs.png",
            "",
            "   ",
            "0 0",
            "-1 1",
            "1 1 1",
        ]
    )
    | st.text(max_size=8),
    max_size=4,
)


@FUZZ
@given(images=TABLE_LINES, labels=TABLE_LINES, split=TABLE_LINES, classes=TABLE_LINES)
@example(images=["1 001.Red"], labels=["1 1"], split=["1 1"], classes=["1 001.Red"])  # a folder, not an image
def test_cub_tables_load_consistently_or_say_why(images, labels, split, classes):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "CUB_200_2011"
        for name, rgb in (("001.Red", "red"), ("002.Blue", "blue")):
            source = colour_images(Path(folder) / "raw", {"train": 2}, colours={rgb: (200, 30, 30)})
            shutil.copytree(source / "train" / rgb, root / "images" / name)
        for name, lines in (
            ("images.txt", images),
            ("image_class_labels.txt", labels),
            ("train_test_split.txt", split),
            ("classes.txt", classes),
        ):
            (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            splits = load_dataset(f"cub:{root}")
        except DataError as error:
            assert str(root) in str(error)
            return
        for sample in splits.train + splits.test:
            assert sample.path.resolve().is_relative_to(root.resolve()) and sample.path.is_file()
            assert 0 <= sample.label < len(splits.classnames)


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return load_backbone("micro-vit")


@FUZZ
@given(names=st.lists(st.text(max_size=40), min_size=1, max_size=3), n_ctx=st.integers(1, 14))
def test_any_class_name_makes_a_prompt_that_fits(micro, names, n_ctx):
    ids = micro.tokenize(names)
    assert ids.shape == (len(names), micro.context_length)
    assert ((ids == micro.tokenizer.eot_token_id).sum(dim=1) == 1).all()  # truncation keeps [EOS]
    try:
        ctx = torch.randn(n_ctx, micro.text_width)
        features = micro.encode_prompted_text(ctx, names)
    except ClipadaptError as error:  # too many context vectors for the context length
        assert n_ctx > micro.context_length - 4 and "context" in str(error)
        return
    assert features.shape == (len(names), micro.embed_dim) and torch.isfinite(features).all()
