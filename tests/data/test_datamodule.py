"""SeqMNISTDataModule: IDX loading, splits, sequence layouts, batches and data errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from seqmnist.core.errors import ConfigError, DataError
from seqmnist.data import SeqMNISTDataModule, idx, sequence_view
from tests.helpers import PROJECT_ROOT, write_dataset


def make_dm(root: Path, **kw) -> SeqMNISTDataModule:
    kw = {"val_size": 100, "batch_size": 32, "eval_batch_size": 50, "download": False, **kw}
    dm = SeqMNISTDataModule(root=str(root), **kw)
    dm.prepare_data()
    dm.setup()
    return dm


def test_splits_shapes_and_dtypes(synthetic_root: Path) -> None:
    dm = make_dm(synthetic_root)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (500, 100, 200)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 28, 28) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (50, 28, 28)
    # Every batch together covers the split exactly once.
    assert sum(len(b[1]) for b in dm.train_dataloader()) == 500


def test_split_is_seeded_and_disjoint(synthetic_root: Path) -> None:
    a, b = make_dm(synthetic_root), make_dm(synthetic_root)
    assert torch.equal(a.val_set.inputs, b.val_set.inputs)
    c = make_dm(synthetic_root, split_seed=7)
    assert not torch.equal(a.val_set.inputs, c.val_set.inputs)
    # No validation image is also a training image (rows compared as whole images).
    train = {bytes(t.numpy().tobytes()) for t in a.train_set.inputs}
    assert not any(bytes(v.numpy().tobytes()) in train for v in a.val_set.inputs)


def test_training_order_follows_shuffle_seed_and_epoch(synthetic_root: Path) -> None:
    def first_labels(shuffle_seed: int, epoch: int = 0) -> torch.Tensor:
        dm = make_dm(synthetic_root, shuffle_seed=shuffle_seed)
        loader = dm.train_dataloader()
        loader.batch_sampler.set_epoch(epoch)
        return next(iter(loader))[1]

    torch.manual_seed(0)
    first = first_labels(0)
    torch.manual_seed(1)  # the global RNG does not decide the order (resumed runs match)
    assert torch.equal(first_labels(0), first)
    assert not torch.equal(first_labels(1), first)
    assert not torch.equal(first_labels(0, epoch=1), first)
    # data.shuffle_seed follows the run's seed by default.
    data_cfg = OmegaConf.load(PROJECT_ROOT / "conf" / "data" / "mnist.yaml")
    assert OmegaConf.to_container(data_cfg)["shuffle_seed"] == "${seed}"


def test_sequence_modes_pixel_order() -> None:
    img = torch.arange(784, dtype=torch.float32).reshape(1, 28, 28)
    row = sequence_view(img, "row")
    assert row.shape == (1, 28, 28) and row[0, 3, 5] == 3 * 28 + 5
    col = sequence_view(img, "column")
    assert torch.equal(col, row.transpose(1, 2))
    pix = sequence_view(img, "pixel")
    assert pix.shape == (1, 784, 1) and torch.equal(pix.flatten(), torch.arange(784.0))
    perm = torch.randperm(784, generator=torch.Generator().manual_seed(0))
    permuted = sequence_view(img, "permuted", permutation=perm)
    assert permuted.shape == (1, 784, 1) and torch.equal(permuted.flatten(), perm.float())
    patch = sequence_view(img, "patch", step_pixels=7)
    assert patch.shape == (1, 112, 7) and torch.equal(patch[0, 1], torch.arange(7.0, 14.0))


@pytest.mark.parametrize(
    ("mode", "step", "shape"),
    [
        ("row", 28, (28, 28)),
        ("column", 28, (28, 28)),
        ("pixel", 28, (784, 1)),
        ("permuted", 28, (784, 1)),
        ("patch", 14, (56, 14)),
    ],
)
def test_modes_in_the_data_module(synthetic_root: Path, mode: str, step: int, shape: tuple) -> None:
    dm = make_dm(synthetic_root, sequence=mode, step_pixels=step)
    assert (dm.seq_len, dm.input_size) == shape
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape[1:] == shape


def test_permutation_is_fixed_by_its_seed_and_kept_in_state(synthetic_root: Path) -> None:
    a = SeqMNISTDataModule(root=str(synthetic_root), sequence="permuted", permutation_seed=3)
    b = SeqMNISTDataModule(root=str(synthetic_root), sequence="permuted", permutation_seed=3)
    c = SeqMNISTDataModule(root=str(synthetic_root), sequence="permuted", permutation_seed=4)
    assert torch.equal(a.permutation, b.permutation) and not torch.equal(
        a.permutation, c.permutation
    )
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.permutation, a.permutation)


def test_fashion_mnist_reads_its_own_folder(synthetic_root: Path) -> None:
    dm = make_dm(synthetic_root, dataset="fashion_mnist")
    assert dm.class_names[0] == "T-shirt/top" and dm.num_classes == 10
    assert len(dm.test_set) == 200


def test_missing_data_names_root_files_and_fix(tmp_path: Path) -> None:
    dm = SeqMNISTDataModule(root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    for needle in (
        str(tmp_path / "nowhere" / "MNIST" / "raw"),
        "train-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "data.root",
        "SEQMNIST_DATA_ROOT",
        "download",
    ):
        assert needle in msg


def test_failed_download_is_reported_as_missing_data(tmp_path: Path, monkeypatch) -> None:
    def offline(self, *a, **k):
        raise RuntimeError("Error downloading: <urlopen error Name or service not known>")

    monkeypatch.setattr(idx.tv_datasets.MNIST, "download", offline)
    dm = SeqMNISTDataModule(root=str(tmp_path), download=True)
    with pytest.raises(DataError, match="download failed: .*Name or service not known"):
        dm.prepare_data()


@pytest.fixture
def copy_root(synthetic_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root / "MNIST", root / "MNIST")
    return root


def test_truncated_file_is_named(copy_root: Path) -> None:
    f = copy_root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated or corrupt"):
        make_dm(copy_root)


def test_wrong_magic_is_named(copy_root: Path) -> None:
    f = copy_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    f.write_bytes(b"\x00\x00\x08\x03" + f.read_bytes()[4:])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is not an IDX labels file"):
        make_dm(copy_root)


def test_image_label_count_mismatch_is_named(copy_root: Path, tmp_path: Path) -> None:
    other = write_dataset(tmp_path / "other", n_train=300)
    shutil.copy(
        other / "MNIST" / "raw" / "train-labels-idx1-ubyte",
        copy_root / "MNIST" / "raw" / "train-labels-idx1-ubyte",
    )
    with pytest.raises(DataError, match="600 images but .* 300 labels"):
        make_dm(copy_root)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"dataset": "cifar"}, "data.dataset"),
        ({"sequence": "spiral"}, "data.sequence"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"sequence": "patch", "step_pixels": 5}, "data.step_pixels"),
    ],
)
def test_bad_arguments_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        SeqMNISTDataModule(**kwargs)


def test_device_resident_data_with_worker_processes_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"data.num_workers=2\).*Fix: set data.num_workers=0"):
        SeqMNISTDataModule(device_resident=True, num_workers=2)


def test_one_download_per_cluster_unless_asked_per_node() -> None:
    assert SeqMNISTDataModule().prepare_data_per_node is False
    assert SeqMNISTDataModule(download_per_node=True).prepare_data_per_node is True


class _Trainer:
    """The two facts load_state_dict reads from the Trainer."""

    def __init__(self, world_size: int) -> None:
        self.global_rank, self.world_size = 0, world_size


def test_mid_epoch_state_resumes_only_with_as_many_processes(synthetic_root: Path) -> None:
    dm = make_dm(synthetic_root)
    dm.trainer = _Trainer(world_size=1)
    dm.load_state_dict({"train_batches": (1, 3), "world_size": 1})
    loader = dm.train_dataloader()
    assert len(list(loader)) == len(loader) - 3  # the rest of epoch 1 only
    with pytest.raises(ConfigError, match=r"run of 2 process\(es\); resuming it with 1"):
        dm.load_state_dict({"train_batches": (1, 3), "world_size": 2})
    dm.load_state_dict({"train_batches": (2, 0), "world_size": 2})  # an epoch's end: fine


def test_checkpoints_before_the_rank_aware_sampler_still_resume(synthetic_root: Path) -> None:
    dm = make_dm(synthetic_root)  # batch_size 32: 64 samples done = 2 batches
    dm.load_state_dict({"train_position": (0, 64)})
    loader = dm.train_dataloader()
    assert len(list(loader)) == len(loader) - 2
    # Under DDP those checkpoints kept no position: the interrupted epoch restarts.
    dm.trainer = _Trainer(world_size=2)
    dm.load_state_dict({"train_position": (0, 64)})
    loader = dm.train_dataloader()
    assert len(list(loader)) == len(loader)


def test_a_split_smaller_than_the_ranks_is_refused(synthetic_root: Path) -> None:
    dm = make_dm(synthetic_root, val_size=2)
    dm.trainer = _Trainer(world_size=3)
    with pytest.raises(ConfigError, match="a split of 2 images cannot give each of 3 processes"):
        dm.val_dataloader()


@pytest.mark.realdata
def test_real_mnist_splits(real_root: Path) -> None:
    dm = SeqMNISTDataModule(root=str(real_root), download=False)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55_000, 5_000, 10_000)
    assert sorted(dm.test_set.targets.unique().tolist()) == list(range(10))
    # MNIST's pixel statistics: a sanity check that bytes were read as intended.
    assert abs(dm.train_set.inputs.mean().item() - 0.1307) < 0.002
