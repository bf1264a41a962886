"""Scaling with the number of class names (10 -> 1,000 -> 21,000): time and peak memory of zero-shot classifier
weights, one CoOp training step, SHIP synthesis, and scoring test features; and with the data (10,000 ->
1,000,000 cached features): reading the float16 shards of a feature cache and scoring them over 1,000 classes.

Each point runs in a fresh process (`--point WORKLOAD CLASSES`); the memory reported is the peak resident memory
during the workload alone (the kernel's high-water mark, reset once the model and names are set up) minus the
resident memory at that moment. CoOp runs
its default `class_chunk=1024` (prompts in chunks, activations recomputed in the backward pass) and, for
comparison, `class_chunk=0` (all prompts in one call). Writes `scaling-<model>-<device>.json` and `.md` into
`--out-dir` (default bench/results); exits with 1 when a point failed.

    python bench/scaling.py [--model tiny-vit] [--classes 10,1000,21000] [--rows 10000,100000,1000000]
    python bench/scaling.py --quick [--out-dir DIR]   # the smallest sizes: every workload runs (the test suite's)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

# At the top, not in run_point: importing this file (tests/test_bench.py does) checks every name it uses.
from clipadapt import load_backbone
from clipadapt.data import DatasetSplits
from clipadapt.features import DEFAULT_SHARD_SIZE, FeatureSet, _read_shards, _shard_path, _write_atomic_npy
from clipadapt.methods import build_method
from clipadapt.methods.addons.ship import Ship, ShipConfig
from clipadapt.protocols import predict
from clipadapt.text import zeroshot_weights

HERE = Path(__file__).resolve().parent
WORKLOADS = ("zeroshot", "coop_step", "coop_step_unchunked", "ship_synthesis", "score")
DATA_WORKLOADS = ("cache_score",)  # sized by rows of features, over 1,000 classes
WORDS = [
    "red",
    "striped",
    "small",
    "star",
    "square",
    "dotted",
    "blue",
    "circle",
    "large",
    "green",
    "pale",
    "spotted",
    "tiny",
    "hexagon",
    "purple",
    "wavy",
    "bright",
    "oval",
    "dark",
    "cross",
    "plain",
]
TEST_FEATURES = 10_000  # rows scored by `score`
SIZES = {"classes": "10,1000,21000", "rows": "10000,100000,1000000"}
QUICK_SIZES = {"classes": "10", "rows": "1000"}  # --quick: the smallest, to check that every workload runs


def class_names(n: int) -> list[str]:
    """n distinct three-word names (21^3 = 9,261 word triples, then numbered)."""
    names = []
    for i in range(n):
        a, b, c = WORDS[i % 21], WORDS[(i // 21) % 21], WORDS[(i // 441) % 21]
        names.append(f"{a} {b} {c}" + (f" {i // 9261}" if i >= 9261 else ""))
    return names


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak() -> None:
    """Start the kernel's high-water mark (VmHWM) afresh, so the peak read after the workload is the workload's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def run_point(workload: str, n_classes: int, model: str, device: str) -> dict:
    torch.manual_seed(0)
    backbone = load_backbone(model, device=device)
    names = class_names(n_classes)
    features = torch.randn(32, backbone.embed_dim)
    labels = torch.arange(32) % n_classes
    if workload.startswith("coop_step"):
        chunk = 0 if workload.endswith("unchunked") else 1024
        coop = build_method(
            "coop", backbone, {"init": "a photo of a", "class_chunk": chunk, "epochs": 1, "batch_size": 32}
        )
        train = FeatureSet(features, labels)
        run = lambda: coop.fit(train, names, progress=False)  # noqa: E731  one epoch = one step of 32
    elif workload == "zeroshot":
        run = lambda: zeroshot_weights(backbone, names, ["a photo of a {}."], progress=False)  # noqa: E731
    elif workload == "ship_synthesis":
        ship = Ship(backbone, ShipConfig())
        run = lambda: ship.synthesize(names, per_class=4, progress=False)  # noqa: E731
    elif workload == "cache_score":
        rows, names = n_classes, class_names(1000)
        scratch = tempfile.TemporaryDirectory()  # removed when this process ends
        folder = Path(scratch.name)
        rng = np.random.default_rng(0)
        n_shards = -(-rows // DEFAULT_SHARD_SIZE)
        for i in range(n_shards):  # written before the clock starts
            size = min(DEFAULT_SHARD_SIZE, rows - i * DEFAULT_SHARD_SIZE)
            _write_atomic_npy(
                _shard_path(folder, i, DEFAULT_SHARD_SIZE),
                rng.standard_normal((size, backbone.embed_dim), np.float32).astype(np.float16),
            )
        zeroshot = build_method("zeroshot", backbone, {"templates": "a photo of a {}."})
        zeroshot.logits(features[:1], names)

        class Cached:
            def features(self, splits, split):
                return FeatureSet(
                    _read_shards(folder, DEFAULT_SHARD_SIZE, rows, backbone.embed_dim),
                    torch.zeros(rows, dtype=torch.long),
                )

        splits = DatasetSplits("scaling", names, [], [], [], Path("."))
        run = lambda: predict(zeroshot, Cached(), splits)  # noqa: E731
    else:
        zeroshot = build_method("zeroshot", backbone, {"templates": "a photo of a {}."})
        zeroshot.logits(features[:1], names)  # the classifier weights, built once and kept by the method
        test = FeatureSet(torch.randn(TEST_FEATURES, backbone.embed_dim), torch.zeros(TEST_FEATURES, dtype=torch.long))

        class Context:
            def features(self, splits, split):
                return test

        splits = DatasetSplits("scaling", names, [], [], [], Path("."))
        run = lambda: predict(zeroshot, Context(), splits)  # noqa: E731
    base = resident_mb()
    reset_peak()
    on_gpu = backbone.device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated()
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = peak_mb()
    row = {
        "workload": workload,
        "classes": n_classes,
        "seconds": round(seconds, 3),
        "peak_mb_above_setup": round(max(0.0, peak - base), 1),
    }
    if on_gpu:  # the GPU's own peak above what was allocated once set up
        row["gpu_peak_mb_above_setup"] = round((torch.cuda.max_memory_allocated() - gpu_base) / 2**20, 1)
    return row


def _cells(row: dict) -> tuple[str, str, str]:
    """seconds, peak MB and GPU peak MB of a point."""
    gpu = row.get("gpu_peak_mb_above_setup")
    return str(row["seconds"]), f"+{row['peak_mb_above_setup']:.0f}", "-" if gpu is None else f"+{gpu:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-vit", help="architecture (random weights)")
    parser.add_argument("--classes", help=f"class counts (default {SIZES['classes']})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", help=f"cached features read and scored (default {SIZES['rows']})")
    parser.add_argument("--workloads", default=",".join(WORKLOADS + DATA_WORKLOADS))
    parser.add_argument("--quick", action="store_true", help="10 classes, 1,000 rows: checks that every workload runs")
    parser.add_argument("--out-dir", type=Path, help="default bench/results; with --quick, a temporary folder")
    parser.add_argument("--point", nargs=2, metavar=("WORKLOAD", "CLASSES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:
        print(json.dumps(run_point(args.point[0], int(args.point[1]), args.model, args.device)))
        return 0
    sizes = {key: getattr(args, key) or (QUICK_SIZES if args.quick else SIZES)[key] for key in SIZES}
    scratch = tempfile.TemporaryDirectory() if args.quick and args.out_dir is None else None
    out_dir = args.out_dir or (Path(scratch.name) if scratch else HERE / "results")  # quick: keep the recorded tables
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu-{torch.get_num_threads()}threads"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"scaling-{args.model}-{device.replace(' ', '_')}"
    rows, failed = [], False
    for workload in args.workloads.split(","):
        for n in map(int, sizes["rows" if workload in DATA_WORKLOADS else "classes"].split(",")):
            result = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--device", args.device, "--point", workload, str(n)],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                print(f"{workload} {n}: failed: {result.stderr.strip()[-300:]}", flush=True)
                failed = True
                continue
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(
                f"{workload:22s} {n:>8} {'rows' if workload in DATA_WORKLOADS else 'classes'}: "
                "{} s, peak {} MB, GPU peak {} MB".format(*_cells(rows[-1])),
                flush=True,
            )
            write_tables(out, args.model, device, rows)  # after every point: a run cut short keeps what it measured
    print(f"wrote {out}.json and .md")
    return 1 if failed else 0


def write_tables(out: Path, model: str, device: str, rows: list[dict]) -> None:
    out.with_suffix(".json").write_text(
        json.dumps(
            {"model": model, "device": device, "date": str(date.today()), "torch": torch.__version__, "rows": rows},
            indent=1,
        )
        + "\n"
    )
    lines = [
        f"# Scaling with the number of classes: {model} (random weights), {device}, {date.today()}",
        "",
        "Peak memory: the process's peak resident memory above its size once the model and names are set up.",
        f"`score`: {TEST_FEATURES:,} test features scored in blocks. CoOp: one training step of 32 features.",
        "`cache_score`: that many cached features read from float16 shards and scored over 1,000 classes.",
        "",
        "GPU peak MB: the largest GPU memory allocated during the workload above what was allocated at its start.",
        "Each point is one call in a fresh process: its time includes first-call costs (on a GPU, lazily",
        "loaded kernels and clock ramp-up), which can outweigh the differences between small points.",
        "",
        "| workload | classes (rows for cache_score) | seconds | peak MB | GPU peak MB |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['workload']} | {r['classes']:,} | {' | '.join(_cells(r))} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
