"""Shared by the bench scripts (run as `python bench/NAME.py`, so this folder is on the import path)."""

from __future__ import annotations

import argparse
import os
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch


def clock() -> float:
    """perf_counter after the GPU (if any) has finished its queued work: GPU timings are otherwise the launch time."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Mean seconds per call of `fn` over `repeats` calls, after one warm-up call."""
    fn()
    start = clock()
    for _ in range(repeats):
        fn()
    return (clock() - start) / repeats


def device_waits(run: Callable[[], object]) -> str:
    """Where `run()` makes the host wait for the GPU (torch's CUDA sync debug mode: reads of device values,
    blocking copies), counted by the innermost line of clipadapt's code on the stack (waits in a backward pass count
    at its `backward()` call), most first: e.g. `loop.py:218 x3, unicl.py:197 x1`."""
    waits: Counter[str] = Counter()

    def record(message, *_args, **_kwargs) -> None:
        if "synchroniz" not in str(message):  # torch's words for a wait: "called a synchronizing CUDA operation"
            return
        ours = [f for f in traceback.extract_stack() if f"{os.sep}clipadapt{os.sep}" in f.filename]
        waits[f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "outside clipadapt"] += 1

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return ", ".join(f"{where} x{n}" for where, n in waits.most_common()) or "none"


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (bench/run.py --device passes it on)")
