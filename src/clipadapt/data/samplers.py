"""UniCL's balanced sampler: every batch holds image-label and image-text samples in a fixed ratio.

The two sources differ wildly in size (the paper mixes ImageNet with web captions), and the UniCL appendix
reports that balancing them per batch is critical. Each source is read as its own stream of seeded
permutations, reshuffled whenever it runs out, so the smaller source is repeated rather than exhausted.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import ClipadaptError


class BalancedBatchSampler:
    """Batches of indices into `[label samples (0..n_label-1), text samples (n_label..)]`.

    Each batch has `round(batch_size * label_fraction)` label samples and the rest text samples (all from one
    source when the other is empty). An epoch is
    `(n_label + n_text) // (batch_size * world_size)` batches. Under distributed training each rank takes its
    own disjoint part of every global batch, with the same ratio. Batches depend only on (seed, epoch), so
    `batches(epoch, start)` resumes mid-epoch exactly.
    """

    def __init__(
        self,
        n_label: int,
        n_text: int,
        batch_size: int,
        label_fraction: float = 0.5,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0.0 <= label_fraction <= 1.0:
            raise ClipadaptError(f"label_fraction must be within [0, 1], got {label_fraction}")
        # With one source only, every batch is drawn from it whatever the fraction.
        self.n_label_per_batch = batch_size if not n_text else 0 if not n_label else round(batch_size * label_fraction)
        self.n_text_per_batch = batch_size - self.n_label_per_batch
        self.n_label, self.n_text, self.batch_size = n_label, n_text, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.steps_per_epoch = (n_label + n_text) // (batch_size * world_size)
        if self.steps_per_epoch < 1:
            raise ClipadaptError(f"{n_label + n_text} samples do not fill one batch of {batch_size} x {world_size}")

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _stream(self, size: int, per_batch: int, epoch: int, source: int) -> np.ndarray:
        """This epoch's draws from one source: consecutive seeded permutations, [steps, world, per_batch]."""
        needed = self.steps_per_epoch * self.world_size * per_batch
        if needed == 0:
            return np.zeros((self.steps_per_epoch, self.world_size, 0), dtype=np.int64)
        # Continue the source's stream where the previous epoch stopped so every sample is seen equally often.
        first = epoch * needed
        rounds = range(first // size, (first + needed - 1) // size + 1)
        draws = np.concatenate([np.random.default_rng([self.seed, source, r]).permutation(size) for r in rounds])
        start = first - rounds[0] * size
        return draws[start : start + needed].reshape(self.steps_per_epoch, self.world_size, per_batch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        """This rank's batches of `epoch`, from batch `start` on."""
        labels = self._stream(self.n_label, self.n_label_per_batch, epoch, source=0)
        texts = self._stream(self.n_text, self.n_text_per_batch, epoch, source=1) + self.n_label
        for step in range(start, self.steps_per_epoch):
            yield labels[step, self.rank].tolist() + texts[step, self.rank].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return self.batches(0)
