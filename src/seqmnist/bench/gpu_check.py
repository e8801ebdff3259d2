"""What only a GPU can prove: ``python -m seqmnist.bench.gpu_check`` (``make gpu-check``).

Runs each check on CUDA and prints a pass/fail table; exit status 1 if one fails. On a
machine without CUDA every row says "skipped" (exit 0): CI and the tests run on CPU.

- fp16 (``16-mixed``) on cuDNN: LSTM and GRU train a few steps with a GradScaler, the
  gradients finite and the loss falling;
- bf16 (``bf16-mixed``): the recurrence runs in float32 (PyTorch's cuDNN RNN under bf16
  autocast would run in fp16, with no GradScaler), the head in bf16, gradients finite;
- device-resident data: the split and each batch live on the GPU, the sampler's indices too
  (no host-to-device copy per batch);
- DDP on one GPU: the NCCL process group comes up and a few steps train;
- training-batch augmentation on CUDA: the batch stays on the GPU, the CUDA generator makes
  the draws (same seed, same batch) and matches the CPU code's geometry;
- ``seqmnist.bench --accelerator gpu``: the step ratio on the GPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from seqmnist.core.internals import quiet_console
from seqmnist.data import SeqMNISTDataModule
from seqmnist.data.synthetic import write_dataset
from seqmnist.models import RecurrentClassifier
from seqmnist.models.module import SeqClassifier

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01}


def _batches(root: Path, device: str, n: int = 40) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dm = SeqMNISTDataModule(root=str(root), batch_size=64, val_size=500, download=False)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    return [tuple(t.to(device) for t in next(loader)) for _ in range(n)]


def _train_steps(root: Path, cell: str, dtype: torch.dtype) -> str:
    net = RecurrentClassifier(cell=cell, hidden_size=64, num_layers=2).cuda()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    losses = []
    for x, y in _batches(root, "cuda"):
        with torch.autocast("cuda", dtype=dtype):
            features = net.sequence_features(x)
            loss = F.cross_entropy(net.head(features[:, -1]), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        if not all(torch.isfinite(g).all() for g in grads):
            raise AssertionError(f"{cell}: non-finite gradients at step {len(losses)}")
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    if not last < first:
        raise AssertionError(f"{cell}: the loss did not fall ({first:.3f} -> {last:.3f})")
    return f"{cell} recurrence {features.dtype}, loss {first:.2f} -> {last:.2f}"


def check_fp16(root: Path) -> str:
    return "; ".join(_train_steps(root, cell, torch.float16) for cell in ("lstm", "gru"))


def check_bf16(root: Path) -> str:
    details = [_train_steps(root, cell, torch.bfloat16) for cell in ("lstm", "gru")]
    if any("float32" not in d for d in details):
        raise AssertionError("the recurrence did not run in float32: " + "; ".join(details))
    return "; ".join(details)


def _fit(root: Path, **trainer_kwargs) -> tuple[L.Trainer, SeqMNISTDataModule, dict]:
    seen: dict = {}

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("batch_device", batch[0].device)
            sampler = trainer.train_dataloader.batch_sampler
            seen.setdefault("index_device", next(iter(sampler)).device)
            if torch.distributed.is_initialized():
                seen.setdefault("backend", torch.distributed.get_backend())

    dm = SeqMNISTDataModule(
        root=str(root), batch_size=64, val_size=500, download=False, device_resident=True
    )
    model = SeqClassifier(net={"cell": "lstm", "hidden_size": 64}, optimizer=ADAM)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        max_steps=20,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[Probe()],
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=dm)
    return trainer, dm, seen


def check_device_resident(root: Path) -> str:
    _, dm, seen = _fit(root)
    where = {"split": dm.train_set.inputs.device, **seen}
    if any(d.type != "cuda" for d in where.values()):
        raise AssertionError(f"not all on the GPU: {where}")
    return ", ".join(f"{k} on {v}" for k, v in where.items())


def check_nccl(root: Path) -> str:
    trainer, _, seen = _fit(root, strategy="ddp")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if seen.get("backend") != "nccl":
        raise AssertionError(f"process group backend {seen.get('backend')!r}, not nccl")
    return f"nccl, {trainer.global_step} steps"


def check_augment(root: Path) -> str:
    from seqmnist.data.augment import BatchAugment

    x, _ = _batches(root, "cuda", n=1)[0]
    images = x.view(-1, 28, 28)
    aug = BatchAugment(rotate=10, translate=0.1, scale=0.1, shear=10, elastic_alpha=34)
    outs = []
    for _ in range(2):
        torch.cuda.manual_seed(3)
        outs.append(aug(images))
    if outs[0].device.type != "cuda" or not torch.equal(outs[0], outs[1]):
        raise AssertionError(f"on {outs[0].device}; repeatable: {torch.equal(outs[0], outs[1])}")
    shifted = BatchAugment(translate=2 / 28)
    shifted_cpu = shifted.inverse_affine(4, images.cpu())
    grid = torch.nn.functional.affine_grid(shifted_cpu.cuda(), [4, 1, 28, 28], align_corners=False)
    cuda = torch.nn.functional.grid_sample(images[:4, None], grid, align_corners=False)
    cpu = torch.nn.functional.grid_sample(images[:4, None].cpu(), grid.cpu(), align_corners=False)
    diff = float((cuda.cpu() - cpu).abs().max())
    if diff > 1e-5:
        raise AssertionError(f"CUDA and CPU resampling differ by {diff:.2e}")
    t0 = time.perf_counter()
    for _ in range(100):
        aug(images)
    torch.cuda.synchronize()
    return f"{(time.perf_counter() - t0) * 10:.2f} ms a batch of {len(images)}; CPU/CUDA {diff:.1e}"


def check_bench(root: Path) -> str:
    cmd = [
        sys.executable,
        "-m",
        "seqmnist.bench",
        "--accelerator",
        "gpu",
        "--rounds",
        "3",
        "--configs",
        "lstm",
        "--root",
        str(root),
        "--val-size",
        "500",
        "--out",
        str(root / "bench.json"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    return proc.stdout.strip().splitlines()[-1]


CHECKS: list[tuple[str, Callable[[Path], str]]] = [
    ("fp16-mixed on cuDNN (LSTM, GRU)", check_fp16),
    ("bf16-mixed: float32 recurrence", check_bf16),
    ("device-resident data", check_device_resident),
    ("DDP on one GPU (NCCL)", check_nccl),
    ("augmentation on CUDA", check_augment),
    ("bench --accelerator gpu", check_bench),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.parse_args(argv)
    quiet_console()
    rows: list[tuple[str, str, str]] = []
    if not torch.cuda.is_available():
        rows = [(name, "skipped", "no CUDA device on this machine") for name, _ in CHECKS]
    else:
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            root = write_dataset(Path(tmp), n_train=6000, n_test=500)
            for name, check in CHECKS:
                started = time.perf_counter()
                try:
                    detail = check(root)
                    result = "pass"
                except Exception as e:  # a failed check is a row, the others still run
                    detail, result = " ".join(f"{type(e).__name__}: {e}".split())[:300], "FAIL"
                rows.append((name, result, f"{detail} ({time.perf_counter() - started:.1f} s)"))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"GPU: {gpu}; torch {torch.__version__}\n")
    print("| check | result | detail |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    failed = sum(r[1] == "FAIL" for r in rows)
    print(
        f"\ngpu-check: {len(rows) - failed} of {len(rows)} "
        f"{'skipped' if gpu == 'none' else 'passed'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
