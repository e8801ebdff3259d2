"""Helpers shared by the tests: tiny synthetic datasets in torchvision's raw IDX layout, the
config composed in-process as the command composes it, tiny trained checkpoints, digit
pictures, and (for the e2e tests) the entry points run in a subprocess as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image, ImageDraw

from seqmnist.core.project import CONF_DIR
from seqmnist.data import SeqMNISTDataModule
from seqmnist.data.synthetic import make_images, write_dataset, write_idx
from seqmnist.jobs.resolvers import register_resolvers
from seqmnist.models import SeqClassifier

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(CONF_DIR)
REAL_DATA_ROOT = Path(
    os.environ.get("SEQMNIST_DATA_ROOT") or PROJECT_ROOT.parent / "shared" / "data"
)

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
# Tiny tensors gain nothing from a second thread, and on a busy 2-core machine the thread
# barriers of every one of 784 recurrent steps can cost seconds each.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


# -- data: the synthetic IDX files live in the package (make gpu-check uses them too) -------
__all__ = ["make_images", "write_dataset", "write_idx"]


# -- configs composed in-process ----------------------------------------------------------
def compose_config(
    *overrides: str, config_name: str = "train", run_dir: Path | None = None
) -> DictConfig:
    """The config ``python -m seqmnist.<command> overrides`` would run with, composed with
    Hydra's compose API (as the lightning-hydra-template's tests do).

    Hydra's runtime facts (``${hydra:...}``: the chosen groups in the run name) resolve
    through the HydraConfig singleton; ``paths.output_dir`` is ``run_dir``.
    """
    register_resolvers()  # as the commands do before Hydra composes
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # what a running app sees: Hydra's own node is not part of it
        cfg.paths.output_dir = str(run_dir or "/tmp/seqmnist-test-out")
    return cfg


def train_in_process(root: Path, run_dir: Path, *overrides: str) -> dict[str, Any]:
    """``python -m seqmnist.train`` with the FAST settings, in this process; its metrics."""
    from seqmnist.train import train

    cfg = compose_config(f"data.root={root}", *FAST, *overrides, run_dir=run_dir)
    return train(cfg)


def copy_run(run_dir: Path, to: Path) -> Path:
    """A private copy of a finished run, for a test that changes or resumes it."""
    shutil.copytree(run_dir, to)
    return to


def metrics_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def best_ckpt(run_dir: Path) -> Path:
    """The best checkpoint of a run, by the name metrics.json gives (the run may be a copy)."""
    return run_dir / "checkpoints" / Path(metrics_of(run_dir)["best_ckpt"]).name


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


# One checkpoint of every kind a layout test needs: each cell, stacked and bidirectional nets,
# both datasets and every sequence mode (784-step ones with the LSTM: PyTorch's CPU RNN/GRU
# are slow over long sequences).
LAYOUTS = [
    {
        "cell": "gru",
        "layers": 2,
        "bidirectional": True,
        "dataset": "fashion_mnist",
        "sequence": "column",
    },
    {
        "cell": "lstm",
        "layers": 1,
        "bidirectional": False,
        "dataset": "mnist",
        "sequence": "permuted",
        "permutation_seed": 7,
    },
    {
        "cell": "rnn",
        "layers": 3,
        "bidirectional": True,
        "dataset": "mnist",
        "sequence": "patch",
        "step_pixels": 112,
    },
    {
        "cell": "rnn",
        "layers": 2,
        "bidirectional": False,
        "dataset": "fashion_mnist",
        "sequence": "patch",
        "step_pixels": 56,
    },
    {"cell": "lstm", "layers": 2, "bidirectional": False, "dataset": "mnist", "sequence": "pixel"},
]
LAYOUT_IDS = [f"{c['cell']}-{c['layers']}-{c['sequence']}-{c['dataset']}" for c in LAYOUTS]


def drawn_digit(size: int = 28) -> np.ndarray:
    """A hand-drawn-looking '7', white on black like MNIST, as uint8 ``(size, size)``."""
    big = Image.new("L", (140, 140), 0)
    d = ImageDraw.Draw(big)
    d.line([(35, 30), (105, 30), (60, 115)], fill=255, width=14, joint="curve")
    d.line([(55, 72), (90, 72)], fill=255, width=10)
    return np.asarray(big.resize((size, size), Image.Resampling.LANCZOS))


class SlowSteps(L.Callback):
    """Makes each training step take at least ``seconds``, so a test can signal mid-epoch.
    Added to a run with ``+callbacks.slow._target_=tests.helpers.SlowSteps``; with
    ``+callbacks.slow.job=N`` only in the sweep job whose directory is named ``N``; with
    ``+callbacks.slow.until=PATH`` no longer once PATH exists (a step then waits for it at
    most ``seconds``): a job held until another one has started, however slow the host."""

    def __init__(
        self, seconds: float = 0.1, job: str | None = None, until: str | None = None
    ) -> None:
        self.seconds = seconds
        self.job = None if job is None else str(job)
        self.until = None if until is None else Path(until)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.job is not None and Path(trainer.default_root_dir).name != self.job:
            return
        if self.until is None:
            time.sleep(self.seconds)
            return
        deadline = time.monotonic() + self.seconds
        while not self.until.exists() and time.monotonic() < deadline:
            time.sleep(0.2)


class KillJob(L.Callback):
    """SIGKILLs its own process, as the OOM killer or a failing node would, at the first
    training batch of the job whose directory is named ``job`` (a sweep's job number).
    Added with ``+callbacks.killer._target_=tests.helpers.KillJob +callbacks.killer.job=0``."""

    def __init__(self, job: str) -> None:
        self.job = str(job)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if Path(trainer.default_root_dir).name == self.job:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAt(L.Callback):
    """A stop signal arriving during training step ``step``, in-process: it does what the
    handler of :class:`seqmnist.training.lifecycle.Lifecycle` does (records the signal), and
    the run then stops as under a real one. Added with ``+callbacks.signal_at._target_=
    tests.helpers.SignalAt +callbacks.signal_at.step=N``; a resume passes
    ``+callbacks.signal_at=null``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        from seqmnist.training.lifecycle import Lifecycle

        if trainer.global_step == self.step and Lifecycle.active is not None:
            Lifecycle.active.signal = signal.SIGTERM


# -- e2e: the commands as a user runs them ------------------------------------------------
def user_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a user's shell: unbuffered output, no HYDRA_FULL_ERROR tracebacks."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_module(
    module: str,
    *args: str,
    cwd: Path = PROJECT_ROOT,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` in ``cwd`` the way a user would. On a timeout every
    process it started (DDP ranks, sweep jobs) is ended too, not left holding cores and
    ports for the tests after it."""
    cmd = [sys.executable, "-m", module, *args]
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=user_env(env),
        text=True,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_sweep(
    *args: str,
    root: Path,
    sweep_dir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """``python -m seqmnist.train -m`` over tiny data into ``sweep_dir`` (``-m`` goes first),
    on one thread; ``env`` adds to the environment."""
    return run_module(
        "seqmnist.train",
        "-m",
        f"data.root={root}",
        f"hydra.sweep.dir={sweep_dir}",
        *FAST,
        *args,
        env={**ONE_THREAD, **(env or {})},
        timeout=timeout,
    )


class NaNOnRank(L.Callback):
    """Poisons one rank's batch at one step, so that rank alone sees a NaN loss. Added with
    ``+callbacks.nan._target_=tests.helpers.NaNOnRank``."""

    def __init__(self, rank: int = 1, step: int = 2) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, *args: Any):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            batch[0].fill_(float("nan"))


class StopAt(L.Callback):
    """A real stop signal (``os.kill`` of this process) at one point of a run, once: when
    ``once`` (a file) does not exist yet; it is made as the signal goes. Points: ``sanity``
    (the sanity check's start), ``train`` (training batch ``batch`` of ``epoch``, as it
    starts), ``val`` (validation batch ``batch`` of ``epoch``, not the sanity check), ``test``
    (test batch ``batch``). Added with ``+callbacks.stop_at._target_=tests.helpers.StopAt``
    and its keys; a run continued after the stop finds the file and sends nothing."""

    def __init__(
        self, point: str, once: str, epoch: int = 0, batch: int = 0, sig: int = signal.SIGTERM
    ) -> None:
        self.point, self.once = point, Path(once)
        self.epoch, self.batch, self.sig = epoch, batch, int(sig)

    def _fire(self) -> None:
        if not self.once.exists():
            self.once.touch()
            os.kill(os.getpid(), self.sig)

    def on_sanity_check_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.point == "sanity":
            self._fire()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, idx: int):
        if self.point == "train" and (trainer.current_epoch, idx) == (self.epoch, self.batch):
            self._fire()

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module, batch, idx: int, *a):
        at = (trainer.current_epoch, idx) == (self.epoch, self.batch)
        if self.point == "val" and not trainer.sanity_checking and at:
            self._fire()

    def on_test_batch_start(self, trainer: L.Trainer, pl_module, batch, idx: int, *a) -> None:
        if self.point == "test" and idx == self.batch:
            self._fire()


class WaitInTest(L.Callback):
    """Holds a run at the start of its test until a signal has come (at most ``seconds``),
    so that a SLURM time-limit signal lands once the fit is over. Added with
    ``+callbacks.wait._target_=tests.helpers.WaitInTest``."""

    def __init__(self, seconds: float = 150) -> None:
        self.seconds = seconds

    def on_test_start(self, trainer: L.Trainer, *args: Any) -> None:
        from seqmnist.training.lifecycle import Lifecycle

        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            life = Lifecycle.active
            if life is None or life.late is not None:
                return
            time.sleep(0.2)


class HoldUntil(L.Callback):
    """Holds a job at its first training batch (its fit has begun: a search trial's job beats
    its heartbeat there) until ``release`` (a file) exists, at most ``seconds``. As the hold
    begins it makes ``<held>/<the job's directory name>``, so a test knows the job is there.
    With ``job=N`` only the sweep job whose directory is named ``N`` is held. Added with
    ``+callbacks.hold._target_=tests.helpers.HoldUntil +callbacks.hold.release=PATH
    +callbacks.hold.held=DIR``."""

    def __init__(
        self, release: str, held: str, seconds: float = 180, job: str | None = None
    ) -> None:
        self.release, self.held, self.seconds = Path(release), Path(held), seconds
        self.job = None if job is None else str(job)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, idx: int):
        name = Path(trainer.default_root_dir).name
        if trainer.current_epoch or idx or (self.job is not None and name != self.job):
            return
        self.held.mkdir(parents=True, exist_ok=True)
        (self.held / name).touch()
        deadline = time.monotonic() + self.seconds
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.2)


def write_command(bin_dir: Path, name: str, script: str) -> Path:
    """A stand-in for a command (``scontrol``, ``squeue``, ``sacct``, ...) in ``bin_dir``: a
    shell script with ``script`` as its body."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = bin_dir / name
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    return fake


def fake_command(monkeypatch: Any, bin_dir: Path, name: str, script: str) -> Path:
    """:func:`write_command`, with ``bin_dir`` first on this process's PATH."""
    fake = write_command(bin_dir, name, script)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return fake
