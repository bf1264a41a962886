"""Every command of the CLI on one device (a GPU: `bench/gpu.sh` runs this there), end to end on a small world
with the shipped model: extraction with DataLoader workers, each method and protocol the demo runs (fewer epochs),
`augment=true` re-encoding, UniCL pretraining and its resume, and the report. One line per case: `OK` with the
numbers from its metrics.json and the seconds, or `FAILED` with the error's last lines; the exit code is the
number of failures (125 when the world could not be generated). The tests run everything on the CPU; this is the
check that nothing assumes it.

    python scripts/device_smoke.py [--device cuda] [--out DIR] [--only NAME,...] [--world DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

from clipadapt.cli import main as clipadapt

# Small enough to generate in seconds, big enough for every protocol (32 object classes, base/new halves).
WORLD_SIZES = [
    "pretrain_train=2",
    "pretrain_val=1",
    "pretrain_test=1",
    "captions=2",
    "bird_captions=8",
    "pretrain_bird_train=2",
    "train=8",
    "val=2",
    "test=4",
]
FEW_EPOCHS = ["epochs=2"]
WORLD_FAILED = 125


def cases(world: Path, out: Path) -> dict[str, list[str]]:
    """name: `clipadapt` arguments (each run writes into out/name)."""
    objects, fine = f"world:objects:{world}", f"world:fine:{world}"
    targets = f"world:patterns:{world},world:scenes:{world}"
    photo = ["init=a photo of a"]
    runs = {
        "zeroshot-base2new": ["zeroshot", "--dataset", objects, "--protocol", "base2new", "--shots", "4"],
        "linear_probe-fewshot": ["linear_probe", "--dataset", objects, "--protocol", "fewshot", "--shots", "4"],
        "coop-base2new": ["coop", "--dataset", objects, "--protocol", "base2new", "--shots", "4", *photo, *FEW_EPOCHS],
        "coop-augment-fewshot": [
            "coop",
            "--dataset",
            objects,
            "--protocol",
            "fewshot",
            "--shots",
            "2",
            "augment=true",
            *photo,
            *FEW_EPOCHS,
        ],
        "cocoop-base2new": ["cocoop", "--dataset", objects, "--protocol", "base2new", "--shots", "4", "epochs=1"],
        "coop+ship-base2new": [
            "coop+ship",
            "--dataset",
            objects,
            "--protocol",
            "base2new",
            "--shots",
            "4",
            *photo,
            *FEW_EPOCHS,
            "ship.epochs=2",
        ],
        "clip_adapter+ship-gzsl": [
            "clip_adapter+ship",
            "--dataset",
            objects,
            "--protocol",
            "gzsl",
            *FEW_EPOCHS,
            "ship.epochs=2",
        ],
        "tip_adapter_f-crossdataset": [
            "tip_adapter",
            "--dataset",
            objects,
            "--protocol",
            "crossdataset",
            "--targets",
            targets,
            "--shots",
            "4",
            "finetune=true",
            *FEW_EPOCHS,
        ],
        "finetune-full": ["finetune", "--dataset", fine, "stage1_epochs=1", "batch_size=16"],
        "mpfgvc-full": [
            "mpfgvc",
            "--dataset",
            fine,
            "stage1_epochs=2",
            "stage2_epochs=1",
            "ssvp=true",  # the paper's configuration: the GPU path of SsVP's token selection too
            "ssvp_start_epoch=1",
            "batch_size=16",
        ],
    }
    found = {name: ["run", *argv, "--out", str(out / name), "--no-progress"] for name, argv in runs.items()}
    found["extract-workers"] = ["extract", "--dataset", objects, "--workers", "4", "--no-progress"]
    found["pretrain-unicl"] = [
        "pretrain",
        "--data",
        f"world:pretrain:{world},world:captions:{world}",
        "--out",
        str(out / "pretrain-unicl"),
        "--config",
        str(out / "pretrain.yaml"),
        "--no-progress",
    ]
    # The same command again: must load its finished checkpoint (fused AdamW state included) and stop.
    found[RESUME_CASE] = found["pretrain-unicl"]
    found["report"] = ["report", str(out), "--out", str(out / "report.html")]
    return found


RESUME_CASE = "pretrain-unicl-again"


def outcome(argv: list[str], name: str) -> str:
    """The headline numbers of the metrics.json the command wrote (its --out folder); raises if the resume case
    trained again instead of resuming."""
    path = Path(argv[argv.index("--out") + 1]) / "metrics.json" if "--out" in argv and argv[0] != "report" else None
    if path is None or not path.is_file():
        return ""
    metrics = json.loads(path.read_text())
    if name == RESUME_CASE and metrics.get("resumed_from_step") != metrics["steps"]:
        raise RuntimeError(
            f"not resumed from its finished checkpoint: resumed_from_step="
            f"{metrics.get('resumed_from_step')}, steps={metrics['steps']}"
        )
    if metrics.get("epoch_losses"):
        metrics["final_loss"] = metrics["epoch_losses"][-1]
    keys = (
        "accuracy",
        "base_accuracy",
        "new_accuracy",
        "harmonic_mean",
        "seen_accuracy",
        "unseen_accuracy",
        "average_target_accuracy",
        "steps",
        "resumed_from_step",
        "final_loss",
    )
    return " ".join(
        f"{key}={metrics[key]:.1f}" if isinstance(metrics[key], float) else f"{key}={metrics[key]}"
        for key in keys
        if metrics.get(key) is not None
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--world", type=Path, default=None, help="the small world (generated there if absent)")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()
    out = args.out or Path(scratch.name) / "runs"
    out.mkdir(parents=True, exist_ok=True)
    world, cache = args.world or Path(scratch.name) / "world", Path(scratch.name) / "cache"
    (out / "pretrain.yaml").write_text("epochs: 2\nbatch_size: 32\n")
    chosen = cases(world, out)
    names = [n for n in args.only.split(",") if n] or list(chosen)
    if set(names) - set(chosen):
        parser.error(f"unknown case(s) {', '.join(sorted(set(names) - set(chosen)))}; known: {', '.join(chosen)}")
    start = time.perf_counter()
    if clipadapt(["world", "--out", str(world), "--no-progress", *WORLD_SIZES]) != 0:
        return WORLD_FAILED
    print(f"world in {time.perf_counter() - start:.1f} s", flush=True)
    failures = 0
    for name in names:
        argv = chosen[name]
        if argv[0] != "report":
            argv = [*argv, "--device", args.device, "--cache", str(cache)]
        start = time.perf_counter()
        numbers = ""
        try:
            with contextlib.redirect_stdout(io.StringIO()) if name == "report" else contextlib.nullcontext():
                code = clipadapt(argv)  # (the report's tables would fill the log)
            error = "" if code == 0 else f"exit code {code}"
            numbers = "" if error else outcome(argv, name)
        except (Exception, SystemExit):  # a smoke test reports every failure and goes on (Ctrl-C still stops it)
            error = " | ".join(traceback.format_exc().strip().splitlines()[-6:])
        seconds = time.perf_counter() - start
        if error:
            failures += 1
            print(f"FAILED {name} ({seconds:.1f} s): {error}", flush=True)
        else:
            print(f"OK {name} ({seconds:.1f} s) {numbers}", flush=True)
    print(f"{len(names) - failures}/{len(names)} cases ran on {args.device}", flush=True)
    return failures


if __name__ == "__main__":
    sys.exit(main())
