"""The training order: a function of (seed, epoch) alone, resumable mid-epoch, split over
DDP ranks (train: equal shares, padded; val/test: every sample exactly once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqmnist.data import SeqMNISTDataModule
from seqmnist.data.sampler import EpochBatches


def flat(batches: EpochBatches) -> list[int]:
    return torch.cat(list(batches)).tolist()


def test_order_depends_only_on_seed_and_epoch() -> None:
    a, b = EpochBatches(100, 7, seed=3), EpochBatches(100, 7, seed=3)
    torch.manual_seed(0)
    first = flat(a)
    torch.manual_seed(1)  # the global RNG plays no part
    assert flat(b) == first and sorted(first) == list(range(100))
    a.set_epoch(1)
    assert flat(a) != first and sorted(flat(a)) == list(range(100))
    assert flat(EpochBatches(100, 7, seed=4)) != first


def test_batches_are_index_tensors_of_the_batch_size() -> None:
    batches = list(EpochBatches(100, 32))
    assert [len(b) for b in batches] == [32, 32, 32, 4] == [len(b) for b in batches]
    assert all(b.dtype == torch.long for b in batches)
    assert len(EpochBatches(100, 32)) == 4


def test_resumes_mid_epoch_once() -> None:
    s = EpochBatches(50, 10, seed=0)
    s.set_epoch(2)
    full = list(s)
    s.resume_at(2, 2)
    assert [b.tolist() for b in s] == [b.tolist() for b in full[2:]]
    assert len(list(s)) == 5  # the next iterator starts from the beginning again


@pytest.mark.parametrize("world", [2, 3])
def test_training_shares_are_equal_and_cover_every_sample(world: int) -> None:
    ranks = [EpochBatches(100, 8, seed=1, rank=r, world_size=world) for r in range(world)]
    shares = [flat(r) for r in ranks]
    assert len({len(s) for s in shares}) == 1  # DDP's all-reduce needs equal batch counts
    assert len({len(r) for r in ranks}) == 1
    assert set().union(*shares) == set(range(100))
    # Each rank resumes within its own share.
    ranks[1].resume_at(0, 2)
    assert flat(ranks[1]) == shares[1][16:]


@pytest.mark.parametrize("world", [2, 3])
def test_evaluation_shares_hold_every_sample_once(world: int) -> None:
    ranks = [EpochBatches(100, 33, shuffle=False, rank=r, world_size=world) for r in range(world)]
    shares = [flat(r) for r in ranks]
    assert sorted(sum(shares, [])) == list(range(100))  # no padding, no repeats
    assert [len(r) for r in ranks] == [-(-len(s) // 33) for s in shares]


def test_a_rank_outside_the_world_is_refused() -> None:
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        EpochBatches(10, 2, rank=2, world_size=2)


def test_loaders_leave_the_global_rng_alone(synthetic_root: Path) -> None:
    dm = SeqMNISTDataModule(root=str(synthetic_root), val_size=100, batch_size=32)
    dm.setup("fit")
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)


def test_the_trainer_sets_each_epochs_order(synthetic_root: Path, tmp_path: Path) -> None:
    """Through Lightning's own set_epoch path: each epoch is read in a new order."""
    import lightning as L

    from seqmnist.models import SeqClassifier

    firsts: list[list[int]] = []

    class FirstBatch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 0:
                firsts.append(batch[1].tolist())

    dm = SeqMNISTDataModule(root=str(synthetic_root), val_size=100, batch_size=50)
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    model = SeqClassifier(net={"cell": "rnn", "hidden_size": 4}, optimizer=sgd)
    trainer = L.Trainer(
        max_epochs=3,
        limit_train_batches=1,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[FirstBatch()],
    )
    trainer.fit(model, datamodule=dm)
    assert len(firsts) == 3 and firsts[0] != firsts[1] != firsts[2]
    assert trainer.train_dataloader.batch_sampler.epoch == 2
