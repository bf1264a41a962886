"""Training checkpoints as safetensors: tensors (weights, optimizer moments, RNG states) plus a JSON header
(step, optimizer hyper-parameters, anything else JSON-able). Written to a temp file and renamed, so a run killed
mid-write keeps its previous checkpoint."""
from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import CheckpointError

STATE_KEY = "clipadapt_state"


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata={STATE_KEY: json.dumps(state)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # truncated or corrupt files raise safetensors' own error types
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from e
    if STATE_KEY not in metadata:
        raise CheckpointError(f"checkpoint {path} is not a clipadapt training checkpoint")
    return tensors, json.loads(metadata[STATE_KEY])


def save_method_weights(path: str | Path, tensors: dict[str, torch.Tensor], method: str, config: Any,
                        **metadata: Any) -> None:
    """A method's learned weights as safetensors, written atomically, with the method name, its config (a
    dataclass) and any other JSON-able `metadata` in the header: what `load_method_weights` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"method": method, "config": json.dumps(dataclasses.asdict(config)),
              **{key: json.dumps(value) for key, value in metadata.items()}}
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=header)
    tmp.replace(path)


def load_method_weights(path: str | Path, method: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, header with JSON values decoded) of a `save_method_weights` file of `method`; a missing,
    corrupt or other method's file raises CheckpointError naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for missing or corrupt files
        raise CheckpointError(f"cannot read {method} weights from {path}: {e}") from e
    if header.get("method") != method:
        raise CheckpointError(f"{path} holds no {method} weights")
    try:
        return tensors, {k: (v if k == "method" else json.loads(v)) for k, v in header.items()}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the {method} weights' header is not what clipadapt writes: {e}") from e


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


def optimizer_from_checkpoint(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = value
    for name, value in saved["scalars"].items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def rng_to_checkpoint() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    numpy_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    return ({"rng.torch": torch.get_rng_state()},
            {"python": [version, list(internal), gauss],
             "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]]})


def rng_from_checkpoint(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
