"""Training checkpoints as safetensors: tensors (weights, optimizer moments, RNG states) plus a JSON header
(step, optimizer hyper-parameters, anything else JSON-able). Written to a temp file and renamed, so a run killed
mid-write keeps its previous checkpoint."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import CheckpointError, first_line
from .paths import write_atomic

STATE_KEY = "clipadapt_state"
CHECKSUM_KEY = "clipadapt_sha256"


def previous_path(path: str | Path) -> Path:
    """Where `save_checkpoint` keeps the checkpoint it replaced: the fallback when the newest one is damaged."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def _checksum(tensors: dict[str, torch.Tensor], state_json: str) -> str:
    digest = hashlib.sha256(state_json.encode())
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write to a temp file, fsync, keep the checkpoint it replaces as `previous_path(path)`, rename into place.
    The header carries a SHA-256 of every tensor byte and the state, so damage is detected on load."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    state_json = json.dumps(state)
    header = {STATE_KEY: state_json, CHECKSUM_KEY: _checksum(tensors, state_json)}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=header), keep_previous=previous_path(path))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, state) of a `save_checkpoint` file; CheckpointError when it is unreadable, not ours, or its
    contents do not match the checksum written with it (truncated, bit-flipped)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # truncated or corrupt files raise safetensors' own error types
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from e
    if STATE_KEY not in metadata:
        raise CheckpointError(f"checkpoint {path} is not a clipadapt training checkpoint")
    if CHECKSUM_KEY not in metadata:
        raise CheckpointError(f"checkpoint {path} has no checksum: not written by this clipadapt, or damaged")
    if metadata[CHECKSUM_KEY] != _checksum(tensors, metadata[STATE_KEY]):
        raise CheckpointError(f"checkpoint {path} is damaged: its contents do not match the checksum written with it")
    return tensors, json.loads(metadata[STATE_KEY])


def load_checkpoint_or_previous(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """The newest intact checkpoint: `path`, or when that is missing or damaged the one it replaced (with a
    warning on stderr). Returns (tensors, state, the file used)."""
    path, previous = Path(path), previous_path(path)
    try:
        return (*load_checkpoint(path), path)
    except CheckpointError as e:
        if not previous.is_file():
            raise
        print(f"clipadapt: {e}; resuming from the previous checkpoint {previous}", file=sys.stderr)
        try:
            return (*load_checkpoint(previous), previous)
        except CheckpointError as e2:
            raise CheckpointError(f"{e}; and the previous one: {e2}") from e2


def save_method_weights(
    path: str | Path, tensors: dict[str, torch.Tensor], method: str, config: Any, **metadata: Any
) -> None:
    """A method's learned weights as safetensors, written atomically, with the method name, its config (a
    dataclass), any other JSON-able `metadata` (class names, a classifier's description) and a SHA-256 of it all in
    the header: what `load_method_weights` reads back and checks."""
    header = {
        "method": method,
        "config": json.dumps(dataclasses.asdict(config)),
        **{key: json.dumps(value) for key, value in metadata.items()},
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header[CHECKSUM_KEY] = _checksum(tensors, json.dumps(header, sort_keys=True))
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def read_method_header(path: str | Path) -> dict[str, Any]:
    """The header of a `save_method_weights` file, JSON values decoded, without reading its tensors; CheckpointError
    naming the file when it is missing, not safetensors or not a clipadapt method's."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for missing or corrupt files
        raise CheckpointError(f"cannot read {path}: {first_line(e)}") from e
    if "method" not in header or "config" not in header:
        raise CheckpointError(f"{path} holds no clipadapt method weights")
    return _decoded(header, path)


def _decoded(header: dict[str, str], path: str | Path) -> dict[str, Any]:
    try:
        return {k: (v if k in ("method", CHECKSUM_KEY) else json.loads(v)) for k, v in header.items()}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the header is not what clipadapt writes: {e}") from e


def load_method_weights(path: str | Path, method: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, header with JSON values decoded) of a `save_method_weights` file of `method`; a missing,
    corrupt, damaged (its checksum does not match) or other method's file raises CheckpointError naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for missing or corrupt files
        raise CheckpointError(f"cannot read {method} weights from {path}: {first_line(e)}") from e
    if header.get("method") != method:
        raise CheckpointError(f"{path} holds no {method} weights")
    checksum = header.pop(CHECKSUM_KEY, None)
    if checksum is None:
        raise CheckpointError(f"{path} has no checksum: not written by this clipadapt, or damaged")
    if checksum != _checksum(tensors, json.dumps(header, sort_keys=True)):
        raise CheckpointError(f"{path} is damaged: its contents do not match the checksum written with it")
    return tensors, _decoded(header, path)


def load_module_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """Load `tensors` (from `load_method_weights`) into `module` when they have its parameter names and shapes; else a
    CheckpointError naming the file (another backbone, config or class list wrote it)."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        differing = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise CheckpointError(
            f"the {what} weights in {path} do not fit this backbone and config (differing: {', '.join(differing[:4])})"
        )
    module.load_state_dict(tensors)


def optimizer_to_checkpoint(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state split into tensors and JSON-able hyper-parameters."""
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{param_id}.{key}"] = value
            else:
                scalars[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_checkpoint(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], saved: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = value
    for name, value in saved["scalars"].items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    # Moments come back contiguous; give them their parameter's memory layout (e.g. channels-last), which a fused
    # optimizer step assumes.
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for param_id, param_state in state.items():
        param = params[param_id] if param_id < len(params) else None
        for key, value in param_state.items():
            if param is not None and torch.is_tensor(value) and value.shape == param.shape and value.ndim > 1:
                param_state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def rng_to_checkpoint() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    numpy_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    return (
        {"rng.torch": torch.get_rng_state()},
        {
            "python": [version, list(internal), gauss],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        },
    )


def rng_from_checkpoint(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
