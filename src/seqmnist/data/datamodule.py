"""MNIST-style data as sequences: IDX files -> in-memory tensors -> (B, T, F) batches.

Each split is read once into one float tensor already laid out as a sequence, and a
batch is a single fancy-index into it (``__getitems__``), so no per-sample Python or
PIL work happens on the training path.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from seqmnist.core.checks import OPTIONAL_BOOLEAN, Rule, check_all, int_at_least, one_of
from seqmnist.core.compat import datamodule_state
from seqmnist.core.errors import ConfigError
from seqmnist.core.internals import batches_done_this_epoch, epoch_in_progress
from seqmnist.data import idx
from seqmnist.data.augment import BatchAugment
from seqmnist.data.idx import DATASETS, default_data_root, load_split, missing_files
from seqmnist.data.sampler import EpochBatches
from seqmnist.data.sequences import SEQUENCE_MODES, Layout, check_step_pixels, permutation

# The data module's arguments that a config may get wrong (``data.<name>`` in conf/data/).
RULES: dict[str, Rule] = {
    "dataset": one_of(DATASETS, "choose with data=NAME"),
    "sequence": one_of(SEQUENCE_MODES, ordered=True),
    "batch_size": int_at_least(1),
    "eval_batch_size": int_at_least(1),
    "val_size": int_at_least(1),
    "num_workers": int_at_least(0),
    "device_resident": OPTIONAL_BOOLEAN,
    "download_per_node": OPTIONAL_BOOLEAN,
}


def check_arguments(values: dict[str, Any]) -> None:
    """Every data argument in ``values`` against its rule, named as ``data.<name>``."""
    check_all(RULES, values, prefix="data.")
    check_step_pixels(values.get("sequence", "row"), values.get("step_pixels", 28))


class SequenceDataset(Dataset):
    """Whole-batch indexing over in-memory tensors.

    The DataLoader's fetcher calls ``__getitems__`` with a batch of indices (a tensor from
    :class:`~seqmnist.data.sampler.EpochBatches`), so a batch costs one gather instead of
    ``batch_size`` Python calls and a collate.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # The sampler already made the indices on the data's device; a list (another
        # sampler) is copied there.
        index = torch.as_tensor(indices, dtype=torch.long, device=self.inputs.device)
        return self.inputs[index], self.targets[index]


def keep_batch(batch: Any) -> Any:
    """Collate for :class:`SequenceDataset`: the batch is already stacked."""
    return batch


class SeqMNISTDataModule(L.LightningDataModule):
    """MNIST or Fashion-MNIST read as sequences, with a seeded train/val split.

    The train file is split into ``N - val_size`` training and ``val_size`` validation
    images with a generator seeded by ``split_seed`` (fixed by default so every run of a
    sweep validates on the same images); the test split is the full official test set.
    """

    def __init__(
        self,
        dataset: str = "mnist",
        root: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 42,
        sequence: str = "row",
        step_pixels: int = 28,
        permutation_seed: int = 0,
        download: bool = True,
        num_workers: int = 0,
        shuffle_seed: int = 0,
        device_resident: bool = False,
        download_per_node: bool = False,
        augment: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        check_arguments(
            {
                "dataset": dataset,
                "sequence": sequence,
                "step_pixels": step_pixels,
                "batch_size": batch_size,
                "eval_batch_size": eval_batch_size,
                "val_size": val_size,
                "num_workers": num_workers,
                "device_resident": device_resident,
                "download_per_node": download_per_node,
            }
        )
        if device_resident and num_workers:
            # Worker processes are forks of this one: CUDA tensors cannot cross into them.
            raise ConfigError(
                f"data.device_resident=true gathers batches on the training device, which "
                f"worker processes cannot do (data.num_workers={num_workers}). Fix: set "
                "data.num_workers=0 (the data is in memory already) or data.device_resident=false."
            )
        # Checked before anything is saved: a bad strength is one message naming its key.
        self.augment = BatchAugment.from_config(augment)
        # Saved as plain numbers (checkpoints load with weights_only=True: no DictConfig).
        augment = self.augment.as_dict() if self.augment.active else None  # noqa: F841
        self.save_hyperparameters(logger=False)
        # On a cluster data.root is usually on a shared file system: one download (global
        # rank 0) instead of one per node racing to write the same files.
        self.prepare_data_per_node = download_per_node
        self.dataset = dataset
        self.root = str(root) if root else default_data_root()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.sequence = sequence
        self.step_pixels = step_pixels
        self.class_names = DATASETS[dataset][1]
        self.permutation = permutation(permutation_seed) if sequence == "permuted" else None
        self.train_set: SequenceDataset | None = None
        self.val_set: SequenceDataset | None = None
        self.test_set: SequenceDataset | None = None
        # Where a restored checkpoint left off in the training order: (epoch, batches done).
        self._resume_at: tuple[int, int] | None = None

    # -- shape facts the network is built from ---------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def layout(self) -> Layout:
        """How this module lays images out (the permutation may come from a checkpoint)."""
        return Layout(self.sequence, self.step_pixels, self.permutation)

    @property
    def input_size(self) -> int:
        """Features per time step."""
        return self.layout.input_size

    @property
    def seq_len(self) -> int:
        return self.layout.seq_len

    # -- Lightning hooks -------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download through torchvision when files are missing (no-op when present)."""
        if not missing_files(self.root, self.dataset):
            return
        reason = "downloads are off (data.download=false)"
        if self.hparams.download:
            try:
                idx.download(self.root, self.dataset)
                if not missing_files(self.root, self.dataset):
                    return
            except Exception as e:  # network errors come in many types; all mean the same here
                reason = f"the download failed: {' '.join(str(e).split())[:300]}"
        raise idx.data_not_found(self.root, self.dataset, reason)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = load_split(self.root, self.dataset, "train")
            n_val = self.hparams.val_size
            if n_val >= len(labels):
                raise ConfigError(
                    f"data.val_size={n_val} leaves no training images "
                    f"(the train file has {len(labels)})"
                )
            order = torch.randperm(
                len(labels), generator=torch.Generator().manual_seed(self.hparams.split_seed)
            )
            inputs = self.to_inputs(images)
            self.val_set = self._placed(inputs[order[:n_val]], labels[order[:n_val]])
            self.train_set = self._placed(inputs[order[n_val:]], labels[order[n_val:]])
        if stage in (None, "test", "predict") and self.test_set is None:
            images, labels = load_split(self.root, self.dataset, "test")
            self.test_set = self._placed(self.to_inputs(images), labels)

    def _placed(self, inputs: torch.Tensor, targets: torch.Tensor) -> SequenceDataset:
        """With ``device_resident``, the split moves to the Trainer's device once (on a GPU,
        ~200 MB for MNIST) and batches are gathered there: no copy per step."""
        if self.hparams.device_resident and self.trainer is not None:
            device = self.trainer.strategy.root_device
            inputs, targets = inputs.to(device), targets.to(device)
        return SequenceDataset(inputs, targets)

    def to_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 28, 28) -> float sequences in [0, 1], laid out as this module reads."""
        return self.layout.to_inputs(images)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches only, on the training device: augment the images they show."""
        trainer = self.trainer
        if not self.augment.active or trainer is None or not trainer.training:
            return batch
        x, y = batch
        layout = self.layout
        images = self.augment(layout.to_images(x))
        return layout.from_images(images).to(x.dtype), y

    def _rank(self) -> tuple[int, int]:
        """(global rank, world size) of this process; (0, 1) outside a Trainer."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, ds: SequenceDataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        rank, world_size = self._rank()
        if len(ds) < world_size:
            # A rank with no batch would skip the epoch's end while the others wait for it.
            raise ConfigError(
                f"a split of {len(ds)} images cannot give each of {world_size} processes one. "
                "Fix: a larger data.val_size, or fewer trainer.devices."
            )
        batches = EpochBatches(
            len(ds),
            batch_size,
            shuffle=shuffle,
            seed=self.hparams.shuffle_seed,
            rank=rank,
            world_size=world_size,
            device=ds.inputs.device if ds.inputs.device.type != "cpu" else None,
        )
        return DataLoader(
            ds,
            batch_sampler=batches,
            collate_fn=keep_batch,
            num_workers=self.hparams.num_workers,
            # A private generator: making an iterator then draws nothing from the global RNG,
            # so validation passes cannot shift dropout masks (and resumed runs match).
            generator=torch.Generator().manual_seed(self.hparams.shuffle_seed),
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_set, self.batch_size, shuffle=True)
        if self._resume_at is not None:
            loader.batch_sampler.resume_at(*self._resume_at)
            self._resume_at = None
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # Saved in every checkpoint: the permutation is part of the model's input contract, and
    # the position in the shuffled order lets a mid-epoch checkpoint resume exactly.
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"permutation": self.permutation}
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == "fit":
            done = batches_done_this_epoch(trainer)
            if not epoch_in_progress(trainer):  # between epochs: the next one from its start
                state["train_batches"] = (trainer.current_epoch, 0)
            elif done >= trainer.num_training_batches:  # epoch read: next one from the start
                state["train_batches"] = (trainer.current_epoch + 1, 0)
            else:
                state["train_batches"] = (trainer.current_epoch, done)
            state["world_size"] = trainer.world_size
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("permutation") is not None:
            self.permutation = state_dict["permutation"]
        _, world_size = self._rank()
        state_dict = datamodule_state(state_dict, self.batch_size, world_size)
        position = state_dict.get("train_batches")
        if position is None:
            return
        saved_world = state_dict.get("world_size", 1)
        if position[1] and saved_world != world_size:
            raise ConfigError(
                f"this checkpoint stopped mid-epoch in a run of {saved_world} process(es); "
                f"resuming it with {world_size} would read a different share of the epoch on "
                f"each rank. Fix: resume with as many processes (trainer.devices x "
                f"trainer.num_nodes = {saved_world}), or from a checkpoint saved at an "
                "epoch's end."
            )
        self._resume_at = (int(position[0]), int(position[1]))
