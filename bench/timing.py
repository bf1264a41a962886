"""Shared by the bench scripts (run as `python bench/NAME.py`, so this folder is on the import path)."""
from __future__ import annotations

import argparse
import time
from typing import Callable

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


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (bench/run.py --device passes it on)")
