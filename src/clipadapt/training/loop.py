"""The one training loop (`Trainer`): warm-up + cosine learning rate, gradient clipping, bf16 autocast on GPU, a
progress bar, a guard against non-finite losses, gradient averaging across processes, and atomic checkpoints from
which a rerun of the same command resumes exactly (weights, optimizer, step, RNG states; the caller's batches are
a function of (epoch, offset) so the data order resumes too)."""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import (
    load_checkpoint_or_previous,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    previous_path,
    rng_from_checkpoint,
    rng_to_checkpoint,
    save_checkpoint,
)
from ..errors import CheckpointError, ClipadaptError
from .distributed import distributed_world

CHECKPOINT_NAME = "checkpoint_last.safetensors"
TENSORBOARD_DIR = "tensorboard"  # beside the checkpoints: each training run's scalars, as open_clip's trainer logs
# open_clip's --log-every-n-steps default: the step scalars (means over the steps since the last log) go out every
# this many steps and at the end of every epoch. Writing them every step cost about 0.3 ms a step.
LOG_EVERY_STEPS = 100


# Whether a Trainer built without an explicit skip_nonfinite skips steps whose loss is not finite (the CLI's
# --skip-nonfinite sets it around a whole command, whichever methods train inside it).
_SKIP_NONFINITE: contextvars.ContextVar[bool] = contextvars.ContextVar("skip_nonfinite", default=False)


@contextlib.contextmanager
def set_within(variable: contextvars.ContextVar, value: Any) -> Iterator[None]:
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def skipping_nonfinite_steps(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Within this context, training steps whose loss is NaN or infinite are skipped (and reported) instead of
    stopping the run."""
    return set_within(_SKIP_NONFINITE, enabled)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's split: no weight decay on gains, biases, norms and the logit scale."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


class Trainer:
    """Runs `step_fn(batch, step) -> loss` over `total_steps` optimizer steps of `module`'s trainable weights.
    `after_step()` runs after every step (skipped ones too); `validate(trainer)`, the one validation hook, after each
    epoch: its named numbers are logged as `val/NAME` and kept, in checkpoints too, as `validation` (one dict an
    epoch), which it may read to compare with earlier epochs."""

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
        validate: Callable[[Trainer], dict[str, float]] | None = None,
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
        self.validation: list[dict[str, float]] = []  # `validate(self)` after each completed epoch
        self._epoch_loss_sum, self._epoch_loss_count = 0.0, 0
        self._interval: dict[str, float] = {}  # the step scalars since the last log (`_log_interval`)
        self.seconds = 0.0
        self.resumed_from: int | None = None
        self.skipped_steps: list[int] = []  # steps whose loss was not finite (with skip_nonfinite)
        self._writer = None  # TensorBoard's SummaryWriter while `fit` runs (rank 0, with an out_dir)
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
        self.skipped_steps, self.validation = state["skipped_steps"], state["validation"]

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

    # ---- TensorBoard --------------------------------------------------------------------------------------
    def _open_log(self) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when a run logs

        # Scalars are logged at the count of steps done (1..total). A resumed run drops what the interrupted one logged
        # after its last checkpoint (steps > self.step): those steps run again.
        self._writer = SummaryWriter(
            str(self.out_dir / TENSORBOARD_DIR), purge_step=self.step + 1 if self.step else None
        )

    def log_scalars(self, values: dict[str, float], step: int | None = None) -> None:
        """Scalars for TensorBoard at `step` (default: the steps done so far), e.g. `{"val/accuracy": 71.2}`."""
        if self._writer is not None:
            for name, value in values.items():
                if value is not None and math.isfinite(value):
                    self._writer.add_scalar(name, value, self.step if step is None else step)

    def _close_log(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

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
        self._open_log()
        try:
            self._loop(epoch_batches, step_fn, params, device_type, bar, start)
        finally:
            self._close_log()
        bar.close()
        return self

    def _loop(
        self,
        epoch_batches: Callable[[int, int], Iterable[Any]],
        step_fn: Callable[[Any, int], torch.Tensor],
        params: list[torch.Tensor],
        device_type: str,
        bar: tqdm,
        start: float,
    ) -> None:
        self._interval = {"loss": 0.0, "finite": 0, "seconds": 0.0, "steps": 0, "start": time.time()}
        while self.step < self.total_steps:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            for batch in epoch_batches(epoch, offset):
                lr = self.lr_at(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)  # groups may train at a multiple of the lr
                value, finite = self._optimizer_step(batch, step_fn, params, device_type)
                if self.after_step is not None:  # also after a skipped step
                    self.after_step()
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
                self._log_interval(value, finite, lr)
                if self.step % self.steps_per_epoch == 0:
                    self._end_epoch(bar, value)
                self.seconds = time.time() - start
                ends_epoch = self.step % self.steps_per_epoch == 0
                if ends_epoch or self.step % self.checkpoint_every == 0 or self.step == self.total_steps:
                    self._save()
                if self.step >= self.total_steps:
                    break
            else:
                if self.step % self.steps_per_epoch:  # the batches ran out before the epoch's step count
                    raise ClipadaptError(f"epoch {epoch} yielded fewer than {self.steps_per_epoch} batches")

    def _optimizer_step(
        self, batch: Any, step_fn: Callable[[Any, int], torch.Tensor], params: list[torch.Tensor], device_type: str
    ) -> tuple[float, bool]:
        """One step on `batch`: the loss, its gradients and the optimizer's update, or with `skip_nonfinite` nothing
        for a loss that is not finite. Returns the loss's value and whether it was finite."""
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
            loss = step_fn(batch, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The loss is read (the step's one wait for the device) after the backward pass is queued: the GPU is left
        # idle only while the host queues the optimizer step and the next forward pass. The gradients of a loss that
        # is not finite are dropped, the weights untouched.
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
            tqdm.write(f"{self.desc}: {self._nonfinite(value)} at step {self.step}; step skipped", file=sys.stderr)
        else:
            raise ClipadaptError(
                f"{self._nonfinite(value)} at step {self.step}; stopped, the last good checkpoint is kept"
                + (f" in {self.checkpoint_path}" if self.checkpoint_path else "")
                + " (--skip-nonfinite skips such steps instead)"
            )
        return value, finite

    def _log_interval(self, value: float, finite: bool, lr: float) -> None:
        """The step scalars, as means over the steps since the last log, every `LOG_EVERY_STEPS` and each epoch."""
        interval, now = self._interval, time.time()
        interval["seconds"] += now - interval["start"]
        interval["steps"] += 1
        interval["start"] = now
        if finite:
            interval["loss"] += value
            interval["finite"] += 1
        if self.step % LOG_EVERY_STEPS and self.step % self.steps_per_epoch:
            return
        loss = interval["loss"] / interval["finite"] if interval["finite"] else None
        seconds = interval["seconds"] / interval["steps"]
        self.log_scalars({"train/loss": loss, "train/lr": lr, "train/step_seconds": seconds})
        interval.update(loss=0.0, finite=0, seconds=0.0, steps=0)

    def _end_epoch(self, bar: tqdm, value: float) -> None:
        """The epoch's mean loss (None: every step skipped), then the validation hook's numbers."""
        count = self._epoch_loss_count
        self.losses.append(self._epoch_loss_sum / count if count else None)
        self._epoch_loss_sum, self._epoch_loss_count = 0.0, 0
        self.log_scalars({"train/epoch_loss": self.losses[-1]})
        if self.validate is not None:
            self.validation.append(self.validate(self))
            self.log_scalars({f"val/{k}": v for k, v in self.validation[-1].items()})
            bar.set_postfix(loss=f"{value:.4f}", **{k: f"{v:.4f}" for k, v in self.validation[-1].items()})


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
