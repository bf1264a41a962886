"""The benchmarks under bench/ still run against the package as it is now: every script imports (a renamed import
fails here, not on the next GPU run), every scaling workload runs at its smallest size, and each benchmark of
`bench/run.py` runs its quick form on the micro model. Only that they run is checked; the numbers are not."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


@pytest.fixture
def bench_path(monkeypatch):
    """bench/ on the import path, as when a script runs as `python bench/NAME.py` (they import `timing` so), and
    the modules imported from it forgotten afterwards."""
    monkeypatch.syspath_prepend(str(BENCH))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", None) and Path(sys.modules[name].__file__).parent == BENCH:
            del sys.modules[name]


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", [path.stem for path in SCRIPTS])
def test_every_bench_script_imports(bench_path, script):
    module = load_bench(script)
    assert script == "timing" or callable(module.main)


def test_every_scaling_workload_runs_at_its_smallest_size(bench_path, tmp_path):
    scaling = load_bench("scaling")
    rows = []
    for workload in scaling.WORKLOADS + scaling.DATA_WORKLOADS:
        size = scaling.QUICK_SIZES["rows" if workload in scaling.DATA_WORKLOADS else "classes"]
        rows.append(scaling.run_point(workload, int(size), "micro-vit", "cpu"))
        assert rows[-1]["workload"] == workload and rows[-1]["seconds"] >= 0
    scaling.write_tables(tmp_path / "scaling", "micro-vit", "cpu", rows)
    assert json.loads((tmp_path / "scaling.json").read_text())["rows"] == rows
    table = (tmp_path / "scaling.md").read_text()
    assert all(f"| {row['workload']} | {row['classes']:,} |" in table for row in rows)


@pytest.mark.slow
def test_the_quick_scaling_command_runs_a_point_in_its_own_process(tmp_path):
    command = [sys.executable, str(BENCH / "scaling.py"), "--quick", "--model", "micro-vit", "--workloads", "score"]
    result = subprocess.run([*command, "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (table,) = tmp_path.glob("scaling-micro-vit-*.json")
    assert [(r["workload"], r["classes"]) for r in json.loads(table.read_text())["rows"]] == [("score", 10)]


def quick_arguments() -> dict[str, list[str]]:
    """Each benchmark of bench/run.py and the arguments of its quick form (`run.py --quick`)."""
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return {name: quick for name, (quick, _) in run.BENCHMARKS.items()}


QUICK = quick_arguments()


# 16 learned context vectors do not fit the micro model's 16-token text context; 4 do.
MICRO_ARGS = {"text_truncation": ["--n-ctx", "4"], "coop_cached": ["--n-ctx", "4"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(QUICK))
def test_each_benchmark_runs_its_quick_form(name):
    command = [
        sys.executable,
        str(BENCH / f"{name}.py"),
        *QUICK[name],
        "--model",
        "micro-vit",
        *MICRO_ARGS.get(name, []),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith(f"{name} ratio="), result.stdout  # what run.py reads
