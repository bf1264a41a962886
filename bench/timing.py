"""Shared by the bench scripts (run as `python bench/NAME.py`, so this folder is on the import path)."""
from __future__ import annotations

import time
from typing import Callable


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Mean seconds per call of `fn` over `repeats` calls, after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats
