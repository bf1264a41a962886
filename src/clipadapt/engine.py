"""The one training loop: warm-up + cosine learning rate, gradient clipping, bf16 autocast on GPU, a progress
bar, a guard against non-finite losses, gradient averaging across processes, and atomic checkpoints from which
a rerun of the same command resumes exactly (weights, optimizer, step, RNG states; the caller's batches are a
function of (epoch, offset) so the data order resumes too)."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torchvision import transforms
from tqdm.auto import tqdm

from .checkpoint import (
    load_checkpoint_or_previous,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    previous_path,
    rng_from_checkpoint,
    rng_to_checkpoint,
    save_checkpoint,
)
from .data import load_image
from .errors import CheckpointError, ClipadaptError

CHECKPOINT_NAME = "checkpoint_last.safetensors"
# Whether a Trainer built without an explicit skip_nonfinite skips steps whose loss is not finite (the CLI's
# --skip-nonfinite sets it around a whole command, whichever methods train inside it).
_SKIP_NONFINITE: contextvars.ContextVar[bool] = contextvars.ContextVar("skip_nonfinite", default=False)


@contextlib.contextmanager
def _set_within(variable: contextvars.ContextVar, value: Any) -> Iterator[None]:
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def skipping_nonfinite_steps(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Within this context, training steps whose loss is NaN or infinite are skipped (and reported) instead of
    stopping the run."""
    return _set_within(_SKIP_NONFINITE, enabled)


# DataLoader worker processes that decode and augment the images of prompt learners trained with augment=true
# (protocols set it from --workers around a method's fit).
_DECODING_WORKERS: contextvars.ContextVar[int] = contextvars.ContextVar("decoding_workers", default=0)


def decoding_workers(count: int) -> contextlib.AbstractContextManager:
    """Within this context, prompt learners that re-encode augmented images decode the coming batches in `count`
    worker processes (each batch exactly as `load_batch` makes it in the main process)."""
    return _set_within(_DECODING_WORKERS, count)


def cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up to `base_lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1 + math.cos(math.pi * progress))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's split: no weight decay on gains, biases, norms and the logit scale."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


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


class Trainer:
    """Runs `step_fn(batch, step) -> loss` over `total_steps` optimizer steps of `module`'s trainable weights."""

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        total_steps: int,
        steps_per_epoch: int,
        lr_at: Callable[[int], float],
        out_dir: str | Path | None = None,
        run_fingerprint: str = "",
        checkpoint_every: int = 200,
        grad_clip: float | None = None,
        skip_nonfinite: bool | None = None,
        after_step: Callable[[], None] | None = None,
        validate: Callable[[], dict[str, float]] | None = None,
        progress: bool = True,
        desc: str = "train",
    ):
        if total_steps < 1 or steps_per_epoch < 1:
            raise ClipadaptError(f"nothing to train: {total_steps} steps, {steps_per_epoch} per epoch")
        self.module, self.optimizer = module, optimizer
        self.total_steps, self.steps_per_epoch, self.lr_at = total_steps, steps_per_epoch, lr_at
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_fingerprint = run_fingerprint
        self.checkpoint_every, self.grad_clip = checkpoint_every, grad_clip
        self.skip_nonfinite = _SKIP_NONFINITE.get() if skip_nonfinite is None else skip_nonfinite
        self.after_step, self.validate, self.progress, self.desc = after_step, validate, progress, desc
        self.rank, self.world_size = distributed_world()
        self.step = 0
        self.losses: list[float | None] = []  # mean loss of each completed epoch
        self.validation: list[dict[str, float]] = []  # `validate()` after each completed epoch
        self._epoch_loss_sum, self._epoch_loss_count = 0.0, 0
        self.seconds = 0.0
        self.resumed_from: int | None = None
        self.skipped_steps: list[int] = []  # steps whose loss was not finite (with skip_nonfinite)
        if self.checkpoint_path is not None and (
            self.checkpoint_path.is_file() or previous_path(self.checkpoint_path).is_file()
        ):
            self._resume()

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None

    # ---- checkpoints -----------------------------------------------------------------------------------
    def _save(self) -> None:
        if self.checkpoint_path is None or self.rank != 0:
            return
        optim_tensors, optim_state = optimizer_to_checkpoint(self.optimizer)
        rng_tensors, rng_state = rng_to_checkpoint()
        tensors = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        tensors.update(optim_tensors)
        tensors.update(rng_tensors)
        state = {
            "step": self.step,
            "run": self.run_fingerprint,
            "optimizer": optim_state,
            "rng": rng_state,
            "epoch_losses": self.losses,
            "epoch_loss_sum": self._epoch_loss_sum,
            "epoch_loss_count": self._epoch_loss_count,
            "seconds": self.seconds,
            "skipped_steps": self.skipped_steps,
            "validation": self.validation,
        }
        save_checkpoint(self.checkpoint_path, tensors, state)

    def _resume(self) -> None:
        tensors, state, used = load_checkpoint_or_previous(self.checkpoint_path)
        if state["run"] != self.run_fingerprint:
            raise CheckpointError(
                f"checkpoint {used} belongs to a run with a different configuration; "
                "use another output folder (or delete the checkpoint to start over)"
            )
        self.module.load_state_dict(
            {k.removeprefix("module."): v for k, v in tensors.items() if k.startswith("module.")}
        )
        optimizer_from_checkpoint(self.optimizer, tensors, state["optimizer"])
        rng_from_checkpoint(tensors, state["rng"])
        self.step = self.resumed_from = state["step"]
        self.losses = state["epoch_losses"]
        self._epoch_loss_sum, self._epoch_loss_count = state["epoch_loss_sum"], state["epoch_loss_count"]
        self.seconds = state["seconds"]
        # Absent from checkpoints written before they existed.
        self.skipped_steps, self.validation = state.get("skipped_steps", []), state.get("validation", [])

    # ---- the loop --------------------------------------------------------------------------------------
    def _sync_gradients(self) -> None:
        if self.world_size == 1:
            return
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    dist.all_reduce(param.grad)
                    param.grad /= self.world_size

    def _read_loss(self, loss: torch.Tensor) -> tuple[float, bool]:
        """The loss's value and whether it is finite on every rank (all ranks must skip a step together or none
        does), in one read of the device: the step's one wait for it."""
        loss = loss.detach().float().reshape(1)
        if self.world_size == 1:
            value = loss.item()
            return value, math.isfinite(value)
        finite = torch.isfinite(loss).float()
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        value, finite_everywhere = torch.cat([loss, finite]).tolist()
        return value, bool(finite_everywhere)

    @staticmethod
    def _nonfinite(value: float) -> str:
        return f"loss is {value}" if not math.isfinite(value) else "loss is not finite on another process"

    def summary(self) -> dict:
        """What every training summary reports about the loop."""
        return {
            "steps": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch_losses": self.losses,
            "seconds": self.seconds,
            "resumed_from_step": self.resumed_from,
            "skipped_steps": self.skipped_steps,
            **({"validation": self.validation} if self.validate else {}),
        }

    def fit(
        self, epoch_batches: Callable[[int, int], Iterable[Any]], step_fn: Callable[[Any, int], torch.Tensor]
    ) -> Trainer:
        """`epoch_batches(epoch, offset)` yields the batches of `epoch` from batch `offset` on."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        device_type = params[0].device.type
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=self.desc,
            unit="step",
            disable=not self.progress or self.rank != 0,
        )
        start = time.time() - self.seconds
        while self.step < self.total_steps:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            for batch in epoch_batches(epoch, offset):
                lr = self.lr_at(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)  # groups may train at a multiple of the lr
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
                    loss = step_fn(batch, self.step)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # The loss is read (the step's one wait for the device) after the backward pass is queued: the GPU
                # is left idle only while the host queues the optimizer step and the next forward pass. The
                # gradients of a loss that is not finite are dropped, the weights untouched.
                value, finite = self._read_loss(loss)
                if finite:
                    self._sync_gradients()
                    if self.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
                    self.optimizer.step()
                    self._epoch_loss_sum += value
                    self._epoch_loss_count += 1
                elif self.skip_nonfinite:  # the step counts (the schedule and sampler stay aligned), nothing changes
                    self.optimizer.zero_grad(set_to_none=True)
                    self.skipped_steps.append(self.step)
                    tqdm.write(
                        f"{self.desc}: {self._nonfinite(value)} at step {self.step}; step skipped", file=sys.stderr
                    )
                else:
                    raise ClipadaptError(
                        f"{self._nonfinite(value)} at step {self.step}; stopped, the last good checkpoint is kept"
                        + (f" in {self.checkpoint_path}" if self.checkpoint_path else "")
                        + " (--skip-nonfinite skips such steps instead)"
                    )
                if self.after_step is not None:  # also after a skipped step: end-of-epoch validation still runs
                    self.after_step()
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
                if self.step % self.steps_per_epoch == 0:
                    count = self._epoch_loss_count
                    self.losses.append(self._epoch_loss_sum / count if count else None)  # None: every step skipped
                    self._epoch_loss_sum, self._epoch_loss_count = 0.0, 0
                    if self.validate is not None:
                        self.validation.append(self.validate())
                        bar.set_postfix(loss=f"{value:.4f}", **{k: f"{v:.4f}" for k, v in self.validation[-1].items()})
                self.seconds = time.time() - start
                if (
                    self.step % self.checkpoint_every == 0
                    or self.step % self.steps_per_epoch == 0
                    or self.step == self.total_steps
                ):
                    self._save()
                if self.step >= self.total_steps:
                    break
            else:
                if self.step % self.steps_per_epoch:  # the batches ran out before the epoch's step count
                    raise ClipadaptError(f"epoch {epoch} yielded fewer than {self.steps_per_epoch} batches")
        bar.close()
        return self


def load_batch(samples: Sequence, indices: torch.Tensor, transform: Callable, seed: int) -> torch.Tensor:
    """The images `samples[indices]` through `transform`, stacked; random transforms draw from `seed` (torchvision
    uses the global CPU RNG, timm's augmentations Python's `random` and NumPy's; all are left as they were), so a
    batch is a function of its seed."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator only: GPU generators are not forked here
            random.seed(seed)
            np.random.seed(seed % 2**32)
            return torch.stack([transform(load_image(samples[i].path)) for i in indices.tolist()])
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


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


def training_batches(
    n: int,
    batch_size: int,
    steps_per_epoch: int,
    epochs: int,
    seed: int,
    samples: Sequence | None = None,
    transform: Callable | None = None,
    workers: int = 0,
) -> Callable[[int, int], Iterator[tuple[torch.Tensor, torch.Tensor | None]]]:
    """`batches(epoch, offset)` for `Trainer.fit`: the steps of `epoch` from `offset` on, as (indices, images).
    Indices: a permutation of the n samples seeded by (seed, epoch), cut into `batch_size` slices. Images, with a
    `transform`: `samples[indices]` through it as `load_batch` makes them with the step's seed (so a resumed run
    draws the same crops), decoded at the step, or ahead in `workers` DataLoader processes over every remaining
    step (started once, not per epoch); without a transform, None."""

    def epoch_chunks(epoch: int, offset: int) -> list[torch.Tensor]:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        return [order[b * batch_size : (b + 1) * batch_size] for b in range(offset, steps_per_epoch)]

    decoded = None

    def batches(epoch: int, offset: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        nonlocal decoded
        chunks = epoch_chunks(epoch, offset)
        first = epoch * steps_per_epoch + offset
        if transform is None:
            yield from ((indices, None) for indices in chunks)
        elif not workers:
            yield from (
                (indices, load_batch(samples, indices, transform, seed * 1_000_003 + first + i))
                for i, indices in enumerate(chunks)
            )
        else:
            if decoded is None:
                remaining = chunks + [c for e in range(epoch + 1, epochs) for c in epoch_chunks(e, 0)]
                tasks = [(indices, seed * 1_000_003 + first + i) for i, indices in enumerate(remaining)]
                decoded = iter(decoded_batches(samples, tasks, transform, min(workers, len(tasks))))
            for _ in chunks:
                yield next(decoded)

    return batches


def decoded_batches(
    samples: Sequence,
    tasks: Sequence[tuple[torch.Tensor, int]],
    transform: Callable,
    workers: int,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """(indices, images) of each task = (indices, seed), as `load_batch` makes them, decoded ahead in `workers`
    DataLoader processes (none: in this one, when iterated)."""
    return torch.utils.data.DataLoader(
        AugmentedBatches(samples, tasks, transform),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator(),
    )  # the global RNG left alone


class AugmentedBatches(torch.utils.data.Dataset):
    """Item i: (indices, `load_batch(samples, indices, transform, seed)`) of task i = (indices, seed): whole
    batches, so a DataLoader's workers make each exactly as the main process would, seeded the same way."""

    def __init__(self, samples: Sequence, tasks: Sequence[tuple[torch.Tensor, int]], transform: Callable):
        self.samples, self.tasks, self.transform = samples, tasks, transform

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices, seed = self.tasks[i]
        return indices, load_batch(self.samples, indices, self.transform, seed)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """`model`'s weights take no gradients inside the block (gradients still flow through it to learned inputs,
    as prompts through a frozen text encoder); without this, every step would also compute gradients for all of
    CLIP. What was trainable before is trainable again afterwards."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for param in trainable:
            param.requires_grad_(True)


# ---- prompt learning (CoOp, CoCoOp): the official recipe both share ------------------------------------------
# KaiyangZhou/CoOp trains with Dassl: SGD (momentum 0.9, weight decay 5e-4 on every learned weight), one epoch
# at a constant 1e-5, then cosine over the epochs, the lr set once per epoch; a random order every epoch, batches
# of `batch_size` with the last partial batch dropped when there is at least one full batch; train images
# augmented with random resized crop (scale 0.08-1) and horizontal flip.


SELECTIONS = ("last", "val")
SCHEDULES = ("dassl", "cosine_steps")
OPTIMIZERS = ("sgd", "adamw")
# What train_prompt_learner used for these settings before every method declared them: a run's fingerprint leaves
# a setting out at this value, so runs trained before they were declared still resume.
_UNDECLARED = {
    "drop_last": True,
    "schedule": "dassl",
    "optimizer": "sgd",
    "momentum": 0.0,
    "crop_scale": 0.08,
    "warmup_epochs": 0,
    "warmup_lr": 0.0,
}


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
    settings = {
        key: value
        for key, value in asdict(config).items()
        if key not in ignore and not (key in _UNDECLARED and _UNDECLARED[key] == value)
    }
    return json.dumps([settings, *parts], sort_keys=True)


def dassl_lr(epoch: int, epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> float:
    """The lr of `epoch` under Dassl's ConstantWarmupScheduler over CosineAnnealingLR(T_max=epochs), with
    WARMUP_RECOUNT=True: `warmup_lr` for the warm-up epochs, then the cosine restarts at its first value, so
    epoch e (>= warmup) gets lr * (1 + cos(pi * (e - warmup) / epochs)) / 2 and the last lr is not 0."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def dassl_train_transform(backbone, crop_scale: float = 0.08) -> Callable:
    """CoOp's train augmentation (Dassl `random_resized_crop`, `random_flip`, `normalize` with its default
    RRCROP_SCALE (0.08, 1); Tip-Adapter crops (0.5, 1)), at the backbone's size and normalization. open_clip's own
    train transform crops 0.9-1 and does not flip."""
    if not 0 < crop_scale <= 1:
        raise ClipadaptError(f"crop_scale must lie in (0, 1], got {crop_scale}")
    mean, std = backbone.normalization()
    bilinear = backbone.config.get("preprocess", {}).get("interpolation") == "bilinear"
    mode = transforms.InterpolationMode.BILINEAR if bilinear else transforms.InterpolationMode.BICUBIC
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(backbone.image_size, scale=(crop_scale, 1.0), interpolation=mode),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


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
    synthetic=None,
    synthetic_ratio: float = 1.0,
) -> dict[str, Any]:
    """Train `learner` (the only weights that change) with the official recipe: each step scores a batch of
    `train` (a FeatureSet) with `batch_loss(image_features, labels)`. Image features are the cached ones, or with
    `config.augment` re-encoded from `train.samples` through `dassl_train_transform` (image encoder frozen).
    Batches and augmentations are functions of (seed, epoch, step), so a run resumed from `out_dir` ends exactly
    where an uninterrupted one does.

    With `config.select == "val"`, `score(features) -> logits` of the learner's current state is applied to the
    `val` FeatureSet after every epoch and the learner ends at the most accurate epoch (the first of equals);
    otherwise at the last epoch, as the official code evaluates.

    `synthetic` (a FeatureSet of generated features, e.g. SHIP's, labelled in the same label space) joins every
    batch: round(synthetic_ratio x batch size) of its features drawn at random (a function of seed and step),
    as SHIP mixes real base-class and synthetic new-class features.

    Checkpoints in `out_dir` resume a run only when they match `training_fingerprint(config, *fingerprint,
    ignore=fingerprint_ignore)` (the method's name and class names go in `fingerprint`), the backbone and the
    training (and synthetic) features. Returns a summary: steps, epoch losses, per-epoch validation accuracies,
    best epoch. (The protocols save the trained method's weights: `Method.save`.)"""
    n = len(train)
    if n == 0:
        raise ClipadaptError("no training samples")
    validate = None
    if config.select == "val":
        if val is None or len(val) == 0:
            raise ClipadaptError("select=val needs a validation set")

        def val_accuracy() -> float:
            with torch.no_grad():
                predictions = score(val.features).argmax(dim=-1).cpu()
            return 100.0 * (predictions == val.labels).float().mean().item()

        validate = val_accuracy

    if config.augment and not train.samples:
        raise ClipadaptError("augment=true re-encodes the training images, but these features carry no samples")
    if synthetic is not None and (len(synthetic) == 0 or synthetic_ratio <= 0):
        raise ClipadaptError("synthetic features need at least one feature and a positive synthetic_ratio")
    if config.drop_last:
        steps_per_epoch = max(1, n // config.batch_size)  # Dassl drops the last partial batch if a full one exists
    else:
        steps_per_epoch = math.ceil(n / config.batch_size)
    device = backbone.device
    # The best state on validation is kept as buffers beside the learner, so that checkpoints carry it.
    holder = nn.Module()
    holder.learner = learner
    holder.best = copy.deepcopy(learner).requires_grad_(False)
    holder.register_buffer("val_accuracy", torch.full((epochs,), float("nan"), device=device))
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            learner.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:  # adamw: Tip-Adapter-F's choice, with its eps
        optimizer = torch.optim.AdamW(learner.parameters(), lr=config.lr, eps=1e-4, weight_decay=config.weight_decay)
    transform = dassl_train_transform(backbone, config.crop_scale) if config.augment else None
    run_fingerprint = ""
    if out_dir is not None:
        digest = hashlib.sha256(training_fingerprint(config, *fingerprint, ignore=fingerprint_ignore).encode())
        digest.update(backbone.fingerprint().encode())
        digest.update(train.labels.cpu().numpy().tobytes())
        digest.update(train.features.float().cpu().numpy().tobytes())
        if synthetic is not None:
            digest.update(f"{synthetic_ratio}".encode())
            digest.update(synthetic.labels.cpu().numpy().tobytes())
            digest.update(synthetic.features.float().cpu().numpy().tobytes())
        run_fingerprint = digest.hexdigest()[:16]

    workers = _DECODING_WORKERS.get() if transform is not None else 0
    batches = training_batches(
        n, config.batch_size, steps_per_epoch, epochs, config.seed, train.samples, transform, workers
    )

    def step_fn(batch: tuple[torch.Tensor, torch.Tensor | None], step: int) -> torch.Tensor:
        indices, images = batch
        # Copies through `to_device`: asynchronous to a GPU, so the host need not wait for the previous step.
        if images is None:
            features = backbone.to_device(train.features[indices])
        else:
            with torch.no_grad():
                features = backbone.encode_image(images).float()
        labels = backbone.to_device(train.labels[indices])
        if synthetic is not None:
            draw = torch.Generator().manual_seed(config.seed * 1_000_003 + step + 500_009)
            picked = torch.randint(len(synthetic), (max(1, round(synthetic_ratio * len(indices))),), generator=draw)
            features = torch.cat([features, backbone.to_device(synthetic.features[picked]).to(features.dtype)])
            labels = torch.cat([labels, backbone.to_device(synthetic.labels[picked])])
        return batch_loss(features, labels)

    def after_step() -> None:
        if validate is None or (trainer.step + 1) % steps_per_epoch:
            return
        epoch = trainer.step // steps_per_epoch
        accuracy = validate()
        previous = holder.val_accuracy[:epoch]
        if epoch == 0 or accuracy > previous.max().item():
            holder.best.load_state_dict(learner.state_dict())
        holder.val_accuracy[epoch] = accuracy

    trainer = Trainer(
        holder,
        optimizer,
        total_steps=epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        lr_at=(lambda step: cosine_lr(step, epochs * steps_per_epoch, 0, config.lr))
        if config.schedule == "cosine_steps"
        else (
            lambda step: dassl_lr(
                step // steps_per_epoch,
                epochs,
                config.lr,
                config.warmup_epochs,
                config.warmup_lr,
            )
        ),
        out_dir=out_dir,
        run_fingerprint=run_fingerprint,
        checkpoint_every=config.checkpoint_every,
        after_step=after_step,
        progress=progress,
        desc=desc,
    )
    with frozen(backbone.model), threads_beside_workers(device, workers):
        trainer.fit(batches, step_fn)
    summary = {**trainer.summary(), "epochs": epochs}
    if validate is not None:
        accuracies = holder.val_accuracy.tolist()
        best = max(range(epochs), key=lambda e: (accuracies[e], -e))
        learner.load_state_dict(holder.best.state_dict())
        summary.update(val_accuracies=accuracies, best_epoch=best + 1, val_accuracy=accuracies[best])
    return summary
