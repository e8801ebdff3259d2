"""The training order: shuffled per epoch from ``(seed, epoch)`` alone, able to start mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """A shuffled order that depends only on ``(seed, epoch)`` and can start mid-epoch.

    Unlike ``RandomSampler`` it draws nothing from the global RNG, so the order of epoch
    ``e`` is the same whether the run got there in one go or was resumed.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """The next iterator starts ``samples_done`` into epoch ``epoch``'s order."""
        self.epoch, self._skip = epoch, samples_done

    def order(self, epoch: int) -> torch.Tensor:
        # SeedSequence mixes (seed, epoch) so neighbouring seeds give unrelated orders.
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(2, dtype=np.uint32)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return torch.randperm(self.size, generator=gen)

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0  # only the first iterator after a resume skips
        yield from self.order(self.epoch)[skip:].tolist()

    def __len__(self) -> int:
        return self.size
