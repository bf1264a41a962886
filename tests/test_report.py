"""`clipadapt report`: tables and plots from run folders, and the page as a browser renders it."""

import json
import os
import re
import shutil
import subprocess
from urllib.parse import quote

import numpy as np
import pytest
import torch
from PIL import Image

from clipadapt.cli import main
from clipadapt.errors import ClipadaptError
from clipadapt.features import FeatureSet
from clipadapt.methods.addons.ship import project_2d, save_synthesis_sample
from clipadapt.methods.mpfgvc import box_in_crop, model_input
from clipadapt.paths import safe_name
from clipadapt.report import build_tables, fewshot_points, find_runs, write_report


def write_run(folder, metrics):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def badge_image(path, size=(128, 64), box=(40, 8, 56, 24)):
    pixels = np.full((size[1], size[0], 3), 200, dtype=np.uint8)
    pixels[box[1] : box[3], box[0] : box[2]] = (255, 0, 0)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def runs_folder(tmp_path):
    """Runs of every protocol as `clipadapt run` writes them, a SHIP feature sample and MP-FGVC overlay examples."""
    root = tmp_path / "runs"
    write_run(
        root / "coop-b2n",
        {
            "method": "coop",
            "dataset": "world:objects",
            "protocol": "base2new",
            "shots": 16,
            "seed": [1, 2, 3],
            "training": {"steps": 8},
            "base_accuracy": 64.71,
            "base_accuracy_std": 0.84,
            "new_accuracy": 75.1,
            "new_accuracy_std": 1.2,
            "harmonic_mean": 69.52,
            "attribute_accuracy": {"base": {"colour": 100.0}, "new": {"colour": 98.54, "shape": 74.8}},
        },
    )
    write_run(
        root / "lp-b2n",
        {
            "method": "linear_probe",
            "dataset": "world:objects",
            "protocol": "base2new",
            "shots": 16,
            "seed": 1,
            "training": {},
            "base_accuracy": 57.7,
            "new_accuracy": None,
            "harmonic_mean": None,
        },
    )
    write_run(
        root / "ship-gzsl",
        {
            "method": "coop+ship",
            "dataset": "world:objects",
            "protocol": "gzsl",
            "seed": 1,
            "seen_accuracy": 60.0,
            "unseen_accuracy": 40.0,
            "harmonic_mean": 48.0,
            "synthesis": {
                "nearest_class_accuracy": 87.5,
                "cosine_to_own_class": 0.9,
                "cosine_to_other_classes": -0.03,
                "classes": 3,
            },
        },
    )
    write_run(
        root / "zs-cross",
        {
            "method": "zeroshot",
            "dataset": "world:objects",
            "protocol": "crossdataset",
            "seed": 1,
            "accuracy": 54.1,
            "average_target_accuracy": 19.65,
            "targets": {"world:patterns": {"accuracy": 13.5}, "world:scenes": {"accuracy": 25.8}},
        },
    )
    write_run(
        root / "ship-cross",
        {
            "method": "coop+ship",
            "dataset": "world:objects",
            "protocol": "crossdataset",
            "shots": 4,
            "seed": 1,
            "training": {},
            "accuracy": 54.0,
            "average_target_accuracy": 19.5,
            "targets": {
                "world:scenes": {
                    "accuracy": 25.1,
                    "synthesis": {
                        "nearest_class_accuracy": 41.5,
                        "cosine_to_own_class": 0.6,
                        "cosine_to_other_classes": 0.1,
                        "classes": 48,
                    },
                }
            },
        },
    )
    # Few-shot: seeds 1 and 2 in one run per shot count, seed 3 at 4 shots in another; seed 2 at 4 shots twice.
    for shots, accuracies in ((1, (30.0, 34.0)), (2, (40.0, 44.0)), (4, (50.0, 52.0))):
        write_run(
            root / f"lp-{shots}",
            {
                "method": "linear_probe",
                "dataset": "world:objects",
                "protocol": "fewshot",
                "shots": shots,
                "seed": [1, 2],
                "training": {},
                "accuracy": sum(accuracies) / 2,
                "per_seed": {"1": {"accuracy": accuracies[0]}, "2": {"accuracy": accuracies[1]}},
            },
        )
    write_run(
        root / "lp-4-more",
        {
            "method": "linear_probe",
            "dataset": "world:objects",
            "protocol": "fewshot",
            "shots": 4,
            "seed": [2, 3],
            "training": {},
            "accuracy": 52.5,
            "per_seed": {"2": {"accuracy": 51.0}, "3": {"accuracy": 54.0}},
        },
    )
    # The same method with another setting is another curve.
    for shots in (1, 2):
        write_run(
            root / f"lp-other-{shots}",
            {
                "method": "linear_probe",
                "dataset": "world:objects",
                "protocol": "fewshot",
                "shots": shots,
                "seed": 1,
                "config": {"c": 0.1},
                "training": {},
                "accuracy": 20.0 + shots,
            },
        )
    write_run(
        root / "zs-full",
        {
            "method": "zeroshot",
            "dataset": "world:objects",
            "protocol": "full",
            "seed": 1,
            "accuracy": 45.0,
            "per_class_accuracy": 44.0,
        },
    )
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=generator)
    labels = torch.arange(3).repeat_interleave(10)
    real = FeatureSet(centres[labels] + 0.1 * torch.randn(30, 16, generator=generator), labels)
    synthetic = FeatureSet(centres[labels] + 0.2 * torch.randn(30, 16, generator=generator), labels)
    save_synthesis_sample(
        root / "ship-gzsl" / "synthesis-WorldObjects.safetensors",
        real,
        synthetic,
        ["red star", "blue ring", "green cross"],
    )
    image = badge_image(tmp_path / "badge.png")
    examples = [
        {
            "path": str(image),
            "label": 0,
            "class": "red badge",
            "kept": [0, 5, 10, 15],
            "scores": [round(i / 15, 4) for i in range(16)],
            "parts": [box_in_crop([40, 8, 56, 24], 128, 64, 32)],
        }
    ]
    write_run(
        root / "mpfgvc",
        {
            "method": "mpfgvc",
            "dataset": "world:fine",
            "protocol": "full",
            "seed": 1,
            "training": {},
            "accuracy": 64.4,
            "per_class_accuracy": 64.0,
            "part_overlap": {
                "kept_tokens_on_part": 7.8,
                "random_tokens_on_part": 5.0,
                "part_patches_kept": 38.9,
                "random_part_patches_kept": 25.0,
                "tokens_kept": 4,
                "tokens": 16,
                "grid": 4,
                "image_size": 32,
                "resize": 32,
                "examples": examples,
            },
        },
    )
    comparison = root / "pretraining"
    comparison.mkdir()
    (comparison / "comparison.json").write_text(
        json.dumps(
            {
                "title": "CE vs CLIP vs UniCL",
                "row_label": "loss",
                "columns": ["zero-shot new", "linear probe new"],
                "rows": {
                    "unicl": {"zero-shot new": 69.0, "linear probe new": 62.3},
                    "ce": {"linear probe new": 65.6},
                    "seeds": {"zero-shot new": [70.25, 1.04]},
                },
            }
        )
    )
    return root


def test_tables_hold_every_protocol_with_the_seed_spread(runs_folder):
    runs, comparisons = find_runs([runs_folder])
    tables = {t.title: t for t in build_tables(runs, comparisons)}
    base2new = tables["Base-to-new"]
    assert base2new.columns[-2:] == ["new: colour", "new: shape"]
    assert ["coop", "world:objects", "16", "1,2,3", "64.7 ± 0.8", "75.1 ± 1.2", "69.5", "98.5", "74.8"] in base2new.rows
    assert ["linear_probe", "world:objects", "16", "1", "57.7", "-", "-", "-", "-"] in base2new.rows
    assert tables["Generalized zero-shot"].rows == [["coop+ship", "world:objects", "1", "60.0", "40.0", "48.0"]]
    cross = tables["Cross-data-set transfer"]
    assert cross.columns[5:7] == ["world:scenes", "world:patterns"]  # in the order the runs name them
    assert cross.rows == [
        ["coop+ship", "world:objects", "4", "1", "54.0", "25.1", "-", "19.5"],
        ["zeroshot", "world:objects", "-", "1", "54.1", "25.8", "13.5", "19.6"],
    ]
    assert tables["SHIP's synthesized features against the real test features of their classes"].rows == [
        ["coop+ship", "world:objects", "gzsl", "3", "87.5", "0.900", "-0.030"],
        ["coop+ship", "world:scenes", "crossdataset", "48", "41.5", "0.600", "0.100"],
    ]
    closed = tables["Accuracy on all classes (full and few-shot)"]
    assert ["mpfgvc", "world:fine", "full", "all", "1", "64.4", "64.0", "7.8 (5.0)", "38.9 (25.0)"] in closed.rows
    without_overlap = [run for run in runs if not run.metrics.get("part_overlap")]
    closed_alone = {t.title: t for t in build_tables(without_overlap)}["Accuracy on all classes (full and few-shot)"]
    assert closed_alone.columns == closed.columns[:-2] and all(len(row) == 7 for row in closed_alone.rows)
    assert tables["CE vs CLIP vs UniCL"].rows == [
        ["unicl", "69.0", "62.3"],
        ["ce", "-", "65.6"],
        ["seeds", "70.2 ± 1.0", "-"],
    ]  # [mean, std] over seeds
    assert "| coop | world:objects | 16 | 1,2,3 | 64.7 ± 0.8 | 75.1 ± 1.2 | 69.5 | 98.5 | 74.8 |" in base2new.markdown()
    assert "<td>64.7 ± 0.8</td>" in base2new.html()


def test_folders_given_inside_one_another_count_each_run_once(runs_folder):
    runs, _ = find_runs([runs_folder, runs_folder / "coop-b2n", runs_folder / "coop-b2n" / "metrics.json"])
    assert sum(run.method == "coop" for run in runs) == 1


def test_safe_names_keep_what_a_file_name_can_hold():
    assert safe_name("coop+ship-base2new-world:objects") == "coop+ship-base2new-world_objects"
    assert (
        safe_name("run-imagefolder:/data/very/long/path/pets-seed1", 20, keep_end=True)
        == "ery_long_path_pets-seed1"[-20:]
    )
    assert safe_name("mpfgvc (paper's configuration)") == "mpfgvc_paper_s_configuration"
    assert safe_name("???") == "_" and len(safe_name("x" * 200)) == 80


def test_fewshot_points_take_each_seed_once(runs_folder):
    runs, _ = find_runs([runs_folder])
    curves = fewshot_points(runs)["world:objects"]
    assert set(curves) == {"linear_probe", "linear_probe (2)"}
    points = curves["linear_probe"]
    assert points[1] == [30.0, 34.0] and points[2] == [40.0, 44.0]
    assert sorted(points[4]) == [50.0, 51.0, 54.0]  # seed 2 from the later run (51, not 52), seed 3 added
    assert curves["linear_probe (2)"] == {1: [21.0], 2: [22.0]}


def test_projection_is_the_top_two_principal_components():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(50, 6, generator=generator) * torch.tensor([5.0, 0.2, 3.0, 0.1, 0.1, 0.1])
    projected = project_2d(features)
    centred = features - features.mean(0)
    values, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    expected = centred @ vectors[:, [-1, -2]]
    torch.testing.assert_close(projected.abs(), expected.abs(), atol=1e-4, rtol=1e-4)
    assert projected[:, 0].var() > projected[:, 1].var()
    order = torch.randperm(50, generator=generator)  # the same points in another order: the same picture
    torch.testing.assert_close(project_2d(features[order]), projected[order], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("resize", [32, 36])  # CLIP's transform resizes to the crop size; timm's to size / 0.9
def test_overlays_crop_the_image_as_the_model_saw_it(tmp_path, resize):
    box = (40, 8, 56, 24)
    crop = np.asarray(model_input(badge_image(tmp_path / "b.png", box=box), 32, resize))
    red = (crop[..., 0] > 200) & (crop[..., 1] < 80)
    rows, cols = red.any(axis=1).nonzero()[0], red.any(axis=0).nonzero()[0]
    x0, y0, x1, y1 = box_in_crop(box, 128, 64, 32, resize)
    assert crop.shape == (32, 32, 3)
    assert abs(cols.min() - x0) <= 1 and abs(cols.max() + 1 - x1) <= 1
    assert abs(rows.min() - y0) <= 1 and abs(rows.max() + 1 - y1) <= 1


def test_tables_survive_missing_and_non_finite_values_and_show_target_spread(tmp_path):
    write_run(
        tmp_path / "a",
        {
            "method": "coop",
            "dataset": "d",
            "protocol": "crossdataset",
            "seed": [1, 2],
            "training": {},
            "accuracy": float("nan"),
            "average_target_accuracy": 15.0,
            "targets": {"t": {"accuracy": 15.0}},
            "per_seed": {"1": {"targets": {"t": {"accuracy": 14.0}}}, "2": {"targets": {"t": {"accuracy": 16.0}}}},
        },
    )
    write_run(
        tmp_path / "b",
        {
            "method": "zeroshot",
            "dataset": "d",
            "protocol": "crossdataset",
            "seed": 1,
            "accuracy": 50.0,
            "average_target_accuracy": None,
            "targets": None,
        },
    )
    runs, _ = find_runs([tmp_path])
    (cross,) = build_tables(runs)
    assert cross.rows == [
        ["coop", "d", "all", "1,2", "-", "15.0 ± 1.0", "15.0"],
        ["zeroshot", "d", "-", "1", "50.0", "-", "-"],
    ]


def test_report_writes_html_markdown_and_every_plot(runs_folder, tmp_path):
    out = tmp_path / "out" / "report.html"
    assert main(["report", str(runs_folder), "--out", str(out)]) == 0
    plots = sorted(p.name for p in (tmp_path / "out" / "report_files").glob("*.png"))
    assert [p.split("-")[0] for p in plots] == ["base2new", "fewshot", "kept", "synthesis"]
    page = out.read_text()
    assert page.count("<table>") == 6 and page.count("<img ") == 4
    assert all(f"report_files/{quote(name)}" in page for name in plots)  # "+" in a name is %2B in its link
    markdown = out.with_suffix(".md").read_text()
    assert len(re.findall(r"^\|(?:---\|)+$", markdown, flags=re.M)) == 6 and markdown.count("![") == 4
    # A second report into the same place does not keep plots it no longer draws.
    shutil.rmtree(runs_folder / "mpfgvc")
    write_report([runs_folder], out)
    assert not list((tmp_path / "out" / "report_files").glob("kept-*.png"))


def test_fewshot_plot_draws_zero_shot_for_the_curves_weights(runs_folder, tmp_path):
    def gray_pixels() -> int:
        (plot,) = (tmp_path / "r_files").glob("fewshot-*.png")
        pixels = np.asarray(Image.open(plot).convert("RGB")).astype(int)
        return int((np.abs(pixels - 128).sum(axis=-1) < 6).sum())  # matplotlib's "gray": the dashed line

    write_report([runs_folder], tmp_path / "r.html")
    with_line = gray_pixels()
    metrics = json.loads((runs_folder / "zs-full" / "metrics.json").read_text())
    write_run(runs_folder / "zs-full", {**metrics, "model": "ViT-B-16"})  # zero-shot of other weights: no line
    write_report([runs_folder], tmp_path / "r.html")
    assert with_line > 200 and gray_pixels() < with_line / 4


def test_overlays_skip_images_that_moved(runs_folder, tmp_path):
    (tmp_path / "badge.png").unlink()
    _, plots = write_report([runs_folder / "mpfgvc"], tmp_path / "r.html")
    assert plots == []
    assert "No plot" in (tmp_path / "r.html").read_text()


def test_unreadable_plot_data_is_skipped_with_a_message(runs_folder, tmp_path, capsys):
    (runs_folder / "ship-gzsl" / "synthesis-WorldObjects.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "badge.png").write_bytes(b"\x89PNG broken")
    _, plots = write_report([runs_folder], tmp_path / "r.html")
    assert [p.path.name.split("-")[0] for p in plots] == ["base2new", "fewshot"]
    err = capsys.readouterr().err
    assert "synthesis-WorldObjects.safetensors: unreadable synthesis sample" in err and "badge.png" in err


def test_report_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(ClipadaptError, match="no such run folder"):
        find_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipadaptError, match="no metrics.json of a `clipadapt run`"):
        find_runs([tmp_path / "empty"])
    write_run(tmp_path / "bad", {})
    (tmp_path / "bad" / "metrics.json").write_text("{not json")
    assert main(["report", str(tmp_path / "bad"), "--out", str(tmp_path / "r.html")]) == 2
    assert re.search(r"bad/metrics.json: not valid JSON", capsys.readouterr().err)
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "comparison.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ClipadaptError, match="comparison needs 'columns'"):
        find_runs([tmp_path / "cmp"])
    (tmp_path / "cmp" / "comparison.json").write_text(json.dumps({"columns": ["a"], "rows": {"x": [1.0]}}))
    with pytest.raises(ClipadaptError, match="comparison needs 'columns'"):
        find_runs([tmp_path / "cmp"])
    with pytest.raises(ClipadaptError, match="name an .html file"):
        write_report([tmp_path / "cmp"], tmp_path / "report.md")


def chromium() -> str | None:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and os.environ.get("CLIPADAPT_REQUIRE_BROWSER") == "1":
        pytest.fail("CLIPADAPT_REQUIRE_BROWSER=1 but no chromium on PATH (make test installs Debian's package)")
    if path is None:
        pytest.skip("no chromium on PATH (make test installs Debian's chromium package where it can)")
    return path


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.mark.slow
def test_report_renders_in_headless_chromium(runs_folder, tmp_path):
    browser = chromium()
    out = tmp_path / "report.html"
    write_report([runs_folder], out)
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert dom.count("<table>") == 6 and dom.count("<img ") == 4 and "64.7 ± 0.8" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1280,6000", out.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[1] == 1280
    # The plots are drawn, not broken-image icons: matplotlib's first bar colour (31, 119, 180) covers a real area
    # of the page, and so does the second (255, 127, 14), which only the plots use.
    for colour in ((31, 119, 180), (255, 127, 14)):
        near = (np.abs(pixels - np.array(colour)).sum(axis=-1) < 30).sum()
        assert near > 2000, f"{colour}: {near} pixels"
