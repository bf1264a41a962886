"""`clipadapt sweep`: grids checked before any run, the local launcher with two slots on CPUs, finished runs
skipped, Ctrl-C stopping every job, and the summary table in the papers' layout."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import COLOURS, colour_images

from clipadapt import ClipadaptError
from clipadapt.cli import main
from clipadapt.paths import safe_name
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


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_grid_with_a_yaml_syntax_error_is_named_with_its_line_and_column(tmp_path, capsys, dry_run):
    grid = tmp_path / "grid.yaml"
    grid.write_text("methods: [coop, linear_probe\ndatasets: [imagefolder:x]\n")
    argv = ["sweep", str(grid), "--out", str(tmp_path / "out"), *(["--dry-run"] if dry_run else [])]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"clipadapt: error: cannot read the grid {grid}: line 2, column 9: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at line 1, column 10)"
    ]
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
        [sys.executable, "-m", "clipadapt", "sweep", str(path), "--out", str(out), "--jobs", "2", "--no-progress"],
        # A shell that started the suite in the background left SIGINT ignored: give the sweep Ctrl-C back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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


# ---- Slurm: a real single-node cluster on this machine -------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """slurmctld and slurmd (Debian's slurm-wlm, `make slurm`) for this host, with munge, configured in a temp
    folder; SLURM_CONF points the commands at it. Skipped where Slurm is not installed or we are not root, unless
    CLIPADAPT_REQUIRE_SLURM=1 (CI), which turns the skip into a failure."""
    import os
    import shutil
    import socket

    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch", "scontrol") if shutil.which(b) is None]
    if missing or os.geteuid() != 0:
        reason = f"Slurm is not installed ({', '.join(missing)})" if missing else "slurmd needs root"
        if os.environ.get("CLIPADAPT_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason + "; `make slurm` installs it")
    root = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    for folder in ("state", "spool", "log"):
        (root / folder).mkdir()
    conf.write_text(
        "\n".join(
            [
                "ClusterName=clipadapt-test",
                f"SlurmctldHost={host}(127.0.0.1)",
                "AuthType=auth/munge",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "ReturnToService=2",
                "SlurmUser=root",
                "JobRequeue=1",
                "KillWait=2",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
                f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            ]
        )
        + "\n"
    )
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["munged", "--force"], capture_output=True)  # another test worker may have started it
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    subprocess.run(["slurmctld", "-f", str(conf)], check=True)
    subprocess.run(["slurmd", "-f", str(conf)], check=True)
    deadline = time.time() + 60
    while subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip() != "idle":
        assert time.time() < deadline, (root / "log" / "slurmctld.log").read_text()[-2000:]
        time.sleep(0.5)
    yield conf
    subprocess.run(["scontrol", "shutdown"], capture_output=True)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


@pytest.mark.slow
def test_a_grid_runs_as_a_slurm_job_array(slurm_cluster, grid_inputs, tmp_path, capsys):
    source, _, weights = grid_inputs
    path = write_grid(
        tmp_path / "grid.yaml",
        methods=["zeroshot", "linear_probe"],
        datasets=[source],
        protocols=["fewshot"],
        shots=[2],
        seeds=[1, 2],
        config={"templates": "a photo of a {}."},
        pretrained=str(weights),
        slurm={"cpus_per_task": 1, "timeout_min": 30},
    )
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--out", str(out), "--launcher", "slurm", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "submitted 4 runs as Slurm job array" in captured.err
    assert len(list(out.rglob("metrics.json"))) == 4 and "### Sweep: fewshot, 2 shots" in captured.out


@pytest.mark.slow
def test_a_requeued_slurm_job_resumes_to_the_same_metrics(slurm_cluster, grid_inputs, tmp_path):
    source, _, weights = grid_inputs
    grid = {
        "methods": ["coop"],
        "datasets": [source],
        "protocols": ["fewshot"],
        "shots": [2],
        "seeds": [1],
        "config": {"epochs": 1000, "n_ctx": 4, "batch_size": 4, "checkpoint_every": 50},
        "pretrained": str(weights),
        "slurm": {"cpus_per_task": 1, "timeout_min": 30},
    }
    path = write_grid(tmp_path / "grid.yaml", **grid)
    straight = tmp_path / "straight"
    assert main(["sweep", str(path), "--out", str(straight), "--jobs", "1", "--no-progress"]) == 0
    out = tmp_path / "requeued"
    sweep = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clipadapt",
            "sweep",
            str(path),
            "--out",
            str(out),
            "--launcher",
            "slurm",
            "--no-progress",
        ]
    )
    deadline = time.time() + 180
    while not list(out.rglob("checkpoint_last.safetensors")):  # the job is training
        assert time.time() < deadline and sweep.poll() is None, "the job did not start"
        time.sleep(0.5)
    job_id = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()[0]
    subprocess.run(["scontrol", "requeue", job_id], check=True)  # as a preemption with requeue does
    # Slurm holds a requeued job back (about two minutes) before it may start again; once it is pending, let it start.
    while (
        subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%t"], capture_output=True, text=True).stdout.strip()
        != "PD"
    ):
        assert time.time() < deadline + 120 and sweep.poll() is None, "the job was not requeued"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    assert sweep.wait(timeout=600) == 0
    (resumed,) = out.rglob("metrics.json")
    (reference,) = straight.rglob("metrics.json")
    resumed, reference = json.loads(resumed.read_text()), json.loads(reference.read_text())
    assert resumed["training"]["resumed_from_step"] > 0
    assert resumed["accuracy"] == reference["accuracy"]
    assert resumed["training"]["epoch_losses"] == reference["training"]["epoch_losses"]
