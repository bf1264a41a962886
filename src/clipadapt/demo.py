"""`make demo` / `clipadapt demo`: the whole story on the generated world with the shipped tiny CLIP: the recorded
UniCL vs CLIP vs CE comparison; zero-shot, linear probe, CoOp, CoCoOp, CLIP-Adapter and Tip-Adapter with and
without SHIP on base-to-new (on the near target `objects`, and the prompt learners on the far `textures` too) and
cross-data-set transfer; SHIP's generalized zero-shot; few-shot curves on both targets; MP-FGVC against fine-tuning
on the birds, and their recorded five-seed comparison. Each row is an ordinary
`clipadapt run` whose metrics.json lands in the demo folder (so each number can be reproduced with one command),
and `clipadapt report` turns the folder into `results.md` and `report.html`."""

from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import shutil
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .backbone import DEFAULT_WEIGHTS, load_backbone
from .data import load_dataset
from .data.world import default_world
from .errors import CheckpointError, ClipadaptError
from .paths import safe_name
from .protocols import RunContext, protocol_shots, run_seeds, shots_trained, write_metrics
from .report import write_report
from .training.distributed import available_cores

TARGET = "world:objects"
# A far target beside the near one, so the demo's own rows show what adaptation is for: `textures` is the world's
# DTD (zero-shot about 25%, a 16-shot linear probe about 90%: docs/world.md), where the papers' few-shot methods
# gain most; on `objects`, the pretraining distribution itself, losing to zero-shot is the papers' pattern too.
FAR = "world:textures"
CROSS_TARGETS = ("world:patterns", "world:scenes")
FINE = "world:birds"
LOSS_COMPARISON = Path(__file__).parent / "weights" / "loss-comparison.json"
# The papers' patterns averaged over the world's targets with three seeds (scripts/world_patterns.py --json): an
# hour of CPU time, so the demo shows the recorded tables beside its own rows.
WORLD_PATTERNS = Path(__file__).parent / "weights" / "world-patterns.json"
# MP-FGVC against fine-tuning on the world's birds over five seeds (scripts/fine_grained.py --json): 30 ViT trainings,
# about an hour on 2 cores, so the demo shows the recorded table beside its own fine-grained rows.
FINE_GRAINED = Path(__file__).parent / "weights" / "fine-grained.json"
IMAGE_TRAINING_METHODS = ("finetune", "mpfgvc")


@dataclass(frozen=True)
class DemoRow:
    method: str
    protocol: str
    dataset: str
    options: tuple[tuple[str, object], ...] = ()  # protocol options
    config: tuple[tuple[str, object], ...] = ()  # method config values
    label: str = ""  # the row's name in the tables (default: the method's)
    seeds: tuple[int, ...] = (1,)

    @property
    def name(self) -> str:
        return self.label or self.method

    @property
    def command(self) -> str:
        """The `clipadapt run` command that gives this row's numbers (the demo's workers run on one thread each;
        thread counts change the last digit)."""
        words = ["clipadapt", "run", self.method, "--dataset", self.dataset, "--protocol", self.protocol]
        for key, value in self.options:
            words += [f"--{key}", ",".join(value) if isinstance(value, tuple) else str(value)]
        words += ["--seeds", ",".join(map(str, self.seeds))] if len(self.seeds) > 1 else ["--seed", str(self.seeds[0])]
        words += [f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in self.config]
        return shlex.join(words)

    @property
    def folder(self) -> str:
        """`<name>-<protocol>-<data set>[-<k>shot]`, e.g. `coop+ship-base2new-objects`."""
        shots = f"-{dict(self.options)['shots']}shot" if self.protocol == "fewshot" else ""
        return safe_name(f"{self.name}-{self.protocol}-{self.dataset.removeprefix('world:')}{shots}")


# CoOp's cross-data-set protocol trains on 16 shots of every source class; the demo on 4, which takes an eighth
# of the steps (CoOp's schedule: 100 epochs for 4 shots, 200 for 16). docs/ship.md has 16 shots.
CROSS = (("targets", CROSS_TARGETS), ("shots", 4))
# On the birds every method runs its defaults, so the demo's rows are seed 1 of the recorded five-seed table (its
# "mpfgvc ssvp=false" row for MP-FGVC's default). Fine-tuning and MP-FGVC tune a ViT for 15 (+15) epochs: 3-4
# minutes of a core each, started first. MP-FGVC's default leaves SsVP off (the best on the birds' validation
# split); the paper's configuration (`ssvp=true`), its ablations and the GZSL rows of CoOp and CoOp+SHIP are in
# docs/mpfgvc.md and docs/ship.md with several seeds, and the demo leaves them out to finish within ten minutes.
ROWS = (
    *(
        DemoRow(method, "base2new", TARGET)
        for method in (
            "zeroshot",
            "linear_probe",
            "coop",
            "cocoop",
            "coop+ship",
            "clip_adapter",
            "clip_adapter+ship",
            "tip_adapter",
            "tip_adapter+ship",
        )
    ),
    *(
        DemoRow(method, "crossdataset", TARGET, CROSS if method != "zeroshot" else CROSS[:1])
        for method in ("zeroshot", "coop", "cocoop")  # CoCoOp's comparison; SHIP's is in docs/ship.md
    ),
    *(DemoRow(method, "gzsl", TARGET) for method in ("zeroshot", "clip_adapter", "clip_adapter+ship")),
    DemoRow("zeroshot", "full", TARGET),  # the few-shot curves' zero-shot line
    *(
        DemoRow(method, "fewshot", TARGET, (("shots", shots),), seeds=(1, 2, 3))
        for method in ("linear_probe", "tip_adapter")
        for shots in (1, 2, 4, 8, 16)
    ),
    # The far target: base-to-new for the prompt learners and SHIP, and the linear probe's few-shot curve (1 to 90 s
    # of a core a row).
    *(DemoRow(method, "base2new", FAR) for method in ("zeroshot", "linear_probe", "coop", "cocoop", "coop+ship")),
    DemoRow("zeroshot", "full", FAR),
    *(DemoRow("linear_probe", "fewshot", FAR, (("shots", shots),), seeds=(1, 2, 3)) for shots in (1, 4, 16)),
    *(DemoRow(method, "full", FINE) for method in ("zeroshot", "linear_probe", "finetune", "mpfgvc")),
)


def _run_row(row: DemoRow, ctx: RunContext) -> dict:
    numbers, config = run_seeds(
        row.method, dict(row.config), row.protocol, ctx, load_dataset(row.dataset), row.seeds, **dict(row.options)
    )
    return {
        "seed": row.seeds[0] if len(row.seeds) == 1 else list(row.seeds),
        "model": ctx.backbone.name,
        "pretrained": DEFAULT_WEIGHTS.name,
        "config": config,
        **numbers,
    }


def _run_and_write(row: DemoRow, ctx: RunContext, folder: Path) -> float:
    """Run `row` into `folder` (its metrics.json); the seconds it took."""
    ctx.out_dir = folder
    start = time.time()
    try:
        metrics = _run_row(row, ctx)
    except CheckpointError as e:
        # A demo folder from another version or configuration: its rows are reproducible, so start them over.
        print(f"{folder}: {e}; starting this row over", file=sys.stderr)
        shutil.rmtree(folder)
        metrics = _run_row(row, ctx)
    seconds = time.time() - start
    write_metrics(
        folder,
        {
            "method": row.name,
            "dataset": row.dataset,
            "protocol": row.protocol,
            "shots": shots_trained(metrics, protocol_shots(row.protocol, **dict(row.options))),
            "seconds": round(seconds, 1),
            "command": row.command,
            **metrics,
        },
    )
    return seconds


_WORKER_CONTEXT: RunContext | None = None


def _start_worker(threads: int, cache_dir: Path | None) -> None:
    global _WORKER_CONTEXT
    # A worker ends with the demo, however the demo ends (Ctrl-C, kill): it would otherwise finish its row and
    # then wait for work for ever. Its checkpoints are written atomically, so the next demo resumes the row.
    parent = multiprocessing.parent_process()
    threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()
    torch.set_num_threads(threads)
    _WORKER_CONTEXT = RunContext(load_backbone(), cache_dir=cache_dir, progress=False)


def _run_in_worker(row: DemoRow, folder: Path) -> float:
    return _run_and_write(row, _WORKER_CONTEXT, folder)


def _describe(row: DemoRow) -> str:
    shots = (
        f" ({dict(row.options)['shots']} shots, seeds {','.join(map(str, row.seeds))})"
        if row.protocol == "fewshot"
        else ""
    )
    return f"{row.name} {row.protocol} on {row.dataset}{shots}"


def default_jobs() -> int:
    """Two rows side by side where there are two cores or more, each worker with half of this process's threads:
    the tiny model's small matrix products use a second thread poorly (1.7x for two on 2 cores), so two rows at
    once finish sooner than one row on two threads."""
    return max(1, min(2, available_cores()))


def _run_in_pool(
    rows: tuple[DemoRow, ...], folders: list[Path], jobs: int, cache_dir: Path | None, progress: bool
) -> None:
    """The rows in `jobs` spawned worker processes that share this process's threads; one progress bar over rows."""
    # Rows that train an image encoder take the longest: started first, they do not end the demo alone.
    order = sorted(range(len(rows)), key=lambda i: rows[i].method not in IMAGE_TRAINING_METHODS)
    threads = max(1, torch.get_num_threads() // jobs)
    spawn = multiprocessing.get_context("spawn")  # no forked copies of this process's torch threads
    others = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(jobs, mp_context=spawn, initializer=_start_worker, initargs=(threads, cache_dir))
    pending = {pool.submit(_run_in_worker, rows[i], folders[i]): i for i in order}
    workers = [child for child in multiprocessing.active_children() if child not in others]
    waiting = set(pending)
    try:
        with tqdm(total=len(rows), desc="demo rows", disable=not progress) as bar:
            while waiting:
                done, waiting = wait(waiting, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        seconds = future.result()
                    except Exception as e:  # noqa: BLE001  a row's failure, or a worker that died
                        raise ClipadaptError(
                            f"demo row '{_describe(rows[pending[future]])}' failed: {type(e).__name__}: {e}"
                        ) from e
                    bar.write(f"done: {_describe(rows[pending[future]])} ({seconds:.0f} s)", file=sys.stderr)
                    bar.update()
                # The rows the workers hold now, so that a long row does not look like a hang (the pool marks
                # one more as running, queued for the next free worker: the first `jobs` in order are running).
                running = [f for f in pending if f in waiting and f.running()][:jobs]
                bar.set_postfix_str(", ".join(rows[pending[f]].name for f in running))
    except BaseException:
        # A failed row (or Ctrl-C) ends the demo now: the other worker's row is stopped, not waited for; its
        # checkpoints stay, so the next `make demo` resumes it.
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.terminate()
        raise
    pool.shutdown()


def run_demo(
    out_dir: str | Path = "runs/demo",
    cache_dir: Path | None = None,
    progress: bool = True,
    rows: tuple[DemoRow, ...] | None = None,
    jobs: int | None = None,
    with_recorded: bool = True,
) -> str:
    """Run every demo row (rows resume from the checkpoints in their folders; a folder whose checkpoints belong to
    another version starts over), `jobs` at a time in worker processes (default: `default_jobs()`), then write
    `results.md` and `report.html` (with the recorded tables too, unless `with_recorded` is false) and return
    the markdown tables."""
    out_dir, rows = Path(out_dir), ROWS if rows is None else rows
    jobs = jobs or default_jobs()
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded = []  # the recorded tables' folders: the pretraining comparison, the papers' patterns, the birds
    tables = (
        {
            "pretraining-comparison": json.loads(LOSS_COMPARISON.read_text()),
            **{f"world-patterns-{i}": table for i, table in enumerate(json.loads(WORLD_PATTERNS.read_text()), 1)},
            "fine-grained": json.loads(FINE_GRAINED.read_text())[0],
        }
        if with_recorded
        else {}
    )
    for name, table in tables.items():
        recorded.append(out_dir / name)
        recorded[-1].mkdir(exist_ok=True)
        (recorded[-1] / "comparison.json").write_text(json.dumps(table, indent=1) + "\n")
    if any(row.dataset.count(":") == 1 and row.dataset.startswith("world:") for row in rows):
        default_world(progress=progress)  # generated here, once, before any worker needs it
    for dataset in dict.fromkeys(row.dataset for row in rows):
        load_dataset(dataset)
    folders = [out_dir / row.folder for row in rows]
    if jobs == 1:
        ctx = RunContext(load_backbone(), cache_dir=cache_dir, progress=progress)
        for i, (row, folder) in enumerate(zip(rows, folders), 1):
            print(f"[{i}/{len(rows)}] {_describe(row)}", file=sys.stderr, flush=True)
            _run_and_write(row, ctx, folder)
    else:
        _run_in_pool(rows, folders, jobs, cache_dir, progress)
    write_report([*recorded, *folders], out_dir / "report.html")
    (out_dir / "report.md").replace(out_dir / "results.md")
    return (out_dir / "results.md").read_text()
