"""`clipadapt sweep GRID.yaml`: a grid of methods x data sets x protocols x shots x seeds expanded into ordinary
`clipadapt run` jobs, each in a run folder of its own (a job that dies reruns from its checkpoints; a finished one
is skipped), run `--jobs` at a time on this machine (one GPU each where there are GPUs, the cores shared on CPUs),
then summed up in the papers' layout: a row per data set and an average row, mean ± std over seeds.

A grid (YAML):

    methods: [coop, cocoop]               # METHOD or METHOD+ship
    datasets: [world:objects, world:patterns]
    protocols: [base2new]                 # or `protocol: base2new`
    shots: [16]                           # optional: the protocol's default; a list sweeps it
    seeds: [1, 2, 3]
    targets: [world:scenes]               # crossdataset's
    config: {epochs: 10}                  # every method that has the key (a key no method has is an error)
    method_config: {coop: {n_ctx: 4}}     # one method's (or a --config YAML file's path)
    model: ViT-B-16                       # optional, with pretrained: the default model otherwise
    pretrained: openai
    slurm: {partition: gpu, gpus_per_node: 1, cpus_per_task: 8, mem_gb: 32, timeout_min: 240}   # --launcher slurm
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .config import load_config_file, read_yaml_file
from .data import load_dataset
from .errors import ClipadaptError
from .methods import method_configs
from .paths import safe_name
from .protocols import PROTOCOL_SPECS, protocol_shots, rederive_harmonic_mean
from .report import mean_std, write_comparisons, write_report
from .training.distributed import available_cores

GRID_KEYS = {
    "methods",
    "datasets",
    "protocols",
    "protocol",
    "shots",
    "seeds",
    "targets",
    "unseen",
    "config",
    "method_config",
    "model",
    "pretrained",
    "slurm",
}
# What a grid's `slurm:` section may set for `--launcher slurm`, as submitit's Slurm executor names it.
SLURM_KEYS = {
    "partition": "slurm_partition",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "timeout_min": "timeout_min",
    "array_parallelism": "slurm_array_parallelism",
    "constraint": "slurm_constraint",
}
TABLE_FOLDER = "sweep-tables"  # the summary: one comparison.json per table (what `clipadapt report` shows)


@dataclass(frozen=True)
class Job:
    method: str
    dataset: str
    protocol: str
    shots: int | None
    seed: int
    config: tuple[tuple[str, Any], ...]
    folder: Path
    options: tuple[str, ...] = field(default=())  # --targets/--unseen/--model/--pretrained words

    def argv(self) -> list[str]:
        """The `clipadapt run` arguments of this job."""
        words = ["run", self.method, "--dataset", self.dataset, "--protocol", self.protocol]
        words += ["--shots", str(self.shots)] if self.shots is not None else []
        words += ["--seed", str(self.seed), "--out", str(self.folder), *self.options]
        return words + [
            f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in self.config
        ]

    @property
    def finished(self) -> bool:
        return (self.folder / "metrics.json").is_file()


def _as_list(grid: dict, key: str, default: list | None = None) -> list:
    value = grid.get(key, default)
    if value is None:
        raise ClipadaptError(f"the grid needs `{key}`")
    return list(value) if isinstance(value, (list, tuple)) else [value]


def read_grid(path: str | Path) -> dict:
    path = Path(path)
    grid = read_yaml_file(path, "the grid")
    if not isinstance(grid, dict):
        raise ClipadaptError(f"the grid {path} must be a mapping (methods, datasets, protocols, seeds, ...)")
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise ClipadaptError(f"grid {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(GRID_KEYS))}")
    unknown = sorted(set(grid.get("slurm") or {}) - set(SLURM_KEYS))
    if unknown:
        raise ClipadaptError(f"grid {path}: unknown slurm key(s) {', '.join(unknown)}; known: {', '.join(SLURM_KEYS)}")
    return grid


def expand_grid(grid: dict, out: Path) -> list[Job]:
    """Every job of the grid, checked before any runs: methods and their config keys (`method_configs`), data set
    specs (each is loaded once), protocols and their options (`protocol_shots`)."""
    methods = _as_list(grid, "methods")
    datasets = _as_list(grid, "datasets")
    protocols = _as_list(grid, "protocols", grid.get("protocol"))
    seeds = [int(s) for s in _as_list(grid, "seeds", [1])]
    shots_list = _as_list(grid, "shots", [None])
    targets = [str(t) for t in _as_list(grid, "targets", [])]
    unseen = grid.get("unseen")
    shared = dict(grid.get("config") or {})
    per_method = dict(grid.get("method_config") or {})
    for name in per_method:
        if name not in methods:
            raise ClipadaptError(f"method_config names '{name}', which is not among the grid's methods")
    configs, used = {}, set()
    for method in methods:
        # Typed as YAML gives them, as `--config FILE` takes them; build_config checks each against the method.
        given = per_method.get(method) or {}
        own = load_config_file(given) if isinstance(given, str) else dict(given)
        cls, _, ship = method_configs(method, own, source=f"method_config.{method}")
        keys = set(cls.Config.__dataclass_fields__) | (
            {f"ship.{k}" for k in ship.__dataclass_fields__} if ship else set()
        )
        values = {**{k: v for k, v in shared.items() if k in keys}, **own}
        used |= set(values) & set(shared)
        method_configs(method, values, source=f"the grid's config for {method}")
        configs[method] = tuple(sorted(values.items()))
    if set(shared) - used:
        raise ClipadaptError(f"grid config key(s) no method of the grid has: {', '.join(sorted(set(shared) - used))}")
    for spec in [*datasets, *targets]:
        load_dataset(spec)  # a spec that does not resolve fails here, naming itself
    weights = [word for key in ("model", "pretrained") if grid.get(key) for word in (f"--{key}", str(grid[key]))]
    jobs = []
    for protocol in protocols:
        # Each protocol gets the options it takes: crossdataset the targets, gzsl the unseen classes.
        options = [*(["--targets", ",".join(targets)] if protocol == "crossdataset" and targets else [])]
        options += ["--unseen", str(unseen)] if protocol == "gzsl" and unseen else []
        for shots in shots_list:
            shots = None if shots is None else int(shots)
            protocol_shots(
                protocol, shots, targets if protocol == "crossdataset" else (), unseen if protocol == "gzsl" else None
            )
            label = f"{protocol}{f'-{shots}shot' if shots else ''}"
            for method in methods:
                for dataset in datasets:
                    for seed in seeds:
                        folder = out / safe_name(method) / label / safe_name(dataset, 60, keep_end=True) / f"seed{seed}"
                        jobs.append(
                            Job(method, dataset, protocol, shots, seed, configs[method], folder, (*options, *weights))
                        )
    return jobs


# ---- the local launcher --------------------------------------------------------------------------------------
def _gpus() -> list[str]:
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def run_local(jobs: list[Job], slots: int | None = None, progress: bool = True) -> list[Job]:
    """Run the jobs not finished yet, `slots` at a time (default: one per GPU, else one), each as a `clipadapt run`
    process with its output in `<folder>/log.txt`: on GPUs each slot holds one GPU (CUDA_VISIBLE_DEVICES), on CPUs
    the slots share the cores. Ctrl-C stops every job (their checkpoints stay) and re-raises. Returns the jobs
    that failed."""
    gpus = _gpus()
    slots = slots or max(1, len(gpus))
    if slots < 1:
        raise ClipadaptError(f"--jobs must be at least 1, got {slots}")
    pending = [job for job in jobs if not job.finished]
    free = list(gpus[:slots]) if gpus else [None] * slots
    threads = max(1, available_cores() // slots)
    running: dict[subprocess.Popen, tuple[Job, str | None]] = {}
    failed: list[Job] = []
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc="sweep", unit="run", disable=not progress)
    try:
        while pending or running:
            while pending and free:
                job, device = pending.pop(0), free.pop(0)
                job.folder.mkdir(parents=True, exist_ok=True)
                env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
                if device is not None:
                    env["CUDA_VISIBLE_DEVICES"] = device
                with open(job.folder / "log.txt", "ab") as log:
                    process = subprocess.Popen(
                        [sys.executable, "-m", "clipadapt", *job.argv(), "--no-progress"],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,  # its own process group: stopped with its DataLoader workers
                    )
                running[process] = (job, device)
            time.sleep(0.2)
            for process in [p for p in running if p.poll() is not None]:
                job, device = running.pop(process)
                free.append(device)
                if process.returncode != 0:
                    failed.append(job)
                bar.update(1)
                bar.set_postfix(running=len(running), failed=len(failed))
    except KeyboardInterrupt:
        _stop(list(running))
        raise
    finally:
        bar.close()
    return failed


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to each job's process group, SIGKILL to what is left after 10 seconds."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.time() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


# ---- the Slurm launcher (submitit) ---------------------------------------------------------------------------
class SlurmRun:
    """One job of the array: `clipadapt run` in the Slurm task, as the local launcher runs it. When Slurm preempts
    or times it out, submitit calls `checkpoint`, which requeues the same run: it resumes from the checkpoints in
    its run folder."""

    def __init__(self, argv: list[str]):
        self.argv = argv

    def __call__(self) -> None:
        command = [sys.executable, "-m", "clipadapt", *self.argv, "--no-progress"]
        # Slurm's SIGTERM before a requeue (or a cancellation) is left to the SIGKILL that follows, as submitit's own
        # process leaves it: a run stopped that way records no failure, and its requeued job resumes it.
        code = subprocess.run(command, preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)).returncode
        if code:
            raise ClipadaptError(f"clipadapt {' '.join(self.argv)} exited with {code}")

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmRun(self.argv))


def run_slurm(jobs: list[Job], out: Path, resources: dict, progress: bool = True) -> list[Job]:
    """The jobs not finished yet as one Slurm job array through submitit (its files in OUT/slurm/), with the grid's
    resources, requeued when preempted. Prints the array's job id, waits with one progress line, cancels the array
    on Ctrl-C. Returns the jobs that failed."""
    import submitit

    pending = [job for job in jobs if not job.finished]
    if not pending:
        return []
    executor = submitit.AutoExecutor(folder=out / "slurm" / "%j", cluster="slurm")
    parameters = {SLURM_KEYS[key]: value for key, value in resources.items()}
    executor.update_parameters(name="clipadapt-sweep", slurm_additional_parameters={"requeue": True}, **parameters)
    with executor.batch():
        submitted = [executor.submit(SlurmRun(job.argv())) for job in pending]
    print(f"submitted {len(submitted)} runs as Slurm job array {submitted[0].job_id.split('_')[0]}", file=sys.stderr)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc="sweep", unit="run", disable=not progress)
    failed, waiting = [], dict(zip(submitted, pending))
    try:
        while waiting:
            for handle in [h for h in waiting if h.done()]:
                job = waiting.pop(handle)
                if handle.exception() is not None:
                    failed.append(job)
                bar.update(1)
                bar.set_postfix(failed=len(failed))
            time.sleep(1)
    except KeyboardInterrupt:
        for handle in waiting:
            handle.cancel(check=False)
        raise
    finally:
        bar.close()
    return failed


# ---- the summary ---------------------------------------------------------------------------------------------
def _column(method: str, key: str) -> str:
    """A summary column's header: `coop base`, `coop HM`, `zeroshot accuracy`."""
    return f"{method} {key.removesuffix('_accuracy').replace('harmonic_mean', 'HM')}"


def summary_tables(jobs: list[Job]) -> list[dict]:
    """Per (protocol, shots): rows are the data sets and their average, columns each method's headline numbers
    (`ProtocolSpec.summary`), cells [mean, std] over the seeds whose runs finished. The average row averages each
    seed's data sets first (the harmonic mean from the averaged base and new, or seen and unseen, as CoCoOp's
    tables), then takes mean ± std over seeds; it needs every data set of a seed."""
    tables = []
    groups: dict[tuple[str, int | None], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.protocol, job.shots), []).append(job)
    for (protocol, shots), group in groups.items():
        keys = PROTOCOL_SPECS[protocol].summary
        methods = list(dict.fromkeys(job.method for job in group))
        datasets = list(dict.fromkeys(job.dataset for job in group))
        results: dict[tuple[str, str, int], dict] = {}
        for job in group:
            if job.finished:
                results[(job.method, job.dataset, job.seed)] = json.loads((job.folder / "metrics.json").read_text())
        seeds = sorted({job.seed for job in group})
        columns = [_column(m, k) for m in methods for k in keys]
        rows: dict[str, dict[str, list[float]]] = {}
        for dataset in [*datasets, "average"]:
            row = {}
            for method in methods:
                per_seed: dict[str, list[float]] = {k: [] for k in keys}
                for seed in seeds:
                    names = datasets if dataset == "average" else [dataset]
                    found = [results.get((method, d, seed)) for d in names]
                    if any(r is None for r in found):
                        continue
                    values = {k: [r.get(k) for r in found] for k in keys}
                    if any(v is None for vs in values.values() for v in vs):
                        continue
                    means = {k: sum(vs) / len(vs) for k, vs in values.items()}
                    if "harmonic_mean" in means:
                        rederive_harmonic_mean(means)
                    for k in keys:
                        per_seed[k].append(means[k])
                for k in keys:
                    row[_column(method, k)] = [round(v, 2) for v in mean_std(per_seed[k])] if per_seed[k] else None
            rows[dataset] = row
        title = f"Sweep: {protocol}" + (f", {shots} shot{'s' if shots != 1 else ''}" if shots else "")
        note = (
            f"mean ± std over seeds {','.join(map(str, seeds))}; the average row averages each seed's data sets first"
        )
        tables.append({"title": title, "row_label": "data set", "columns": columns, "rows": rows, "note": note})
    return tables


def run_sweep(
    grid_path: str | Path,
    out: str | Path,
    jobs: int | None = None,
    progress: bool = True,
    launcher: str = "local",
) -> tuple[str, list[Job]]:
    """Expand, check and run the grid (`launcher`: local or slurm); write its summary (OUT/sweep-tables/) and
    report (OUT/report.html). Returns the summary as markdown and the failed jobs."""
    out = Path(out)
    grid = read_grid(grid_path)
    grid_jobs = expand_grid(grid, out)
    if launcher == "slurm":
        failed = run_slurm(grid_jobs, out, dict(grid.get("slurm") or {}), progress)
    else:
        failed = run_local(grid_jobs, jobs, progress)
    tables = summary_tables(grid_jobs)
    folder = out / TABLE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for table in tables:
        (folder / safe_name(table["title"])).mkdir(exist_ok=True)
        (folder / safe_name(table["title"]) / "comparison.json").write_text(json.dumps(table, indent=1) + "\n")
    text = write_comparisons(tables, folder, "summary.md")
    write_report([out], out / "report.html")
    return text, failed
