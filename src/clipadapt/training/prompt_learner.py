"""Training on cached features with the official prompt-learning recipe: the config CoOp, CoCoOp, CLIP-Adapter and
Tip-Adapter-F share (`TrainConfig`), what a checkpoint must match to be resumed, and `train_prompt_learner`."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..digest import fingerprint as digest  # `fingerprint` names the run's parts here
from ..errors import ClipadaptError
from .batches import dassl_train_transform, decoding_worker_count, training_batches
from .distributed import threads_beside_workers
from .loop import Trainer, frozen
from .schedules import cosine_lr, dassl_lr

# KaiyangZhou/CoOp trains with Dassl: SGD (momentum 0.9, weight decay 5e-4 on every learned weight), one epoch
# at a constant 1e-5, then cosine over the epochs, the lr set once per epoch; a random order every epoch, batches
# of `batch_size` with the last partial batch dropped when there is at least one full batch; train images
# augmented with random resized crop (scale 0.08-1) and horizontal flip.


SELECTIONS = ("last", "val")


SCHEDULES = ("dassl", "cosine_steps")


OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    """The training settings of the prompt learners and adapters (CoOp's official recipe by default); each method's
    Config extends it and overrides the defaults its official code uses. Checked when built: a misspelt key is
    refused by `build_config`, a bad value here."""

    epochs: int = 0  # 0: by shots per class, as CoOp's scripts (methods.coop.epochs_for_shots)
    batch_size: int = 32
    lr: float = 0.002
    optimizer: str = "sgd"  # sgd | adamw (Tip-Adapter-F's, with its eps 1e-4)
    momentum: float = 0.9  # sgd's
    weight_decay: float = 5e-4
    # dassl: constant warm-up epochs at warmup_lr, then a cosine stepped per epoch; cosine_steps: a cosine stepped
    # per batch down to 0, no warm-up (CosineAnnealingLR stepped per batch: Tip-Adapter-F, SHIP's CoOp)
    schedule: str = "dassl"
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    drop_last: bool = True  # Dassl drops the last partial batch of an epoch when a full one exists
    augment: bool = False  # re-encode random-crop/flip views of the train images every step (the official way)
    crop_scale: float = 0.08  # the smallest random-resized-crop area with augment (Dassl's)
    select: str = "last"  # last | val: keep the epoch with the best validation accuracy
    seed: int = 1
    checkpoint_every: int = 200  # steps; checkpoints are written only when fit gets an out_dir

    def __post_init__(self) -> None:
        for key, allowed in (("select", SELECTIONS), ("schedule", SCHEDULES), ("optimizer", OPTIMIZERS)):
            if getattr(self, key) not in allowed:
                raise ClipadaptError(f"{key} must be one of {', '.join(allowed)}, got '{getattr(self, key)}'")
        for key, least in (("batch_size", 1), ("checkpoint_every", 1), ("epochs", 0)):
            if getattr(self, key) < least:
                raise ClipadaptError(f"{key} must be at least {least}, got {getattr(self, key)}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ClipadaptError(f"crop_scale must lie in (0, 1], got {self.crop_scale}")


def training_fingerprint(config: TrainConfig, *parts: Any, ignore: Sequence[str] = ()) -> str:
    """What a run's checkpoints must match to be resumed: the config (less `ignore`: settings that change how the
    work is batched, not what is learned) and `parts` (class names, the method's name, ...)."""
    settings = {key: value for key, value in asdict(config).items() if key not in ignore}
    return json.dumps([settings, *parts], sort_keys=True)


def train_prompt_learner(
    learner: nn.Module,
    batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    backbone,
    train,
    config: TrainConfig,
    *,
    epochs: int,
    val=None,
    score: Callable[[torch.Tensor], torch.Tensor] | None = None,
    out_dir: str | Path | None = None,
    fingerprint: Sequence[Any] = (),
    fingerprint_ignore: Sequence[str] = (),
    progress: bool = True,
    desc: str = "train",
    generated=None,
    generated_ratio: float = 1.0,
) -> dict[str, Any]:
    """Train `learner` (the only weights that change) with the official recipe: each step scores a batch of
    `train` (a FeatureSet) with `batch_loss(image_features, labels)`. Image features are the cached ones, or with
    `config.augment` re-encoded from `train.samples` through `dassl_train_transform` (image encoder frozen).
    Batches and augmentations are functions of (seed, epoch, step), so a run resumed from `out_dir` ends exactly
    where an uninterrupted one does.

    With `config.select == "val"`, `score(features) -> logits` of the learner's current state is applied to the
    `val` FeatureSet after every epoch and the learner ends at the most accurate epoch (the first of equals);
    otherwise at the last epoch, as the official code evaluates.

    `generated` (a FeatureSet of generated features, e.g. SHIP's, labelled in the same label space) joins every
    batch: round(generated_ratio x batch size) of its features drawn at random (a function of seed and step),
    as SHIP mixes real base-class and generated new-class features.

    Checkpoints in `out_dir` resume a run only when they match `training_fingerprint(config, *fingerprint,
    ignore=fingerprint_ignore)` (the method's name and class names go in `fingerprint`), the backbone and the
    training (and generated) features. Returns a summary: steps, epoch losses, per-epoch validation accuracies,
    best epoch. (The protocols save the trained method's weights: `Method.save`.)"""
    _check_inputs(train, config, val, generated, generated_ratio)
    n = len(train)
    if config.drop_last:
        steps_per_epoch = max(1, n // config.batch_size)  # Dassl drops the last partial batch if a full one exists
    else:
        steps_per_epoch = math.ceil(n / config.batch_size)
    # The best state on validation is kept beside the learner, so that checkpoints carry it.
    holder = nn.Module()
    holder.learner = learner
    holder.best = copy.deepcopy(learner).requires_grad_(False)
    mixed = (generated, generated_ratio) if generated is not None else None
    run_fingerprint = ""
    if out_dir is not None:
        run_fingerprint = _run_fingerprint(config, fingerprint, fingerprint_ignore, backbone, train, mixed)
    transform = dassl_train_transform(backbone, config.crop_scale) if config.augment else None
    workers = decoding_worker_count() if transform is not None else 0
    batches = training_batches(
        n, config.batch_size, steps_per_epoch, epochs, config.seed, train.samples, transform, workers
    )
    trainer = Trainer(
        holder,
        _optimizer(learner, config),
        total_steps=epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        lr_at=_learning_rate(config, epochs, steps_per_epoch),
        out_dir=out_dir,
        run_fingerprint=run_fingerprint,
        checkpoint_every=config.checkpoint_every,
        validate=_keeping_the_best(holder, lambda: _accuracy(score, val)) if config.select == "val" else None,
        progress=progress,
        desc=desc,
    )
    with frozen(backbone.model), threads_beside_workers(backbone.device, workers):
        trainer.fit(batches, _step_function(backbone, train, batch_loss, config.seed, mixed))
    summary = {**trainer.summary(), "epochs": epochs}
    if config.select == "val":
        accuracies = [result["accuracy"] for result in summary.pop("validation")]
        best = max(range(epochs), key=lambda e: (accuracies[e], -e))
        learner.load_state_dict(holder.best.state_dict())
        summary.update(val_accuracies=accuracies, best_epoch=best + 1, val_accuracy=accuracies[best])
    return summary


def _check_inputs(train, config: TrainConfig, val, generated, generated_ratio: float) -> None:
    if len(train) == 0:
        raise ClipadaptError("no training samples")
    if config.select == "val" and (val is None or len(val) == 0):
        raise ClipadaptError("select=val needs a validation set")
    if config.augment and not train.samples:
        raise ClipadaptError("augment=true re-encodes the training images, but these features carry no samples")
    if generated is not None and (len(generated) == 0 or generated_ratio <= 0):
        raise ClipadaptError("generated features need at least one feature and a positive generated_ratio")


def _optimizer(learner: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            learner.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    # adamw: Tip-Adapter-F's choice, with its eps
    return torch.optim.AdamW(learner.parameters(), lr=config.lr, eps=1e-4, weight_decay=config.weight_decay)


def _learning_rate(config: TrainConfig, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate at each step: `cosine_steps` per batch, or Dassl's warm-up and cosine set once an epoch."""
    total = epochs * steps_per_epoch
    if config.schedule == "cosine_steps":
        return lambda step: cosine_lr(step, total, 0, config.lr)
    return lambda step: dassl_lr(step // steps_per_epoch, epochs, config.lr, config.warmup_epochs, config.warmup_lr)


def _run_fingerprint(
    config: TrainConfig, parts: Sequence[Any], ignore: Sequence[str], backbone, train, mixed: tuple | None
) -> str:
    """What a checkpoint must match to be resumed: the settings and `parts`, the backbone and the training (and
    generated) features."""
    data = [train.labels, train.features.float()]
    if mixed is not None:
        generated, ratio = mixed
        data += [f"{ratio}", generated.labels, generated.features.float()]
    return digest(training_fingerprint(config, *parts, ignore=ignore), backbone.fingerprint(), *data)


def _step_function(
    backbone, train, batch_loss: Callable, seed: int, mixed: tuple | None
) -> Callable[[tuple[torch.Tensor, torch.Tensor | None], int], torch.Tensor]:
    """One step's loss of a batch (indices, and re-encoded images with augment=true), with `mixed`'s generated
    features drawn into it (a function of seed and step)."""

    def step_loss(batch: tuple[torch.Tensor, torch.Tensor | None], step: int) -> torch.Tensor:
        indices, images = batch
        # Copies through `to_device`: asynchronous to a GPU, so the host need not wait for the previous step.
        if images is None:
            features = backbone.to_device(train.features[indices])
        else:
            with torch.no_grad():
                features = backbone.encode_image(images).float()
        labels = backbone.to_device(train.labels[indices])
        if mixed is not None:
            generated, ratio = mixed
            draw = torch.Generator().manual_seed(seed * 1_000_003 + step + 500_009)
            picked = torch.randint(len(generated), (max(1, round(ratio * len(indices))),), generator=draw)
            features = torch.cat([features, backbone.to_device(generated.features[picked]).to(features.dtype)])
            labels = torch.cat([labels, backbone.to_device(generated.labels[picked])])
        return batch_loss(features, labels)

    return step_loss


def _accuracy(score: Callable[[torch.Tensor], torch.Tensor], val) -> float:
    with torch.no_grad():
        predictions = score(val.features).argmax(dim=-1).cpu()
    return 100.0 * (predictions == val.labels).float().mean().item()


def _keeping_the_best(holder: nn.Module, accuracy: Callable[[], float]) -> Callable[[Trainer], dict[str, float]]:
    """The trainer's end-of-epoch validation: the learner's accuracy, its state kept in `holder.best` when no earlier
    epoch was as accurate."""

    def validate(trainer: Trainer) -> dict[str, float]:
        result = accuracy()
        if all(result > earlier["accuracy"] for earlier in trainer.validation):
            holder.best.load_state_dict(holder.learner.state_dict())
        return {"accuracy": result}

    return validate
