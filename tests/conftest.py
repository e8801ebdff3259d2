"""Shared fixtures: tiny synthetic datasets in torchvision's raw IDX layout, and helpers to
run the entry points as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_ROOT = Path(
    os.environ.get("SEQMNIST_DATA_ROOT") or PROJECT_ROOT.parent / "shared" / "data"
)


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
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = make_images(n, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with synthetic MNIST and Fashion-MNIST (600 train, 200 test images each)."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, "MNIST")
    write_dataset(root, "FashionMNIST")
    return root


@pytest.fixture
def real_root() -> Path:
    if not (REAL_DATA_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found under {REAL_DATA_ROOT} (set SEQMNIST_DATA_ROOT)")
    return REAL_DATA_ROOT


# Overrides that make a training run take seconds on the synthetic data.
FAST = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "callbacks.model_summary=null",
    "data.batch_size=32",
    "data.eval_batch_size=100",
    "data.val_size=100",
    "hidden=16",
]


def user_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a user's shell: unbuffered output, no HYDRA_FULL_ERROR tracebacks."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_module(
    module: str, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` in ``cwd`` the way a user would."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=user_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_sweep(*args: str, root: Path, sweep_dir: Path) -> subprocess.CompletedProcess:
    """``python -m seqmnist.train -m`` over tiny data into ``sweep_dir`` (``-m`` goes first)."""
    return run_module("seqmnist.train", "-m", f"data.root={root}", f"hydra.sweep.dir={sweep_dir}",
                      *FAST, *args, cwd=PROJECT_ROOT)  # fmt: skip
