"""Which samples each batch holds: shuffled per epoch from ``(seed, epoch)`` alone, split
across DDP ranks, able to start mid-epoch, yielding index tensors.

The Trainer runs with ``use_distributed_sampler=False`` (conf/trainer/default.yaml): these
samplers do the rank split themselves, so that

- a run resumed mid-epoch skips exactly the batches each rank has done (Lightning's
  ``DistributedSampler`` wrapper would restart the epoch while Lightning's batch counter
  says part of it is done, skipping samples);
- validation and test give each sample to exactly one rank, unpadded: accuracies under 2
  or 3 ranks equal the single-process figures (``DistributedSampler`` repeats samples to
  even the ranks out, and the repeats are counted).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochBatches(Sampler[torch.Tensor]):
    """Batches of indices (``torch.long`` tensors) for one rank of ``world_size``.

    ``shuffle=True`` (training): the order of epoch ``e`` is a permutation drawn from
    ``(seed, e)`` only (no global RNG), padded by wrapping around so every rank gets the
    same number of batches (DDP's gradient all-reduce needs it), rank ``r`` taking every
    ``world_size``-th sample from ``r``, as ``DistributedSampler`` does.

    ``shuffle=False`` (validation, test): rank ``r`` reads one contiguous block, the
    blocks differing by at most one sample, no sample twice.

    ``device``: the epoch's order is built there once, so a split held on the GPU
    (``data.device_resident``) is gathered with no host-to-device copy per batch.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.size, self.batch_size = size, batch_size
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device) if device is not None else None
        self.epoch = 0
        self._skip_batches = 0
        # Lightning sets each epoch on ``dataloader.sampler`` and on
        # ``dataloader.batch_sampler.sampler``, never on the batch sampler itself: this
        # attribute is how its set_epoch reaches us.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch (through ``self.sampler``)."""
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next iterator starts after ``batches_done`` of this rank's batches of ``epoch``."""
        self.epoch, self._skip_batches = epoch, batches_done

    def order(self, epoch: int) -> torch.Tensor:
        """The whole epoch's shuffled order (all ranks), a function of ``(seed, epoch)``."""
        # SeedSequence mixes (seed, epoch) so neighbouring seeds give unrelated orders.
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(2, dtype=np.uint32)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return torch.randperm(self.size, generator=gen)

    def indices(self) -> torch.Tensor:
        """This rank's samples for the current epoch, in the order they are read."""
        if not self.shuffle:
            lo, hi = self._block(self.rank), self._block(self.rank + 1)
            return torch.arange(lo, hi)
        order = self.order(self.epoch)
        per_rank = -(-self.size // self.world_size)
        padding = per_rank * self.world_size - self.size
        if padding:
            order = torch.cat([order, order[:padding]])
        return order[self.rank :: self.world_size]

    def _block(self, rank: int) -> int:
        return rank * self.size // self.world_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        skip, self._skip_batches = self._skip_batches, 0  # only the first iterator skips
        indices = self.indices()
        if self.device is not None:
            indices = indices.to(self.device)  # one copy per epoch, not one per batch
        for start in range(skip * self.batch_size, len(indices), self.batch_size):
            yield indices[start : start + self.batch_size]

    def __len__(self) -> int:
        if self.shuffle:
            per_rank = -(-self.size // self.world_size)
        else:
            per_rank = self._block(self.rank + 1) - self._block(self.rank)
        return -(-per_rank // self.batch_size)
