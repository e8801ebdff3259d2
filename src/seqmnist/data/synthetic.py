"""A learnable stand-in for MNIST, written in torchvision's raw IDX layout: for tests and
for checks that must run where the real data is absent (``make gpu-check``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (big-endian header: magic, then each dimension)."""
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A learnable rule: class c lights up rows 2c+3 and 2c+4 of a noisy image."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 * c + 3 : 2 * c + 5, 4:24] = 255
    return images, labels


def write_dataset(root: Path, folder: str = "MNIST", n_train: int = 600, n_test: int = 200) -> Path:
    """``root/folder/raw/*-ubyte`` with ``n_train`` training and ``n_test`` test images."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = make_images(n, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root
