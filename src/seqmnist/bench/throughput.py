"""Throughput of training: the project's Lightning path against a plain PyTorch loop, timed
in alternating rounds on the same in-memory data and network code (``seqmnist.bench`` prints
and writes what this measures)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from seqmnist.core.project import CONF_DIR
from seqmnist.core.rundir import RunDir
from seqmnist.data import SeqMNISTDataModule, SequenceDataset
from seqmnist.data.augment import BatchAugment
from seqmnist.models import RecurrentClassifier, SeqClassifier
from seqmnist.training import precision

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


@dataclass(frozen=True)
class BenchConfig:
    name: str
    cell: str
    layers: int
    hidden: int
    batch_size: int
    dropout: float = 0.0
    cpu_kernel: str = "native"
    precision: str = "32-true"  # as trainer.precision (auto: as chosen on this machine)
    compile: bool = False  # as compile=true
    # The plain loop's precision when it differs from the Lightning path's (None: the same).
    plain_precision: str | None = None


# The first row is the project's default path as it runs on this machine (trainer.precision=
# auto: bf16 where the CPU has the units) against what a user would write: nn.LSTM in float32.
CONFIGS = [
    BenchConfig(
        "lstm128-bs128 (default)", "lstm", 1, 128, 128, precision="auto", plain_precision="32-true"
    ),
    BenchConfig("gru3x200-bs64 nn.GRU", "gru", 3, 200, 64),
    BenchConfig("gru3x200-bs64 fused", "gru", 3, 200, 64, cpu_kernel="fused"),
    BenchConfig("lstm128-bs1024", "lstm", 1, 128, 1024),
]
# The default config with one speed switch on each (``--switches``).
SWITCHES = [
    BenchConfig("lstm128-bs128 compile", "lstm", 1, 128, 128, compile=True),
    BenchConfig("lstm128-bs128 bf16-mixed", "lstm", 1, 128, 128, precision="bf16-mixed"),
    BenchConfig("lstm128-bs128 float32", "lstm", 1, 128, 128),
    BenchConfig("lstm128-bs128 fused", "lstm", 1, 128, 128, cpu_kernel="fused"),
]
AUTOCAST = {"bf16-mixed": torch.bfloat16}  # the plain loop's counterpart of trainer.precision


def macs_per_sample(
    c: BenchConfig, input_size: int = 28, seq_len: int = 28, classes: int = 10
) -> int:
    """Forward multiply-adds of one sample: every gate's input and recurrent GEMM, then the head."""
    total, fan_in = 0, input_size
    for _ in range(c.layers):
        total += seq_len * GATES[c.cell] * c.hidden * (fan_in + c.hidden)
        fan_in = c.hidden
    return total + c.hidden * classes


def matmul_flops(
    c: BenchConfig, input_size: int = 28, repeats: int = 200, windows: int = 5, device: str = "cpu"
) -> float:
    """Measured FLOP/s of the cell's per-step GEMM, (B, in+H) @ (in+H, gates*H).

    The best of a few timing windows: a floor is what the machine can do, and a window hit
    by noise would flatter the efficiency figure.
    """
    a = torch.randn(c.batch_size, input_size + c.hidden, device=device)
    b = torch.randn(input_size + c.hidden, GATES[c.cell] * c.hidden, device=device)
    for _ in range(20):
        a @ b
    best = float("inf")
    for _ in range(windows):
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] * repeats / best


def _sync(device: str | torch.device) -> None:
    # CUDA kernels run asynchronously: wait for them before reading the clock.
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def make_net(c: BenchConfig) -> dict:
    return {
        "cell": c.cell,
        "hidden_size": c.hidden,
        "num_layers": c.layers,
        "dropout": c.dropout,
        "cpu_kernel": c.cpu_kernel,
    }


def time_plain(c: BenchConfig, dm: SeqMNISTDataModule, steps: int) -> float:
    """Samples/s of a plain loop over ``steps`` shuffled batches (after 5 warm-up steps)."""
    x, y = dm.train_set.inputs, dm.train_set.targets
    net = RecurrentClassifier(dm.input_size, dm.num_classes, **make_net(c)).to(x.device)
    if c.compile:
        net.compile()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)  # as conf/optimizer/adam.yaml
    dtype = AUTOCAST.get(c.plain_precision or c.precision)
    order = torch.randperm(len(y), device=x.device)
    start = 0.0
    for step in range(steps + 5):
        if step == 5:
            _sync(x.device)
            start = time.perf_counter()
        idx = order[(step * c.batch_size) % (len(y) - c.batch_size) :][: c.batch_size]
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(x.device)
    return steps * c.batch_size / (time.perf_counter() - start)


class _StepTimer(Callback):
    """Times training batches 6..``total`` (same warm-up as the plain loop).

    The clock is read after a CUDA sync only at the two ends, as in the plain loop: a sync
    per step would slow the Lightning path down on a GPU.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.start: float | None = None
        self.end: float | None = None
        self.seen = 0  # batches started, across epochs

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen == 6:
            _sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.seen == self.total:
            _sync(pl_module.device)
            self.end = time.perf_counter()


def time_lightning(
    c: BenchConfig, dm: SeqMNISTDataModule, steps: int, log_dir: str, accelerator: str = "cpu"
) -> float:
    """Samples/s of the project's path: DataModule + SeqClassifier + Trainer, logging on."""
    dm.batch_size = c.batch_size
    model = SeqClassifier(
        net=make_net(c),
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3, "fused": True},
        input_size=dm.input_size,
        num_classes=dm.num_classes,
    )
    if c.compile:
        model.net.compile()
    timer = _StepTimer(total=steps + 5)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision.choose(c.precision, accelerator),
        max_epochs=-1,
        max_steps=steps + 5,
        limit_val_batches=0,
        logger=TensorBoardLogger(log_dir, name="", version=""),
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    if timer.start is None or timer.end is None:
        raise RuntimeError(f"bench: the Lightning run stopped before batch {steps + 5}")
    # Timed from the start of batch 6 to the end of the last one, like the plain loop.
    return steps * c.batch_size / (timer.end - timer.start)


def run(
    configs: list[BenchConfig],
    rounds: int,
    samples: int,
    root: str,
    val_size: int = 5000,
    accelerator: str = "cpu",
) -> list[dict]:
    device = "cuda" if accelerator == "gpu" else "cpu"
    dm = SeqMNISTDataModule(root=root, download=False, val_size=val_size)
    dm.prepare_data()
    dm.setup("fit")
    if device != "cpu":  # data.device_resident=true: both loops gather batches on the GPU
        ds = dm.train_set
        dm.train_set = SequenceDataset(ds.inputs.to(device), ds.targets.to(device))
    rows = []
    with tempfile.TemporaryDirectory() as log_dir:
        for c in configs:
            steps = max(20, samples // c.batch_size)
            time_plain(c, dm, 5)  # warm-up: first calls allocate and pick kernels
            time_lightning(c, dm, 5, log_dir, accelerator)
            plain, light = [], []
            for _ in range(rounds):
                torch.manual_seed(0)
                plain.append(time_plain(c, dm, steps))
                torch.manual_seed(0)
                light.append(time_lightning(c, dm, steps, log_dir, accelerator))
            p, lt = statistics.median(plain), statistics.median(light)
            paired = statistics.median(b / a for a, b in zip(plain, light, strict=True))
            # Seconds per sample if every FLOP ran at the measured matmul speed.
            floor = 6 * macs_per_sample(c) / matmul_flops(c, device=device)
            rows.append(
                {
                    **asdict(c),
                    "steps": steps,
                    "plain_samples_per_s": round(p, 1),
                    "lightning_samples_per_s": round(lt, 1),
                    "ratio": round(paired, 3),
                    "plain_rounds": [round(v, 1) for v in plain],
                    "lightning_rounds": [round(v, 1) for v in light],
                    "train_flops_per_sample": 6 * macs_per_sample(c),
                    "efficiency_vs_matmul": round(lt * floor, 3),
                }
            )
    return rows


# -- augmentation: what it adds to an epoch ---------------------------------------------------
AUGMENT_DIR = CONF_DIR / "augment"


def augment_preset(name: str) -> BatchAugment:
    """The strengths of ``augment=NAME`` (conf/augment/NAME.yaml over none.yaml)."""
    from omegaconf import OmegaConf

    values = {}
    for part in ("none", name):
        node = OmegaConf.to_container(OmegaConf.load(AUGMENT_DIR / f"{part}.yaml"))
        values.update({k: v for k, v in node.items() if k != "defaults"})
    return BatchAugment.from_config(values)


def time_augmentation(
    preset: str,
    rounds: int,
    samples: int,
    root: str,
    val_size: int = 5000,
    accelerator: str = "cpu",
) -> dict:
    """The default config's Lightning path without and with ``augment=preset``, alternated
    round by round; the cost as a paired ratio and as seconds added to a 55,000-image epoch."""
    c = CONFIGS[0]
    device = "cuda" if accelerator == "gpu" else "cpu"
    dm = SeqMNISTDataModule(root=root, download=False, val_size=val_size)
    dm.prepare_data()
    dm.setup("fit")
    if device != "cpu":
        ds = dm.train_set
        dm.train_set = SequenceDataset(ds.inputs.to(device), ds.targets.to(device))
    steps = max(20, samples // c.batch_size)
    off, on = BatchAugment(), augment_preset(preset)
    without, with_ = [], []
    with tempfile.TemporaryDirectory() as log_dir:
        dm.augment = on
        time_lightning(c, dm, 5, log_dir, accelerator)  # warm-up
        for _ in range(rounds):
            for aug, into in ((off, without), (on, with_)):
                dm.augment = aug
                torch.manual_seed(0)
                into.append(time_lightning(c, dm, steps, log_dir, accelerator))
    dm.augment = off
    a, b = statistics.median(without), statistics.median(with_)
    epoch = len(dm.train_set)
    return {
        "name": f"{c.name} + augment={preset}",
        "augment": on.as_dict(),
        "without_samples_per_s": round(a, 1),
        "with_samples_per_s": round(b, 1),
        "ratio": round(statistics.median(y / x for x, y in zip(without, with_, strict=True)), 3),
        "epoch_seconds_without": round(epoch / a, 2),
        "epoch_seconds_added": round(epoch / b - epoch / a, 2),
        "without_rounds": [round(v, 1) for v in without],
        "with_rounds": [round(v, 1) for v in with_],
    }


# -- whole runs: what a user feels ----------------------------------------------------------
def _output(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench: {' '.join(cmd[:4])} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def time_whole_runs(root: str, epochs: int, rounds: int, val_size: int = 5000) -> dict:
    """``python -m seqmnist.train`` with its defaults against the plain script, alternated.

    Both run as the user runs them, in a fresh process each, for ``epochs`` epochs with the
    validation pass after every epoch; each reports the seconds from reading the data to
    the last validation (``train_seconds``). The run renders its progress bar as on a
    terminal (``FORCE_COLOR``), writes TensorBoard, ``last.ckpt`` every 100 steps and the
    best checkpoint; it skips only the final test, which is outside ``train_seconds``.
    """
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "100", "PYTHONUNBUFFERED": "1"}
    plain, run = [], []
    samples = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            out = _output(
                [
                    sys.executable,
                    "-m",
                    "seqmnist.bench.plain_script",
                    "--epochs",
                    str(epochs),
                    "--root",
                    root,
                    "--val-size",
                    str(val_size),
                ],
                env,
            )
            result = json.loads(out.strip().splitlines()[-1])
            samples = result["samples"]
            plain.append(samples / result["train_seconds"])
            run_dir = Path(tmp) / f"run{i}"
            _output(
                [
                    sys.executable,
                    "-m",
                    "seqmnist.train",
                    f"trainer.max_epochs={epochs}",
                    "test=false",
                    f"data.root={root}",
                    f"data.val_size={val_size}",
                    f"hydra.run.dir={run_dir}",
                ],
                env,
            )
            metrics = RunDir(run_dir).read_metrics() or {}
            run.append(samples / metrics["train_seconds"])
    return {
        "name": f"whole run, {epochs} epoch{'s' if epochs > 1 else ''} (default recipe)",
        "epochs": epochs,
        "samples": samples,
        "plain_samples_per_s": round(statistics.median(plain), 1),
        "run_samples_per_s": round(statistics.median(run), 1),
        "ratio": round(statistics.median(b / a for a, b in zip(plain, run, strict=True)), 3),
        "plain_rounds": [round(v, 1) for v in plain],
        "run_rounds": [round(v, 1) for v in run],
    }
