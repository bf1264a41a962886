"""Processes and cores: torch.distributed's rank and world size, the cores a process may use, DataLoader workers
beside the main process, and the GPU settings a training command turns on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(device: str | torch.device) -> int:
    """DataLoader worker processes for image decoding when none are asked for: on a GPU, up to 8 beside the main
    process (8 workers extracted ViT-B-16 features 3x faster than one process on an H200: bench/extract_workers.py),
    the node's cores shared among the processes torchrun started on it; on a CPU none, since the encoder needs the
    cores itself."""
    if torch.device(device).type != "cuda":
        return 0
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(8, available_cores() // processes - 1))


def gpu_training_settings() -> None:
    """What open_clip's trainer sets on a GPU: TF32 for the matmuls left in fp32 (outside bf16 autocast), and cuDNN
    choosing convolution kernels by timing them for the (fixed) input size. Process-wide, so commands set it
    (`clipadapt pretrain`, bench/unicl_step.py), not library calls."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def distributed_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not running under torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def threads_beside_workers(device: torch.device, num_workers: int) -> Iterator[None]:
    """On a CPU, DataLoader workers decode images on cores of their own and the main process keeps the rest
    (sharing them all made extraction slower than one process: bench/extract_workers.py)."""
    threads = torch.get_num_threads()
    if num_workers and device.type == "cpu":
        torch.set_num_threads(max(1, min(threads, available_cores() - num_workers)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)
