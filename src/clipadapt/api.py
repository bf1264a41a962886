"""The Python API in one call: `adapt` trains a method on a data set and returns it as a `Classifier` (what
`clipadapt run` trains, without the evaluation). `load_classifier` (classifier.py) reads one back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .backbone import load_backbone
from .classifier import Classifier
from .data import DatasetSplits, load_dataset
from .methods import build_method
from .protocols import RunContext, classifier_of, fit_method


def adapt(
    method: str,
    dataset: str | DatasetSplits,
    shots: int | None = None,
    seed: int = 1,
    model: str | dict | Path | None = None,
    pretrained: str | Path | None = None,
    device: str = "cpu",
    out: str | Path | None = None,
    cache: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    fewshot_sampler: str = "clipadapt",
    **config: Any,
) -> Classifier:
    """Train `method` (a registered name, `METHOD+ship` included; `config`: its settings, as `key=value` on the
    command line) on `dataset` (a spec such as `imagefolder:data/mine`, or loaded splits): on its train split, or
    CoOp's `shots`-per-class subset drawn with `seed` (by `fewshot_sampler`: clipadapt's, or "dassl" for the images
    CoOp's code draws). `model`/`pretrained` name the backbone (default: the shipped
    world model); with `out`, checkpoints go there (a rerun resumes) and the classifier is saved under it as
    `clipadapt run` saves it. `METHOD+ship` needs the names of classes without data: `unseen_classnames=[...]`."""
    splits = load_dataset(dataset) if isinstance(dataset, str) else dataset
    unseen = config.pop("unseen_classnames", ())
    backbone = load_backbone(model, pretrained, device=device)
    torch.manual_seed(seed)
    trained = build_method(method, backbone, config, source="adapt()", seed=seed)
    ctx = RunContext(
        backbone,
        cache_dir=Path(cache) if cache else None,
        out_dir=Path(out) if out else None,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        fewshot_sampler=fewshot_sampler,
    )
    fit_method(trained, ctx, splits, shots, seed, unseen_classnames=unseen)
    return classifier_of(trained, backbone, splits, seed, shots)
