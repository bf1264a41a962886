"""Learning-rate schedules: warm-up then cosine per step (open_clip), and Dassl's per-epoch one (CoOp)."""

from __future__ import annotations

import math


def cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up to `base_lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1 + math.cos(math.pi * progress))


def dassl_lr(epoch: int, epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> float:
    """The lr of `epoch` under Dassl's ConstantWarmupScheduler over CosineAnnealingLR(T_max=epochs), with
    WARMUP_RECOUNT=True: `warmup_lr` for the warm-up epochs, then the cosine restarts at its first value, so
    epoch e (>= warmup) gets lr * (1 + cos(pi * (e - warmup) / epochs)) / 2 and the last lr is not 0."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))
