"""Trained methods as classifiers: every method trained on the micro model, saved, reloaded in a new process and
run there through the Python API, `clipadapt predict` and its ONNX export under onnxruntime, each giving the logits
of the method in memory and the accuracy of its metrics.json; then the errors of bad input."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import COLOURS, colour_images, flip_last_byte
from PIL import Image

from clipadapt import Classifier, ClipadaptError, adapt, load_backbone, load_classifier
from clipadapt.classifier import predict_to_file
from clipadapt.cli import main
from clipadapt.data import base_new_split, find_images, load_dataset
from clipadapt.errors import CheckpointError, DataError
from clipadapt.methods import METHODS, build_method
from clipadapt.protocols import RunContext, classifier_of, run_protocol, write_metrics

# Each method with a small budget and the protocol it is trained under (coop+ship needs classes without data).
METHOD_RUNS = {
    "zeroshot": ({}, "full", None),
    "linear_probe": ({}, "fewshot", 2),
    "coop": ({"n_ctx": 4, "epochs": 3}, "fewshot", 2),
    "cocoop": ({"n_ctx": 2, "epochs": 1}, "fewshot", 2),
    "clip_adapter": ({"epochs": 2}, "fewshot", 2),
    "tip_adapter": ({"finetune": True, "epochs": 2, "select": "last", "beta_steps": 4, "alpha_steps": 4}, "fewshot", 2),
    "coop+ship": ({"n_ctx": 4, "epochs": 2, "ship.epochs": 2, "ship.synthetic_per_class": 8}, "base2new", 2),
    "mpfgvc": ({"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 8}, "full", None),
    "finetune": ({"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 8}, "full", None),
}

# Run in a new process: the classifier rebuilt from its run folder alone, scored through the API, `clipadapt
# predict` and the exported ONNX file under onnxruntime, preprocessed by docs/predict.md's own `preprocess` (PIL and
# numpy, from the JSON beside the export).
NEW_PROCESS = r"""
import json, sys
import numpy as np, onnxruntime, torch
from PIL import Image
from clipadapt import load_classifier
from clipadapt.cli import main

run, images, out, preprocess_code = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
classifier = load_classifier(run)
api = classifier.logits(images).tolist()
assert main(["predict", run, *images, "--out", out + "/predictions.csv", "--top", "99", "--no-progress"]) == 0
assert main(["export", run, "--out", out + "/model.onnx"]) == 0
steps = json.load(open(out + "/model.json"))["preprocessing"]
exec(preprocess_code)
session = onnxruntime.InferenceSession(out + "/model.onnx")
onnx = session.run(None, {"images": np.stack([preprocess(p) for p in images])})[0].tolist()
print(json.dumps({"api": api, "onnx": onnx, "classnames": classifier.classnames}))
"""


def documented_preprocess() -> str:
    """The `preprocess` function of docs/predict.md's onnxruntime example."""
    text = (Path(__file__).parents[1] / "docs" / "predict.md").read_text()
    match = re.search(r"^def preprocess\(path\):\n(?:    .*\n|\n(?=    ))+", text, re.M)
    assert match, "docs/predict.md no longer defines preprocess(path)"
    return match.group(0)


def odd_shaped(image: Path, folder: Path) -> list[str]:
    """`image` at two shapes that are not square (resized by the shorter side, then centre-cropped)."""
    shapes = []
    for width, height in ((61, 37), (40, 90)):
        shapes.append(str(folder / f"{width}x{height}.png"))
        Image.open(image).convert("RGB").resize((width, height)).save(shapes[-1])
    return shapes


@pytest.fixture(scope="module")
def colour_run(colour_world):
    root, weights = colour_world
    return root, weights, load_dataset(f"imagefolder:{root}")


def test_every_method_is_covered_here():
    assert set(METHODS) | {"coop+ship"} == set(METHOD_RUNS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHOD_RUNS))
def test_a_trained_method_reloads_in_a_new_process_and_predicts_and_exports_the_same(
    name, colour_run, tmp_path, one_thread
):
    root, weights, splits = colour_run
    values, protocol, shots = METHOD_RUNS[name]
    backbone = load_backbone(None, weights)
    torch.manual_seed(1)
    method = build_method(name, backbone, values, seed=1)
    run = tmp_path / "run"
    ctx = RunContext(backbone, cache_dir=tmp_path / "cache", out_dir=run, progress=False)
    numbers = run_protocol(protocol, method, ctx, splits, seed=1, shots=shots)
    write_metrics(run, numbers)
    trained = base_new_split(splits)[0] if protocol == "base2new" else splits  # the classes it was trained on
    tests = [str(sample.path) for sample in trained.test]
    images = tests + odd_shaped(trained.test[0].path, tmp_path)
    in_memory = classifier_of(method, backbone, trained, seed=1).logits(images)

    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", NEW_PROCESS, str(run), json.dumps(images), str(out), documented_preprocess()],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert reloaded["classnames"] == trained.classnames
    torch.testing.assert_close(torch.tensor(reloaded["api"]), in_memory, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(reloaded["onnx"]), in_memory, atol=1e-4, rtol=1e-4)
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["path"] for row in rows] == images
    probabilities = in_memory.softmax(dim=-1)
    for row, expected in zip(rows, probabilities):
        predicted = {row[f"label_{i}"]: float(row[f"probability_{i}"]) for i in range(1, len(trained.classnames) + 1)}
        wanted = dict(zip(trained.classnames, expected.tolist()))
        assert predicted == pytest.approx(wanted, abs=1e-5)

    # The accuracy on the test split is the one metrics.json holds.
    labels = torch.tensor([sample.label for sample in trained.test])
    accuracy = 100.0 * (torch.tensor(reloaded["api"][: len(tests)]).argmax(dim=-1) == labels).float().mean().item()
    recorded = json.loads((run / "metrics.json").read_text())
    assert accuracy == pytest.approx(recorded["base_accuracy" if protocol == "base2new" else "accuracy"])


def test_the_api_adapts_predicts_renames_and_saves(colour_run, tmp_path, one_thread):
    root, weights, splits = colour_run
    clf = adapt(
        "coop", f"imagefolder:{root}", shots=2, seed=1, pretrained=weights, progress=False, cache=tmp_path, n_ctx=4
    )
    assert isinstance(clf, Classifier) and clf.classnames == list(splits.classnames)
    red = sorted((root / "test" / "red").glob("*.png"))
    pil = Image.open(red[0])
    tensor = clf.transform()(pil.convert("RGB"))
    logits = clf.logits([red[0], pil, tensor, tensor[None]])
    assert logits.shape == (4, len(splits.classnames))
    torch.testing.assert_close(logits[1:], logits[0].expand(3, -1))  # a path, a PIL image, tensors: one image
    assert clf.predict(red) == ["red"] * len(red)  # the colour world's model knows its colours
    proba = clf.predict_proba(red)
    torch.testing.assert_close(proba.sum(dim=-1), torch.ones(len(red)))
    top = clf.topk(red[:1], k=2)[0]
    assert top[0][0] == "red" and top[0][1] >= top[1][1] and len(top) == 2
    # New class names, no training: a shared context scores any names.
    renamed = clf.with_classes(["purple", "red", "orange"])
    assert renamed.predict(red) == ["red"] * len(red)
    path = renamed.save(tmp_path / "mine.clipadapt.safetensors")
    again = load_classifier(path)
    assert again.classnames == ["purple", "red", "orange"]
    torch.testing.assert_close(again.logits(red), renamed.logits(red))


def test_a_closed_set_method_refuses_other_class_names(colour_run, tmp_path):
    root, weights, _ = colour_run
    clf = adapt("linear_probe", f"imagefolder:{root}", pretrained=weights, progress=False, cache=tmp_path)
    with pytest.raises(ClipadaptError, match="linear_probe scores only the 4 classes it was trained on"):
        clf.with_classes(["purple"])


@pytest.fixture(scope="module")
def coop_run(colour_world, tmp_path_factory):
    """A `clipadapt run coop` folder trained with seeds 1 and 2."""
    root, weights = colour_world
    run = tmp_path_factory.mktemp("coop-run")
    argv = ["run", "coop", "--dataset", f"imagefolder:{root}", "--protocol", "fewshot", "--shots", "2"]
    argv += ["--seeds", "1,2", "--pretrained", str(weights), "--out", str(run), "--no-progress", "n_ctx=4", "epochs=2"]
    argv += ["--cache", str(tmp_path_factory.mktemp("cache"))]
    assert main(argv) == 0
    return run


def test_predict_writes_csv_and_json_lists_unreadable_images_and_picks_a_seed(coop_run, colour_world, tmp_path, capsys):
    root, _ = colour_world
    (tmp_path / "broken.png").write_bytes((root / "test" / "red" / "0.png").read_bytes()[:60])
    (tmp_path / "empty.jpg").write_bytes(b"")
    images = [str(root / "test" / "red"), str(tmp_path / "broken.png"), str(tmp_path / "empty.jpg")]
    assert main(["predict", str(coop_run), *images, "--out", str(tmp_path / "p.csv")]) == 2  # two seeds: which?
    assert "holds 2 classifiers" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
    out = tmp_path / "p.json"
    assert main(["predict", str(coop_run), *images, "--seed", "2", "--out", str(out), "--top", "2"]) == 0
    records = json.loads(out.read_text())
    assert len(records) == 6 + 2
    bad = {Path(r["path"]).name: r["error"] for r in records if r["error"]}
    assert set(bad) == {"broken.png", "empty.jpg"} and "empty" in bad["empty.jpg"]
    good = [r for r in records if not r["error"]]
    assert all(len(r["top"]) == 2 for r in good)
    assert [r["top"][0]["label"] for r in good] == load_classifier(coop_run, seed=2).predict([r["path"] for r in good])
    assert "classified 6 images with coop over 4 classes (2 unreadable" in capsys.readouterr().out
    assert not out.with_name("p.json.partial").exists()


def test_predict_resumes_from_its_partial_output_and_discards_another_classifiers(coop_run, colour_world, tmp_path):
    root, _ = colour_world
    classifier = load_classifier(coop_run, seed=1)
    images = find_images([root / "test" / "blue"])
    out = tmp_path / "p.csv"
    partial = tmp_path / "p.csv.partial"
    made_with = {"classifier": classifier.checksum, "classes": classifier.classnames, "k": 3}
    done = {"path": str(images[0]), "top": [{"label": "from before", "probability": 1.0}], "error": None}
    partial.write_text(json.dumps(made_with) + "\n" + json.dumps(done) + "\n" + '{"path": "cut off')
    predict_to_file(classifier, images, out, k=3, progress=False)
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["label_1"] == "from before" and all(row["label_1"] == "blue" for row in rows[1:])
    assert len(rows) == len(images) and not partial.exists()
    partial.write_text(json.dumps({**made_with, "classifier": "another"}) + "\n" + json.dumps(done) + "\n")
    predict_to_file(classifier, images, out, k=3, progress=False)
    assert all(row["label_1"] == "blue" for row in csv.DictReader(out.open()))


def test_predict_and_load_errors_are_one_line_and_write_nothing(coop_run, colour_world, tmp_path, capsys):
    root, weights = colour_world
    (tmp_path / "empty").mkdir()
    (classifier,) = sorted(coop_run.glob("train-*seed1/coop.safetensors"))
    out = tmp_path / "p.csv"

    def error(*argv: str) -> str:
        assert main(["predict", *argv, "--out", str(out)]) == 2
        assert not out.exists()
        return capsys.readouterr().err.strip()

    assert error(str(classifier), str(tmp_path / "empty")).endswith(
        "holds no images (.bmp .gif .jpeg .jpg .png .tif .tiff .webp)"
    )
    assert "matches no image file" in error(str(classifier), str(tmp_path / "nothing-*.png"))
    lp = tmp_path / "lp"
    argv = ["run", "linear_probe", "--dataset", f"imagefolder:{root}", "--pretrained", str(weights), "--no-progress"]
    assert main([*argv, "--out", str(lp), "--cache", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    assert "cannot score other class names" in error(str(lp), str(root / "test"), "--classes", "purple,red")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(classifier.read_bytes())
    flip_last_byte(damaged)
    message = error(str(damaged), str(root / "test"))
    assert message.count("\n") == 0 and "is damaged: its contents do not match the checksum" in message
    other = tmp_path / "other.safetensors"
    torch.manual_seed(5)
    load_backbone("micro-vit").save(other)
    message = error(str(classifier), str(root / "test"), "--pretrained", str(other))
    assert "was trained on backbone" in message and "this backbone is micro-vit" in message


def test_a_classifier_without_its_backbone_says_how_to_give_it(colour_world, tmp_path, capsys):
    root, weights = colour_world
    moved = tmp_path / "weights.safetensors"
    moved.write_bytes(Path(weights).read_bytes())
    clf = adapt("zeroshot", f"imagefolder:{root}", pretrained=moved, progress=False, cache=tmp_path)
    path = clf.save(tmp_path / "zs.safetensors")
    moved.unlink()
    with pytest.raises(ClipadaptError, match="cannot load the backbone it was trained on.*pass that backbone"):
        load_classifier(path)
    assert load_classifier(path, backbone=load_backbone(None, weights)).predict([root / "test/red/0.png"]) == ["red"]


def test_find_images_reads_files_folders_globs_and_csv_lists(tmp_path):
    root = colour_images(tmp_path / "c", per_split={"test": 2}, colours=dict(list(COLOURS.items())[:2]))
    listed = tmp_path / "list.csv"
    listed.write_text("label,path\nx,c/test/red/1.png\ny,c/test/red/0.png\n")
    found = find_images([str(listed), str(root / "test" / "green" / "*.png"), str(root / "test")])
    names = [str(p.relative_to(root)) for p in found]
    assert names == ["test/red/1.png", "test/red/0.png", "test/green/0.png", "test/green/1.png"]  # each once
    bare = tmp_path / "bare.csv"
    bare.write_text(f"{root / 'test/red/0.png'}\n")
    assert find_images([bare]) == [root / "test/red/0.png"]
    (tmp_path / "holey.csv").write_text("path,note\nc/test/red/0.png,\n\n,forgot the path\n")
    with pytest.raises(DataError, match="holey.csv: line 4 has no path"):
        find_images([tmp_path / "holey.csv"])


def test_a_weights_file_of_another_kind_is_no_classifier(colour_world, tmp_path):
    _, weights = colour_world
    with pytest.raises(CheckpointError, match="holds no clipadapt method weights"):
        load_classifier(weights)
    with pytest.raises(ClipadaptError, match="neither a classifier file nor a run folder"):
        load_classifier(tmp_path / "missing")


def test_an_edited_header_is_refused_even_without_weights(colour_world, tmp_path):
    root, weights = colour_world
    clf = adapt("zeroshot", f"imagefolder:{root}", pretrained=weights, progress=False, cache=tmp_path)
    path = clf.save(tmp_path / "zs.safetensors")
    data = path.read_bytes()
    assert b"yellow" in data
    path.write_bytes(data.replace(b"yellow", b"purple"))  # same length: the header still parses
    with pytest.raises(CheckpointError, match="is damaged"):
        load_classifier(path, backbone=clf.backbone)


def test_rows_of_a_classifier_not_loaded_from_a_file_are_never_reused(colour_run, tmp_path):
    root, weights, _ = colour_run
    clf = adapt("zeroshot", f"imagefolder:{root}", pretrained=weights, progress=False, cache=tmp_path)
    images = find_images([root / "test" / "blue"])
    made_with = {"classifier": None, "classes": clf.classnames, "k": 2}
    done = {"path": str(images[0]), "top": [{"label": "another", "probability": 1.0}], "error": None}
    (tmp_path / "p.csv.partial").write_text(json.dumps(made_with) + "\n" + json.dumps(done) + "\n")
    predict_to_file(clf, images, tmp_path / "p.csv", k=2, progress=False)
    assert all(row["label_1"] != "another" for row in csv.DictReader((tmp_path / "p.csv").open()))


def test_a_file_name_that_is_not_utf8_is_classified_and_written_back_as_its_bytes(coop_run, colour_world, tmp_path):
    root, _ = colour_world
    odd = os.fsencode(tmp_path) + b"/caf\xe9.png"
    with open(odd, "wb") as f:
        f.write((root / "test" / "red" / "0.png").read_bytes())
    out = tmp_path / "p.csv"
    assert main(["predict", str(coop_run), str(tmp_path), "--seed", "1", "--out", str(out), "--no-progress"]) == 0
    assert odd in out.read_bytes()


def test_two_ship_classifiers_in_one_folder_keep_their_own_generators(colour_run, tmp_path, one_thread):
    root, weights, splits = colour_run
    values = {"n_ctx": 4, "epochs": 1, "ship.epochs": 1, "ship.synthetic_per_class": 4}
    saved = []
    for seed in (1, 2):
        clf = adapt(
            "coop+ship", f"imagefolder:{root}", shots=2, seed=seed, pretrained=weights, progress=False,
            cache=tmp_path, unseen_classnames=["purple"], **values,
        )  # fmt: skip
        saved.append(clf.save(tmp_path / f"seed{seed}.safetensors"))
    generators = [path.with_name(f"{path.stem}.ship.safetensors") for path in saved]
    assert all(g.is_file() for g in generators) and generators[0].read_bytes() != generators[1].read_bytes()
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "copy.safetensors").write_bytes(saved[0].read_bytes())  # without its generator: scores, saves no SHIP
    copy = load_classifier(alone / "copy.safetensors")
    assert copy.predict([root / "test/red/0.png"]) == load_classifier(saved[0]).predict([root / "test/red/0.png"])
    copy.save(alone / "again.safetensors")
    assert not list(alone.glob("*.ship.safetensors"))


def test_csv_lists_without_a_path_column_or_rows_are_refused(tmp_path):
    (tmp_path / "labels.csv").write_text("label,img\ncat,a.png\n")
    with pytest.raises(DataError, match="first line \\(label,img\\) is no image path and names no path column"):
        find_images([tmp_path / "labels.csv"])
    (tmp_path / "header.csv").write_text("path\n")
    with pytest.raises(DataError, match="header.csv lists no images"):
        find_images([tmp_path / "header.csv"])


def test_images_the_api_cannot_take_are_named(colour_run, tmp_path):
    root, weights, _ = colour_run
    clf = adapt("zeroshot", f"imagefolder:{root}", pretrained=weights, progress=False, cache=tmp_path)
    with pytest.raises(ClipadaptError, match="no images to classify"):
        clf.predict(iter([]))
    with pytest.raises(ClipadaptError, match="a torch.uint8 tensor is not preprocessed"):
        clf.predict(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ClipadaptError, match="a tensor of shape \\(32, 32, 3\\)"):
        clf.predict(torch.zeros(32, 32, 3))


def test_a_damaged_classifier_in_a_run_folder_is_named(coop_run, tmp_path):
    run = tmp_path / "run"
    (run / "train-x-seed1").mkdir(parents=True)
    (classifier,) = sorted(coop_run.glob("train-*seed1/coop.safetensors"))
    (run / "train-x-seed1" / "coop.safetensors").write_bytes(classifier.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="holds no readable classifier: cannot read .*coop.safetensors"):
        load_classifier(run)


def test_the_preprocessing_of_an_export_is_plain_json_whatever_the_tower_gives():
    from torchvision import transforms

    from clipadapt.export import describe_preprocessing

    timm_like = transforms.Compose(
        [
            transforms.Resize(40, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])),  # timm's: tensors
        ]
    )
    steps = json.loads(json.dumps(describe_preprocessing(timm_like)))
    assert steps["resize"] == {"size": 40, "mode": "shorter side to size, aspect kept", "interpolation": "bilinear"}
    assert steps["center_crop"] == [32, 32] and steps["mean"] == [0.5] * 3 and steps["std"] == [0.25] * 3
    with pytest.raises(ClipadaptError, match="cannot describe the preprocessing step"):
        describe_preprocessing(transforms.Compose([transforms.RandomHorizontalFlip()]))
