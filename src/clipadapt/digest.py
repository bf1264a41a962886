"""The one fingerprint rule: what a result was made from, as a hex digest. Caches (features, few-shot subsets),
checkpoints (a run resumes only under its own fingerprint) and saved classifiers (the backbone they need) all key on
it, so they agree on what "the same" means.

The parts are hashed in order with SHA-256: text as its UTF-8 bytes, tensors and arrays as their raw bytes (their
dtype and layout as they are), anything else as JSON with sorted keys.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch


def fingerprint(*parts: Any, length: int = 16) -> str:
    """The first `length` hex digits of the SHA-256 of `parts` (see the module's rule)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            digest.update(part.encode())
        elif isinstance(part, torch.Tensor):
            digest.update(part.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(part, np.ndarray):
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True).encode())
    return digest.hexdigest()[:length]
