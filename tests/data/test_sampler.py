"""The training order: a function of (seed, epoch) alone, resumable mid-epoch."""

from __future__ import annotations

from pathlib import Path

import torch

from seqmnist.data import SeqMNISTDataModule
from seqmnist.data.sampler import ResumableSampler


def test_sampler_order_depends_only_on_seed_and_epoch() -> None:
    a, b = ResumableSampler(100, seed=3), ResumableSampler(100, seed=3)
    torch.manual_seed(0)
    first = list(a)
    torch.manual_seed(1)  # the global RNG plays no part
    assert list(b) == first and sorted(first) == list(range(100))
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(100))
    assert list(ResumableSampler(100, seed=4)) != first


def test_sampler_resumes_mid_epoch_once() -> None:
    s = ResumableSampler(50, seed=0)
    s.set_epoch(2)
    full = list(s)
    s.resume_at(2, 20)
    assert list(s) == full[20:]
    assert list(s) == full  # the next epoch's iterator starts from the beginning again


def test_loaders_leave_the_global_rng_alone(synthetic_root: Path) -> None:
    dm = SeqMNISTDataModule(root=str(synthetic_root), val_size=100, batch_size=32)
    dm.setup("fit")
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)
