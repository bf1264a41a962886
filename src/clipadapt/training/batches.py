"""Training batches: seeded index orders per epoch, and augmented images decoded at the step or ahead in DataLoader
workers, each batch a function of its seed so that a resumed run draws the same crops."""

from __future__ import annotations

import contextlib
import contextvars
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torchvision import transforms

from ..data import load_image
from ..errors import ClipadaptError
from .loop import set_within

# DataLoader worker processes that decode and augment the images of prompt learners trained with augment=true
# (protocols set it from --workers around a method's fit).
_DECODING_WORKERS: contextvars.ContextVar[int] = contextvars.ContextVar("decoding_workers", default=0)


def decoding_worker_count() -> int:
    """The worker processes `decoding_workers` set for the training running now (0: decode in this process)."""
    return _DECODING_WORKERS.get()


def decoding_workers(count: int) -> contextlib.AbstractContextManager:
    """Within this context, prompt learners that re-encode augmented images decode the coming batches in `count`
    worker processes (each batch exactly as `load_batch` makes it in the main process)."""
    return set_within(_DECODING_WORKERS, count)


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
