"""`clipadapt sweep`: grids checked before any run, the local launcher with two slots on CPUs, finished runs
skipped, Ctrl-C stopping every job, and the summary table in the papers' layout."""

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import COLOURS, colour_images

from clipadapt import ClipadaptError
from clipadapt.cli import main
from clipadapt.protocols import safe_name
from clipadapt.report import mean_std
from clipadapt.sweep import expand_grid, read_grid


@pytest.fixture(scope="module")
def grid_inputs(colour_world, tmp_path_factory):
    """The colour data set, a second one of two of its colours, and the micro CLIP that knows them."""
    root, weights = colour_world
    other = colour_images(
        tmp_path_factory.mktemp("other"), {"train": 4, "test": 4}, {k: COLOURS[k] for k in ("red", "blue")}, seed=7
    )
    return f"imagefolder:{root}", f"imagefolder:{other}", weights


def write_grid(path, **grid):
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"methods": ["coop", "nope"]}, "unknown method 'nope'"),
        ({"datasets": ["imagefolder:/no/such/folder"]}, "/no/such/folder"),
        ({"config": {"epochs": 2, "no_such_key": 1}}, "no method of the grid has: no_such_key"),
        ({"config": {"epochs": "many"}}, "epochs"),
        ({"method_config": {"cocoop": {"n_ctx": 2}}}, "'cocoop', which is not among the grid's methods"),
        ({"protocols": ["crossdataset"]}, "needs --targets"),
        ({"seed": [1]}, "unknown key\\(s\\) seed"),
    ],
)
def test_a_bad_grid_is_refused_before_any_run(grid_inputs, tmp_path, change, problem):
    source, _, weights = grid_inputs
    grid = {"methods": ["coop", "linear_probe"], "datasets": [source], "protocols": ["fewshot"], "shots": [1]}
    path = write_grid(tmp_path / "grid.yaml", **{**grid, "pretrained": str(weights), **change})
    with pytest.raises(ClipadaptError, match=problem):
        expand_grid(read_grid(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_grid_expands_into_one_run_a_cell_with_each_protocols_options(grid_inputs, tmp_path):
    source, other, weights = grid_inputs
    path = write_grid(
        tmp_path / "grid.yaml",
        methods=["coop", "linear_probe"],
        datasets=[source],
        protocols=["base2new", "crossdataset"],
        seeds=[1, 2],
        targets=[other],
        config={"epochs": 3, "select": "last"},  # coop has both; the linear probe neither
        method_config={"coop": {"n_ctx": 4}},
        pretrained=str(weights),
    )
    jobs = expand_grid(read_grid(path), tmp_path / "out")
    assert len(jobs) == 2 * 2 * 2 and len({job.folder for job in jobs}) == 8
    coop = next(j for j in jobs if j.method == "coop" and j.protocol == "crossdataset")
    assert "--targets" in coop.argv() and {"epochs=3", "n_ctx=4", "select=last"} <= set(coop.argv())
    probe = next(j for j in jobs if j.method == "linear_probe" and j.protocol == "base2new")
    assert "--targets" not in probe.argv() and not any("=" in word for word in probe.argv())


@pytest.mark.slow
def test_two_methods_two_data_sets_three_seeds_on_two_slots_give_one_table(grid_inputs, tmp_path, capsys):
    source, other, weights = grid_inputs
    path = write_grid(
        tmp_path / "grid.yaml",
        methods=["zeroshot", "linear_probe"],
        datasets=[source, other],
        protocols=["fewshot"],
        shots=[2],
        seeds=[1, 2, 3],
        config={"templates": "a photo of a {}."},
        pretrained=str(weights),
    )
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--out", str(out), "--jobs", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert (
        "### Sweep: fewshot, 2 shots" in printed
        and "| data set | zeroshot accuracy | linear_probe accuracy |" in printed
    )
    (table,) = [json.loads(p.read_text()) for p in (out / "sweep-tables").glob("*/comparison.json")]
    assert list(table["rows"]) == [source, other, "average"]
    folder = out / "linear_probe" / "fewshot-2shot" / safe_name(source, 60, keep_end=True)
    per_seed = [json.loads((folder / f"seed{s}" / "metrics.json").read_text())["accuracy"] for s in (1, 2, 3)]
    mean, std = table["rows"][source]["linear_probe accuracy"]
    assert (mean, std) == (pytest.approx(sum(per_seed) / 3, abs=0.01), pytest.approx(mean_std(per_seed)[1], abs=0.01))
    assert table["rows"]["average"]["zeroshot accuracy"][0] > 90  # the colour world's zero-shot answer is right
    assert (out / "report.html").is_file() and "Sweep: fewshot" in (out / "report.md").read_text()
    # A second sweep finds every run finished and starts none.
    logs = {p: p.stat().st_size for p in out.rglob("log.txt")}
    assert main(["sweep", str(path), "--out", str(out), "--jobs", "2", "--no-progress"]) == 0
    assert {p: p.stat().st_size for p in out.rglob("log.txt")} == logs


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_and_every_job(grid_inputs, tmp_path):
    source, _, weights = grid_inputs
    path = write_grid(
        tmp_path / "grid.yaml",
        methods=["coop"],
        datasets=[source],
        protocols=["fewshot"],
        shots=[2],
        seeds=[1, 2, 3],
        config={"epochs": 100000, "n_ctx": 4},
        pretrained=str(weights),
    )
    out = tmp_path / "sweep"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "clipadapt", "sweep", str(path), "--out", str(out), "--jobs", "2", "--no-progress"]
    )
    deadline = time.time() + 120
    while len(list(out.rglob("checkpoint_last.safetensors"))) < 2:  # both slots are training
        assert time.time() < deadline and sweep.poll() is None, "the jobs did not start"
        time.sleep(0.5)
    sweep.send_signal(signal.SIGINT)
    assert sweep.wait(timeout=60) == 130
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert left == [], f"jobs left running: {left}"
    # What the stopped jobs trained stays for a rerun of the sweep to resume from; none of them finished.
    # (A job stopped between a checkpoint's two renames holds it as .prev, which resuming reads.)
    checkpointed = {p.parent for p in out.rglob("checkpoint_last.safetensors*") if not p.name.endswith(".tmp")}
    assert len(checkpointed) >= 2 and not list(out.rglob("metrics.json"))


def test_the_shipped_grid_reads_and_its_method_configs_build(monkeypatch):
    from pathlib import Path

    from clipadapt.config import load_config_file
    from clipadapt.methods import method_configs

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)  # the grid names its method configs from the repository root, as its comment runs it
    grid = read_grid("configs/sweeps/base2new_coop_datasets.yaml")
    assert len(grid["datasets"]) == 11 and grid["pretrained"] == "openai"
    for method, path in grid["method_config"].items():
        method_configs(method, load_config_file(path), source=path)
