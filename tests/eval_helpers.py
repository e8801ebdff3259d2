"""Helpers shared by the evaluate/predict/checkpoint tests: tiny trained checkpoints and
digit pictures.

The subprocess-trained run is made once per test session (a module-level cache, because
the fixture is imported into several test modules and each import is its own fixture)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from seqmnist.data import SeqMNISTDataModule
from seqmnist.module import SeqClassifier

from .conftest import FAST, PROJECT_ROOT, run_module

_RUNS: dict[str, Path] = {}
# Tiny tensors gain nothing from a second thread, and on a busy 2-core machine the thread
# barriers of every one of 784 recurrent steps can cost seconds each.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run in-process torch work on one thread (see ONE_THREAD)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a tiny `python -m seqmnist.train` run on the synthetic data."""
    if "run" not in _RUNS:
        run_dir = tmp_path_factory.mktemp("trained") / "run"
        proc = run_module(
            "seqmnist.train",
            f"data.root={synthetic_root}",
            f"hydra.run.dir={run_dir}",
            *FAST,
            cwd=PROJECT_ROOT,
            env=ONE_THREAD,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _RUNS["run"] = run_dir
    return _RUNS["run"]


def best_ckpt(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / "metrics.json").read_text())["best_ckpt"])


def make_checkpoint(
    path: Path,
    root: Path,
    cell: str = "lstm",
    layers: int = 1,
    bidirectional: bool = False,
    dataset: str = "mnist",
    sequence: str = "row",
    hidden: int = 8,
    **dm_kwargs: Any,
) -> Path:
    """A real Lightning checkpoint (Trainer.save_checkpoint) after two training steps."""
    L.seed_everything(0, verbose=False)
    dm = SeqMNISTDataModule(
        dataset=dataset,
        root=str(root),
        sequence=sequence,
        batch_size=50,
        eval_batch_size=100,
        val_size=100,
        download=False,
        **dm_kwargs,
    )
    model = SeqClassifier(
        net={
            "cell": cell,
            "hidden_size": hidden,
            "num_layers": layers,
            "bidirectional": bidirectional,
        },
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01},
        input_size=dm.input_size,
        num_classes=dm.num_classes,
        class_names=dm.class_names,
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=path.parent,
    )
    trainer.fit(model, datamodule=dm)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


def drawn_digit(size: int = 28) -> np.ndarray:
    """A hand-drawn-looking '7', white on black like MNIST, as uint8 ``(size, size)``."""
    big = Image.new("L", (140, 140), 0)
    d = ImageDraw.Draw(big)
    d.line([(35, 30), (105, 30), (60, 115)], fill=255, width=14, joint="curve")
    d.line([(55, 72), (90, 72)], fill=255, width=10)
    return np.asarray(big.resize((size, size), Image.Resampling.LANCZOS))
