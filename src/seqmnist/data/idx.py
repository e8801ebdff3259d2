"""The raw IDX files of MNIST and Fashion-MNIST in torchvision's ``root`` layout: where they
are, whether they are whole, and reading one split into tensors."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision import datasets as tv_datasets

from seqmnist.core.errors import DataError

IMAGE_SIDE = 28
PIXELS = IMAGE_SIDE * IMAGE_SIDE

# name -> (torchvision class, class names shown in logs and reports)
DATASETS: dict[str, tuple[type[tv_datasets.MNIST], list[str]]] = {
    "mnist": (tv_datasets.MNIST, [str(d) for d in range(10)]),
    "fashion_mnist": (tv_datasets.FashionMNIST, list(tv_datasets.FashionMNIST.classes)),
}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


def default_data_root(project_root: str | None = None) -> str:
    """The one default of ``data.root``: ``$SEQMNIST_DATA_ROOT`` if set, else ``data/`` under
    the project root (the configs' ``paths.root_dir``; else ``$SEQMNIST_PROJECT_ROOT``, else
    the current directory). The configs read it through the ``seqmnist.data_root`` resolver
    (``paths.data_dir``)."""
    if root := os.environ.get("SEQMNIST_DATA_ROOT"):
        return root
    project = project_root or os.environ.get("SEQMNIST_PROJECT_ROOT")
    return f"{project}/data" if project else "data"


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


def download(root: str | Path, dataset: str) -> None:
    """Let torchvision fetch whatever is missing under ``root`` (raises on network errors)."""
    DATASETS[dataset][0](str(Path(root).expanduser().resolve()), download=True)


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
