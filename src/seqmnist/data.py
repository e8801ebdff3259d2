"""MNIST-style data as sequences: IDX files -> in-memory tensors -> (B, T, F) batches.

Each split is read once into one float tensor already laid out as a sequence, and a
batch is a single fancy-index into it (``__getitems__``), so no per-sample Python or
PIL work happens on the training path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets as tv_datasets

from seqmnist.errors import ConfigError, DataError
from seqmnist.faults import ResumableSampler

IMAGE_SIDE = 28
PIXELS = IMAGE_SIDE * IMAGE_SIDE

# name -> (torchvision class, class names shown in logs and reports)
DATASETS: dict[str, tuple[type[tv_datasets.MNIST], list[str]]] = {
    "mnist": (tv_datasets.MNIST, [str(d) for d in range(10)]),
    "fashion_mnist": (tv_datasets.FashionMNIST, list(tv_datasets.FashionMNIST.classes)),
}
SEQUENCE_MODES = ("row", "column", "pixel", "permuted", "patch")
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


def step_size(sequence: str, step_pixels: int = IMAGE_SIDE) -> int:
    """Pixels read per time step in a sequence mode (the network's ``input_size``)."""
    return {"row": IMAGE_SIDE, "column": IMAGE_SIDE, "patch": step_pixels}.get(sequence, 1)


def default_data_root() -> str:
    """``$SEQMNIST_DATA_ROOT`` if set, else ``data/`` under the current directory."""
    return os.environ.get("SEQMNIST_DATA_ROOT") or "data"


def raw_folder(root: str | Path, dataset: str) -> Path:
    """Where torchvision keeps (and we read) the raw IDX files of ``dataset``."""
    return Path(root).expanduser().resolve() / DATASETS[dataset][0].__name__ / "raw"


def missing_files(root: str | Path, dataset: str) -> list[Path]:
    """The raw IDX files of ``dataset`` that are not under ``root``."""
    folder = raw_folder(root, dataset)
    return [
        folder / n for files in SPLIT_FILES.values() for n in files if not (folder / n).is_file()
    ]


def data_not_found(root: str | Path, dataset: str, reason: str) -> DataError:
    """The one message for absent data: where we looked, what we expected, how to fix it."""
    folder = raw_folder(root, dataset)
    expected = ", ".join(n for files in SPLIT_FILES.values() for n in files)
    return DataError(
        f"{dataset} data not found in {folder} and {reason}.\n"
        f"  Expected the files: {expected}\n"
        f"  Fix: set data.root=PATH on the command line (or the SEQMNIST_DATA_ROOT environment "
        f"variable) to a folder that holds {folder.parent.name}/raw/<those files>, or run once "
        "with network access so torchvision downloads them into data.root."
    )


def _check_idx(path: Path, kind: str) -> int:
    """Validate an IDX file's header against its size; return the number of items."""
    dims = 3 if kind == "images" else 1
    header = 4 + 4 * dims
    fix = (
        "Fix: delete it and run again with network access to download a fresh copy, "
        "or point data.root / SEQMNIST_DATA_ROOT at a good copy."
    )
    size = path.stat().st_size
    if size < header:
        raise DataError(f"{path} is truncated ({size} bytes, shorter than its header). {fix}")
    with path.open("rb") as f:
        raw = f.read(header)
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[kind]:
        raise DataError(
            f"{path} is not an IDX {kind} file (magic number {magic:#010x}, "
            f"expected {_IDX_MAGIC[kind]:#010x}). {fix}"
        )
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    if kind == "images" and shape[1:] != [IMAGE_SIDE, IMAGE_SIDE]:
        raise DataError(f"{path} holds {shape[1]}x{shape[2]} images, expected 28x28. {fix}")
    expected = header + shape[0] * (PIXELS if kind == "images" else 1)
    if size != expected:
        raise DataError(
            f"{path} is {size} bytes but its header announces {shape[0]} {kind} "
            f"({expected} bytes): the file is truncated or corrupt. {fix}"
        )
    return shape[0]


def load_split(root: str | Path, dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one split's raw IDX files: uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)``."""
    if missing_files(root, dataset):
        raise data_not_found(root, dataset, "nothing downloaded them (prepare_data was not run)")
    folder = raw_folder(root, dataset)
    image_file, label_file = (folder / name for name in SPLIT_FILES[split])
    n_images = _check_idx(image_file, "images")
    n_labels = _check_idx(label_file, "labels")
    if n_images != n_labels:
        raise DataError(
            f"{image_file} holds {n_images} images but {label_file} holds {n_labels} labels; "
            "the two files belong to different releases. Replace both with a matching pair."
        )
    tv_cls = DATASETS[dataset][0]
    ds = tv_cls(str(Path(root).expanduser().resolve()), train=split == "train", download=False)
    labels = ds.targets.long()
    if labels.numel() and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{label_file} has labels outside 0..9; the file is corrupt.")
    return ds.data, labels


def sequence_view(
    images: torch.Tensor,
    mode: str = "row",
    step_pixels: int = 28,
    permutation: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lay out ``(N, 28, 28)`` images as ``(N, T, F)`` sequences (a contiguous copy).

    row: 28 steps of a row; column: 28 steps of a column; pixel: 784 steps of 1 pixel in
    raster order; permuted: the pixel sequence reordered by ``permutation``; patch: the
    raster order cut into ``784 / step_pixels`` steps of ``step_pixels`` pixels.
    """
    n = images.shape[0]
    if mode == "row":
        seq = images
    elif mode == "column":
        seq = images.transpose(1, 2)
    elif mode == "pixel":
        seq = images.reshape(n, PIXELS, 1)
    elif mode == "permuted":
        if permutation is None:
            raise ValueError("permuted mode needs a permutation")
        seq = images.reshape(n, PIXELS)[:, permutation].unsqueeze(-1)
    elif mode == "patch":
        seq = images.reshape(n, PIXELS // step_pixels, step_pixels)
    else:
        raise ValueError(f"unknown sequence mode {mode!r}")
    return seq.contiguous()


class SequenceDataset(Dataset):
    """Whole-batch indexing over in-memory tensors.

    The DataLoader's fetcher calls ``__getitems__`` with a batch of indices, so a batch
    costs one gather instead of ``batch_size`` Python calls and a collate.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # Indices on the data's device: a device-resident split is gathered there.
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.inputs.device)
        return self.inputs[idx], self.targets[idx]


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
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset={dataset!r} is not known; allowed: {sorted(DATASETS)}")
        if sequence not in SEQUENCE_MODES:
            raise ConfigError(
                f"data.sequence={sequence!r} is not known; allowed: {list(SEQUENCE_MODES)}"
            )
        if sequence == "patch" and (step_pixels < 1 or PIXELS % step_pixels):
            raise ConfigError(
                f"data.step_pixels={step_pixels} must divide 784 (e.g. 1, 4, 7, 14, 28, 56, 112)"
            )
        for key, value, low in (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("val_size", val_size, 1),
            ("num_workers", num_workers, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"data.{key}={value!r} is invalid; it must be an integer >= {low}"
                )
        self.save_hyperparameters(logger=False)
        self.dataset = dataset
        self.root = str(root) if root else default_data_root()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.sequence = sequence
        self.step_pixels = step_pixels
        self.class_names = DATASETS[dataset][1]
        self.permutation = (
            torch.randperm(PIXELS, generator=torch.Generator().manual_seed(permutation_seed))
            if sequence == "permuted"
            else None
        )
        self.train_set: SequenceDataset | None = None
        self.val_set: SequenceDataset | None = None
        self.test_set: SequenceDataset | None = None
        # Where a restored checkpoint left off in the training order: (epoch, samples done).
        self._resume_at: tuple[int, int] | None = None

    # -- shape facts the network is built from ---------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> int:
        """Features per time step."""
        return step_size(self.sequence, self.step_pixels)

    @property
    def seq_len(self) -> int:
        return PIXELS // self.input_size

    # -- Lightning hooks -------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download through torchvision when files are missing (no-op when present)."""
        if not missing_files(self.root, self.dataset):
            return
        reason = "downloads are off (data.download=false)"
        if self.hparams.download:
            try:
                DATASETS[self.dataset][0](
                    str(Path(self.root).expanduser().resolve()), download=True
                )
                if not missing_files(self.root, self.dataset):
                    return
            except Exception as e:  # network errors come in many types; all mean the same here
                reason = f"the download failed: {' '.join(str(e).split())[:300]}"
        raise data_not_found(self.root, self.dataset, reason)

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
        scaled = images.to(torch.float32).div_(255.0)
        return sequence_view(scaled, self.sequence, self.step_pixels, self.permutation)

    def _loader(
        self, ds: SequenceDataset | None, batch_size: int, sampler: Sampler | None = None
    ) -> DataLoader:
        if ds is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=keep_batch,
            num_workers=self.hparams.num_workers,
            # A private generator: making an iterator then draws nothing from the global RNG,
            # so validation passes cannot shift dropout masks (and resumed runs match).
            generator=torch.Generator().manual_seed(self.hparams.shuffle_seed),
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        sampler = ResumableSampler(len(self.train_set), seed=self.hparams.shuffle_seed)
        if self._resume_at is not None:
            sampler.resume_at(*self._resume_at)
            self._resume_at = None
        return self._loader(self.train_set, self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # Saved in every checkpoint: the permutation is part of the model's input contract, and
    # the position in the shuffled order lets a mid-epoch checkpoint resume exactly.
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"permutation": self.permutation}
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == "fit":
            done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            if done >= trainer.num_training_batches:  # epoch finished: next one from the start
                state["train_position"] = (trainer.current_epoch + 1, 0)
            else:
                state["train_position"] = (trainer.current_epoch, done * self.batch_size)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("permutation") is not None:
            self.permutation = state_dict["permutation"]
        position = state_dict.get("train_position")
        trainer = self.trainer
        if position is not None and trainer is not None and trainer.world_size > 1:
            # Lightning wraps the sampler to split it across ranks; an offset would skip the
            # wrong samples, so a multi-process resume restarts the interrupted epoch.
            position = (position[0], 0)
        self._resume_at = tuple(position) if position is not None else None
