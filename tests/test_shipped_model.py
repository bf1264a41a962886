"""The shipped tiny CLIP, pretrained with UniCL on the world, recognises compositions it never saw."""
import pytest

from clipadapt import load_backbone
from clipadapt.data import load_dataset
from clipadapt.data.world import generate_world
from clipadapt.methods import build_method
from clipadapt.protocols import RunContext, run_protocol


@pytest.mark.slow
def test_zero_shot_on_unseen_compositions_is_far_above_chance(tmp_path):
    # A fresh world (another seed than the pretraining one): new images, 4 test images per class.
    world = generate_world(tmp_path / "world", seed=11, progress=False, pretrain_train=1, pretrain_val=1,
                           pretrain_test=1, captions=1, train=1, val=1, test=4)
    backbone = load_backbone()
    ctx = RunContext(backbone, cache_dir=tmp_path / "cache", progress=False)
    result = run_protocol("base2new", build_method("zeroshot", backbone), ctx, load_dataset(f"world:objects:{world}"))
    # 16 new classes: chance is 6.25%, colour alone (each colour names 2 new classes) at most 50%.
    assert result["new_accuracy"] > 50.0
    assert result["attribute_accuracy"]["new"]["colour"] > 90.0
    assert result["attribute_accuracy"]["new"]["shape"] > 50.0


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_demo_prints_the_tables_and_writes_the_report(tmp_path, monkeypatch, capsys, jobs):
    from clipadapt import demo
    from clipadapt.cli import main

    monkeypatch.setenv("CLIPADAPT_CACHE", str(tmp_path / "cache"))  # generates the default world afresh
    # Three of the demo's rows (`make demo` runs them all): enough for a table, a curve and the comparison.
    rows = (demo.DemoRow("zeroshot", "base2new", demo.TARGET),
            *(demo.DemoRow("linear_probe", "fewshot", demo.TARGET, (("shots", k),), seeds=(1, 2)) for k in (1, 2)))
    monkeypatch.setattr(demo, "ROWS", rows)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress", "--jobs", jobs]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| zeroshot |"))
    base, new, hm = (float(cell) for cell in row.split("|")[5:8])
    assert new > 50.0 and base > 40.0 and hm > 45.0
    assert "| linear_probe | world:objects | fewshot | 2 | 1,2 |" in table
    assert "| unicl | 59.0 | 69.0 |" in table  # the recorded pretraining comparison
    assert (tmp_path / "demo" / "results.md").read_text().strip() in table
    assert (tmp_path / "demo" / "zeroshot-base2new-objects" / "metrics.json").is_file()
    assert (tmp_path / "demo" / "linear_probe-fewshot-objects-2shot" / "metrics.json").is_file()
    page = (tmp_path / "demo" / "report.html").read_text()
    assert page.count("<table>") == 3 and "report_files/base2new-world_objects.png" in page
    assert "report_files/fewshot-world_objects.png" in page
