"""The one fingerprint rule gives the digests the earlier hand-written ones gave (written out here as they were), so
caches, few-shot subsets and checkpoints made before it still match."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch
from conftest import colour_images

from clipadapt import load_backbone
from clipadapt.data import load_dataset, split_fingerprint
from clipadapt.data.splits import _pool_digest
from clipadapt.digest import fingerprint
from clipadapt.features import cache_key


def test_parts_are_text_bytes_tensor_bytes_and_sorted_json():
    expected = hashlib.sha256()
    expected.update(b"text")
    expected.update(torch.arange(3, dtype=torch.int64).numpy().tobytes())
    expected.update(np.ones(2, dtype=np.float32).tobytes())
    expected.update(json.dumps({"b": 1, "a": [2, None]}, sort_keys=True).encode())
    parts = ("text", torch.arange(3), np.ones(2, dtype=np.float32), {"a": [2, None], "b": 1})
    assert fingerprint(*parts) == expected.hexdigest()[:16]
    assert fingerprint(*parts, length=64) == expected.hexdigest()
    assert fingerprint("a", "b") != fingerprint(["a", "b"])  # a list is JSON, not its items


def test_the_backbone_split_and_cache_digests_are_those_of_the_hand_written_code(tmp_path):
    torch.manual_seed(0)
    backbone = load_backbone("micro-vit")
    digest = hashlib.sha256(json.dumps(backbone.config, sort_keys=True).encode())
    for key, tensor in sorted(backbone.model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    assert backbone.fingerprint() == digest.hexdigest()[:16]

    splits = load_dataset(f"imagefolder:{colour_images(tmp_path / 'c', {'train': 2, 'val': 1})}")
    digest = hashlib.sha256()
    for sample in splits.train:
        stat = os.stat(sample.path)
        digest.update(json.dumps([str(sample.path), sample.label, stat.st_size, stat.st_mtime_ns]).encode() + b"\n")
    assert split_fingerprint(splits.train) == digest.hexdigest()[:16]

    transform = backbone.image_transform()
    digest = hashlib.sha256()
    for part in (backbone.fingerprint(), split_fingerprint(splits.train), repr(transform)):
        digest.update(part.encode())
    assert cache_key(backbone, splits.train, transform) == digest.hexdigest()[:20]

    digest = hashlib.sha256(json.dumps([splits.classnames, False]).encode())
    for samples in (splits.train, splits.val):
        entries = [(s.path.relative_to(splits.root.absolute()).as_posix(), s.label) for s in samples]
        digest.update(json.dumps(sorted(entries)).encode())
    assert _pool_digest(splits, False) == digest.hexdigest()[:12]
