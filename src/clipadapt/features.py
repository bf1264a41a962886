"""Frozen image features, computed once and cached on disk.

A cache entry is a folder named by a digest of (model weights, the samples' files, the transform). Features are
written in float16 shards of `shard_size` images, each shard written to a temp file of the writing process's own
and renamed, so an interrupted extraction recomputes only the missing shards and never trusts a half-written one,
and processes that share a cache may compute the same entry at once. `meta.json` is
written last and describes the complete entry. Shards are memory-mapped when read.

Under torchrun (a process group initialized), rank 0 lists the missing shards and rank r computes every
world_size-th of them; the ranks then agree on success (one failing stops all), rank 0 writes `meta.json`, and
every rank reads the whole entry.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import ImageDataset, Sample, split_fingerprint
from .digest import fingerprint
from .errors import ClipadaptError
from .paths import default_cache_dir, write_atomic
from .training.distributed import distributed_world, threads_beside_workers

DEFAULT_SHARD_SIZE = 2048
T = TypeVar("T")


@dataclass
class FeatureSet:
    """Image features [N, D] (float32, not normalized) with their labels [N], and the samples they came from
    (for methods that re-encode augmented images instead of using the cache)."""

    features: torch.Tensor
    labels: torch.Tensor
    samples: list[Sample] | None = None

    def __len__(self) -> int:
        return len(self.labels)


def cache_key(backbone, samples: Sequence[Sample], transform) -> str:
    return fingerprint(backbone.fingerprint(), split_fingerprint(samples), repr(transform), length=20)


def _tmp_path(path: Path) -> Path:
    """A temp name of this process's own (host and pid in it): processes that share a cache and compute the same
    entry at once never write into one file, and a finished entry can tell abandoned temp files from live ones."""
    return path.with_name(f"{path.name}~{socket.gethostname()}~{os.getpid()}.tmp")


def _is_abandoned(tmp: Path) -> bool:
    """Whether a temp file's writer is gone: this process (between writes it has none open), or a process of this
    host that no longer runs (killed mid-write). Another host's temp files are left alone (that host may still be
    writing), and so is a temp name not of this form (not the cache's)."""
    parts = tmp.name[: -len(".tmp")].split("~")
    if len(parts) != 3:
        return False
    host, pid = parts[1], parts[2]
    if host != socket.gethostname() or not pid.isdecimal():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def _write_atomic_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: given a name, np.save would add ".npy" to it
            np.save(f, array)

    write_atomic(path, write, tmp=_tmp_path(path))


def _shard_path(folder: Path, index: int, shard_size: int) -> Path:
    # The size is in the name: shards written with another --shard-size cover other rows and are never mixed in.
    return folder / f"shard_{shard_size}_{index:05d}.npy"


def _complete_shard_size(meta_path: Path, n_samples: int) -> int | None:
    """The shard size a complete entry was written with (its meta.json), or None."""
    try:
        meta = json.loads(meta_path.read_text())
        return int(meta["shard_size"]) if meta["num_samples"] == n_samples else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _shard_is_complete(path: Path, expected_rows: int) -> bool:
    try:
        return np.load(path, mmap_mode="r").shape[0] == expected_rows
    except Exception:  # noqa: BLE001  a damaged shard (zero bytes: EOFError; garbage: ValueError) is recomputed
        return False


@torch.no_grad()
def extract_features(
    backbone,
    samples: Sequence[Sample],
    cache_dir: str | Path | None = None,
    transform=None,
    batch_size: int = 64,
    num_workers: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
    desc: str = "extract",
) -> FeatureSet:
    """Features of `samples` through `backbone`'s image encoder, from the cache when present."""
    if shard_size < 1:
        raise ClipadaptError(f"shard_size must be at least 1, got {shard_size}")
    transform = transform if transform is not None else backbone.image_transform(train=False)
    folder = Path(cache_dir or default_cache_dir()) / "features" / cache_key(backbone, samples, transform)
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    rank, world_size = distributed_world()
    device = backbone.device
    # Three phases; after each, all ranks learn whether any failed (instead of waiting at a collective for ever).
    # 1. Rank 0 alone looks at the folder: the shard size (a complete entry is read as written) and what is missing.
    plan = _collectively(rank == 0, lambda: _plan_shards(folder, len(samples), shard_size), world_size, device)
    if world_size > 1:
        shared = [plan]
        dist.broadcast_object_list(shared, src=0)
        plan = shared[0]
    shard_size, todo = plan
    # 2. Each rank encodes every world_size-th missing shard.
    _collectively(
        True,
        lambda: _extract_shards(
            backbone,
            samples,
            folder,
            todo[rank::world_size],
            shard_size,
            transform,
            batch_size,
            num_workers,
            progress and rank == 0,
            desc,
        ),
        world_size,
        device,
    )
    # 3. Rank 0 describes the complete entry.
    meta = {
        "num_samples": len(samples),
        "shard_size": shard_size,
        "dim": backbone.embed_dim,
        "model": backbone.name,
        "transform": repr(transform),
    }
    _collectively(rank == 0, lambda: _finish_entry(folder, shard_size, meta), world_size, device)
    return FeatureSet(
        features=_read_shards(folder, shard_size, len(samples), backbone.embed_dim),
        labels=labels,
        samples=list(samples),
    )


def _collectively(here: bool, work: Callable[[], T], world_size: int, device: torch.device) -> T | None:
    """`work()` where `here` holds, then every rank learns whether it failed on any rank (see `_agree`)."""
    result, failure = None, None
    if here:
        try:
            result = work()
        except Exception as exc:  # noqa: BLE001  re-raised by _agree, after the other ranks are told
            failure = exc
    _agree(failure, world_size, device)
    return result


def _agree(failure: Exception | None, world_size: int, device: torch.device) -> None:
    """Raise `failure` on its rank, and on every other rank an error saying that one failed."""
    if world_size > 1:
        failed = torch.tensor([failure is not None], dtype=torch.int32, device=device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item() and failure is None:
            raise ClipadaptError("feature extraction failed on another rank (its error is in its own output)")
    if failure is not None:
        raise failure


def _plan_shards(folder: Path, n_samples: int, shard_size: int) -> tuple[int, list[int]]:
    """(the shard size to use, the shards missing or damaged). An entry left incomplete loses its meta.json."""
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json"
    written = _complete_shard_size(meta_path, n_samples)
    if written:
        shard_size = written
    n_shards = (n_samples + shard_size - 1) // shard_size
    todo = [
        i
        for i in range(n_shards)
        if not _shard_is_complete(_shard_path(folder, i, shard_size), min(shard_size, n_samples - i * shard_size))
    ]
    if todo:
        meta_path.unlink(missing_ok=True)  # the entry is incomplete until every shard is back
    return shard_size, todo


def _finish_entry(folder: Path, shard_size: int, meta: dict) -> None:
    """Remove what other shard sizes and killed writes left, then write meta.json (atomically, last)."""
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        return
    for stale in folder.glob("shard_*.npy"):
        if not stale.name.startswith(f"shard_{shard_size}_"):
            stale.unlink(missing_ok=True)
    for tmp in folder.glob("*.tmp"):
        if _is_abandoned(tmp):
            tmp.unlink(missing_ok=True)
    write_atomic(meta_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=1)), tmp=_tmp_path(meta_path))


def _extract_shards(
    backbone,
    samples: Sequence[Sample],
    folder: Path,
    indices: Sequence[int],
    shard_size: int,
    transform,
    batch_size: int,
    num_workers: int,
    progress: bool,
    desc: str,
) -> None:
    """Encode and write (atomically) the shards `indices` of `samples`."""
    bar = tqdm(
        total=sum(min(shard_size, len(samples) - i * shard_size) for i in indices),
        desc=desc,
        unit="img",
        disable=not progress,
    )
    with threads_beside_workers(backbone.device, num_workers):
        for index in indices:
            shard = samples[index * shard_size : (index + 1) * shard_size]
            # No more workers than the shard has batches: each costs a process start.
            loader = DataLoader(
                ImageDataset(shard, transform),
                batch_size=batch_size,
                num_workers=min(num_workers, math.ceil(len(shard) / batch_size)),
                pin_memory=backbone.device.type == "cuda",
            )  # pinned in the loader, beside encoding
            chunks = []
            for images, _, _ in loader:
                chunks.append(backbone.encode_image(images).float().cpu().numpy().astype(np.float16))
                bar.update(len(images))
            _write_atomic_npy(_shard_path(folder, index, shard_size), np.concatenate(chunks))
    bar.close()


def _read_shards(folder: Path, shard_size: int, rows: int, dim: int) -> torch.Tensor:
    """The float32 features [rows, dim], filled shard by shard from memory-mapped float16 files: the peak memory is
    the result plus one shard (concatenating first would hold the float16 copy and the float32 one at once)."""
    features = torch.empty(rows, dim, dtype=torch.float32)
    start = 0
    for i in range((rows + shard_size - 1) // shard_size):
        shard = np.load(_shard_path(folder, i, shard_size), mmap_mode="r")
        features[start : start + len(shard)] = torch.from_numpy(np.asarray(shard, dtype=np.float32))
        start += len(shard)
    return features
