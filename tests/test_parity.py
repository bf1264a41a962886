"""`fewshot_sampler=dassl` against the draws of Dassl's own `generate_fewshot_dataset`, recorded by
parity/dassl_fewshot.py (which ran the official function), and CoOp's saved few-shot files read as plain data."""

import importlib.util
import json
import math
import pickle
import re
import shutil
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

from clipadapt.cli import main
from clipadapt.data import base_new_split, fewshot, load_dataset, read_coop_fewshot
from clipadapt.errors import DataError
from clipadapt.protocols import RunContext, fewshot_subset

PARITY = Path(__file__).parent.parent / "parity"
RECORD = json.loads((PARITY / "dassl_fewshot.json").read_text())


def load_parity_script():
    spec = importlib.util.spec_from_file_location("dassl_fewshot", PARITY / "dassl_fewshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """The recorded draws' data set (CoOp's layout), written again here; its root."""
    root = tmp_path_factory.mktemp("layout")
    load_parity_script().write_layout(root)
    return root


def relative(samples, root: Path) -> list[str]:
    return [Path(s.path).relative_to(root).as_posix() for s in samples]


def test_dassl_sampler_draws_the_images_dassl_draws_in_its_order(layout, tmp_path):
    splits = load_dataset(f"coop:Layout:{layout}")
    assert len(RECORD["layout"]) == 15  # shots 1-16 x seeds 1-3
    for key, drawn in RECORD["layout"].items():
        shots, seed = (int(part.split("_")[1]) for part in key.split("-"))
        subset = fewshot(splits, shots, seed, sampler="dassl")
        assert relative(subset.train, layout) == drawn["train"], key
        assert relative(subset.val, layout) == drawn["val"], key
        assert subset.test == splits.test
    # The cases Dassl treats apart: a class with fewer images than shots keeps all of them (dogwood: 3), a class
    # without validation images has none (elm), and the classes come in the order they first appear in the file.
    sixteen = RECORD["layout"]["shot_16-seed_1"]
    assert sum(path.startswith("images/dogwood/") for path in sixteen["train"]) == 3
    assert not any(path.startswith("images/elm/") for path in sixteen["val"])
    assert sixteen["train"][0].startswith("images/elm/")  # elm (label 4) is first in the shuffled file
    # Cached, the same subset comes back, under a name of its own (the default sampler's subsets are other images).
    cached = fewshot(splits, 4, 2, cache_dir=tmp_path, sampler="dassl")
    assert len(list(tmp_path.glob("Layout/shot_4-seed_2-dassl-*.json"))) == 1
    again = fewshot(splits, 4, 2, cache_dir=tmp_path, sampler="dassl")
    assert relative(again.train, layout) == relative(cached.train, layout) == RECORD["layout"]["shot_4-seed_2"]["train"]
    with pytest.raises(DataError, match="few-shot sampler must be one of clipadapt, dassl"):
        fewshot(splits, 4, 2, sampler="coop")


def test_dassl_base_to_new_draws_over_every_class_then_keeps_the_base_half(layout):
    splits = load_dataset(f"coop:Layout:{layout}")
    base, _ = base_new_split(splits)
    ctx = RunContext(backbone=None, fewshot_sampler="dassl")
    subset = fewshot_subset(ctx, base, 8, 3, whole=splits)
    base_names = splits.classnames[: math.ceil(len(splits.classnames) / 2)]
    drawn = RECORD["layout"]["shot_8-seed_3"]
    for split, samples in (("train", subset.train), ("val", subset.val)):
        expected = [p for p in drawn[split] if p.split("/")[1] in base_names]
        assert relative(samples, layout) == expected
    # Drawn on the base half alone the val images differ (the draw's stream skips the new classes' train images).
    alone = fewshot(base, 8, 3, sampler="dassl")
    assert relative(alone.val, layout) != relative(subset.val, layout)


def test_coop_fewshot_files_are_read_as_plain_data(layout, tmp_path):
    splits = load_dataset(f"coop:Layout:{layout}")
    # CoOp's own pickle of Dassl's Datum objects, written on another machine (absolute paths under another root).
    train, val = read_coop_fewshot(PARITY / "coop_shot_4-seed_2.pkl", splits)
    assert relative(train, layout) == RECORD["layout"]["shot_4-seed_2"]["train"]
    assert relative(val, layout) == RECORD["layout"]["shot_4-seed_2"]["val"]
    # Where the data set's folder holds CoOp's file, the dassl sampler reads it as CoOp does: seed 2's draw, filed
    # under seed 3, comes back for seed 3.
    copy = tmp_path / "copy"
    shutil.copytree(layout, copy)
    (copy / "split_fewshot").mkdir()
    shutil.copy(PARITY / "coop_shot_4-seed_2.pkl", copy / "split_fewshot" / "shot_4-seed_3.pkl")
    moved = load_dataset(f"coop:Layout:{copy}")
    assert relative(fewshot(moved, 4, 3, sampler="dassl").train, copy) == RECORD["layout"]["shot_4-seed_2"]["train"]
    ours = fewshot(moved, 4, 3, allow_repeat=True)  # the default sampler draws, whatever files lie there
    assert relative(ours.train, copy) != RECORD["layout"]["shot_4-seed_2"]["train"]

    class Exploit:
        def __reduce__(self):
            return (print, ("ran",))

    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(pickle.dumps({"train": [Exploit()], "val": []}))
    with pytest.raises(DataError, match=r"hostile.pkl.*refusing builtins.print"):
        read_coop_fewshot(hostile, splits)


def test_coop_fewshot_files_with_foreign_images_or_labels_are_refused(layout, tmp_path, monkeypatch):
    splits = load_dataset(f"coop:Layout:{layout}")
    # Dassl's Datum as a pickle names it: the module and class, the fields as instance state.
    module = types.ModuleType("dassl.data.datasets.base_dataset")
    datum_class = type("Datum", (), {"__module__": module.__name__})
    module.Datum = datum_class
    for package in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def coop_file(name: str, impath: str, label: int) -> Path:
        datum = datum_class()
        datum.__dict__.update(_impath=impath, _label=label, _domain=0, _classname="ash")
        path = tmp_path / name
        path.write_bytes(pickle.dumps({"train": [datum], "val": []}, protocol=pickle.HIGHEST_PROTOCOL))
        return path

    train, _ = read_coop_fewshot(coop_file("good.pkl", "/elsewhere/data/images/ash/3.png", 0), splits)
    assert relative(train, layout) == ["images/ash/3.png"]
    with pytest.raises(DataError, match=r"foreign.pkl, train\[0\]: /x/images/oak/3.png names no image of data set"):
        read_coop_fewshot(coop_file("foreign.pkl", "/x/images/oak/3.png", 0), splits)
    with pytest.raises(DataError, match=r"relabelled.pkl, train\[0\]: .* is labelled 5 \('ash'\) there, 0 \('ash'\)"):
        read_coop_fewshot(coop_file("relabelled.pkl", "/x/images/ash/3.png", 5), splits)
    (tmp_path / "cut.pkl").write_bytes((tmp_path / "good.pkl").read_bytes()[:20])
    with pytest.raises(DataError, match="cannot read CoOp few-shot file .*cut.pkl"):
        read_coop_fewshot(tmp_path / "cut.pkl", splits)


def test_run_with_the_dassl_sampler_records_it_and_trains_on_dassls_base_images(layout, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["run", "linear_probe", "--dataset", f"coop:Layout:{layout}", "--model", "micro-vit"]
    argv += ["--protocol", "base2new", "--shots", "2", "--fewshot-sampler", "dassl"]
    assert main([*argv, "--cache", str(cache), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["fewshot_sampler"] == "dassl"
    (cached,) = cache.glob("splits/Layout/shot_2-seed_1-dassl-*.json")  # drawn over every class, as CoOp draws
    assert [entry[0] for entry in json.loads(cached.read_text())["train"]] == RECORD["layout"]["shot_2-seed_1"]["train"]


def test_the_parity_page_shows_the_recorded_draws():
    page = (Path(__file__).parent.parent / "docs" / "parity.md").read_text()
    rows = re.findall(r"^\| (\d) \| (\d+) \| (\d+) \| (yes|no) \|$", page, flags=re.M)
    recorded = [
        (
            key.split("seed_")[1],
            str(found["train images"]),
            str(found["shared with clipadapt's sampler"]),
            "yes" if found["fewshot_sampler=dassl draws the same, in order"] else "no",
        )
        for key, found in RECORD["world:objects"].items()
    ]
    assert rows == recorded and len(rows) == 3
    assert f"Dassl {RECORD['dassl_commit'][:7]}, Python {RECORD['python']}" in page


def test_the_parity_page_shows_the_recorded_equivalence():
    page = (Path(__file__).parent.parent / "docs" / "parity.md").read_text()
    found = json.loads((PARITY / "equivalence.json").read_text())

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    rows = [
        f"| image features ({found['images']} {found['dataset']} test images) | "
        f"{found['image features, max abs difference']:.1e} | {found['image features, max abs value']:.2f} |",
        f'| text features ({found["classes"]} prompts "a photo of a {{}}."; token ids equal: '
        f"{yes(found['token ids equal'])}) | {found['text features, max abs difference']:.1e} | "
        f"{found['text features, max abs value']:.2f} |",
        f"| zero-shot logits (predictions equal: {yes(found['zero-shot predictions equal'])}) | "
        f"{found['zero-shot logits, max abs difference']:.1e} | |",
    ]
    compared = (
        ("coop", "CoOp", "the context", ""),
        ("cocoop", "CoCoOp", "the context and meta-net", ""),
        ("clip_adapter", "CLIP-Adapter", "the adapter", ""),
        ("ship", "SHIP", "the encoder, the generator and the prompt vectors", " (the VAE's negative ELBO)"),
    )
    for method, name, learned, loss in compared:
        numbers = found[method]
        after = f"parameters after {numbers['steps']} steps, max abs difference"
        batch = f"one batch of {numbers['batch']} training images"
        if "logits, max abs difference" in numbers:
            rows.append(f"| {name} logits, {batch} | {numbers['logits, max abs difference']:.1e} | |")
        else:
            loss += f", {batch}"
        rows += [
            f"| {name} loss{loss} | {numbers['loss, abs difference']:.1e} | {numbers['loss']:.3f} |",
            f"| {name} gradient ({learned}) | {numbers['gradient, max abs difference']:.1e} | "
            f"{numbers['gradient, max abs value']:.2f} |",
            f"| {name} parameters after {numbers['steps']} {numbers['optimizer'].split()[0]} steps | "
            f"{numbers[after]:.1e} | |",
        ]
        # Equal up to float32 rounding: what the page says.
        assert numbers["gradient, max abs difference"] < 1e-4 * numbers["gradient, max abs value"]
    tip = found["tip_adapter"]
    scales = [key for key in tip if key.startswith("scale ")]
    for key, label in zip(scales, ("100, the official constant (`clip_scale=100`)", "the model's learned one")):
        numbers = tip[key]
        official = ", ".join(f"{v:g}" for v in numbers["official: beta, alpha, val accuracy"])
        beta, alpha, val = numbers["ours: beta, alpha, val accuracy"]
        label = label if key == "scale 100" else f"{key.split()[1]}, {label} (the default)"
        rows.append(
            f"| {label} | {official} | {beta:.3f}, {alpha:.3f}, {val:.2f} | "
            f"{numbers['official zero-shot test accuracy']:.2f} | {numbers['official test accuracy']:.2f} | "
            f"{numbers['ours test accuracy']:.2f} |"
        )
        # The official prints two decimals: the same choice and accuracy, to its rounding.
        assert abs(numbers["official test accuracy"] - numbers["ours test accuracy"]) < 0.01
        assert all(
            abs(a - b) < 0.01 for a, b in zip(numbers["official: beta, alpha, val accuracy"], (beta, alpha, val))
        )
    probe = found["linear_probe"]
    for side, key in (("lpclip (official)", "official"), ("clipadapt", "ours")):
        coarse = ", ".join(f"{v:.2f}" for v in probe[f"{key}: coarse val accuracies"])
        c, test_accuracy = probe[f"{key}: C, test accuracy"]
        rows.append(f"| {side} | {coarse} | {c:.4g} | {test_accuracy:.2f} |")
    assert abs(probe["official: C, test accuracy"][1] - probe["ours: C, test accuracy"][1]) < 0.01
    missing = [row for row in rows if row not in page]
    assert not missing, missing
    assert re.search(rf"CoOp\s+{found['coop_commit'][:7]}, torch {found['torch'].split('+')[0]}", page)
    assert found["token ids equal"] and found["zero-shot predictions equal"]
    assert found["image features, max abs difference"] < 1e-4


def test_both_samplers_refuse_a_class_without_train_images(layout):
    splits = load_dataset(f"coop:Layout:{layout}")
    emptied = replace(splits, train=[s for s in splits.train if s.label != 1])  # birch keeps no train image
    for sampler in ("clipadapt", "dassl"):
        with pytest.raises(DataError, match="class 'birch' \\(label 1\\) of data set Layout has no train images"):
            fewshot(emptied, 2, 1, sampler=sampler, allow_repeat=True)


def load_outcome_script():
    spec = importlib.util.spec_from_file_location("outcome", PARITY / "outcome.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["outcome"] = module  # its dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    return module


def test_the_outcome_runs_read_the_same_images_on_both_sides(layout, tmp_path):
    """The data set written in CoOp's DTD layout for CoOp's reader is, read back by clipadapt's coop loader, the same
    classes and the same images in every split."""
    source = load_dataset(f"coop:Layout:{layout}")
    root = load_outcome_script().write_coop_layout(f"coop:Layout:{layout}", tmp_path / "data")
    written = load_dataset(f"coop:DescribableTextures:{root}")
    assert written.classnames == source.classnames
    for split in ("train", "val", "test"):
        ours = [(s.path.relative_to(written.root), s.label) for s in written.split(split)]
        theirs = [(s.path.relative_to(source.root), s.label) for s in source.split(split)]
        assert ours == theirs and ours


def test_the_parity_page_shows_the_recorded_outcomes():
    page = (Path(__file__).parent.parent / "docs" / "parity.md").read_text()
    record = json.loads((PARITY / "outcome.json").read_text())
    rows = load_outcome_script().page_rows(record)
    missing = [row for row in rows if row not in page]
    assert not missing, missing
    ran = {method: set(found["results"]) for method, found in record["methods"].items()}
    assert ran == {"coop": {"world:objects", "world:textures"}, "cocoop": {"world:textures"}}
    for found in record["methods"].values():
        assert all(sorted(seeds) == ["1", "2", "3"] for seeds in found["results"].values())
    torch_version = record["machine"].split("torch ")[1].split("+")[0]
    assert f"CoOp {record['coop'][:7]}, Dassl {record['dassl'][:7]}, torch {torch_version}" in page
