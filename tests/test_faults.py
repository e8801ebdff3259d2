"""Faults a run must survive: kills, signals, corrupt or half-written checkpoints, resumes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seqmnist.data import SeqMNISTDataModule
from seqmnist.faults import AtomicCheckpointIO, FaultTolerance, ResumableSampler

from .conftest import FAST, PROJECT_ROOT, run_module, user_env

# Two epochs of 16 steps (500 synthetic training images, batch 32), a last.ckpt every 3
# steps, dropout between two layers (so the RNG matters) and a one-cycle schedule (so the
# scheduler state matters). Each step sleeps 0.1 s so a signal lands mid-epoch.
RUN = [
    *(o for o in FAST if not o.startswith(("trainer.max_epochs", "trainer.limit_train"))),
    "trainer.max_epochs=2",
    "layers=2",
    "dropout=0.3",
    "optimizer.lr=0.01",
    "scheduler=onecycle",
    "callbacks.resume_checkpoint.every_n_train_steps=3",
    "+callbacks.slow._target_=tests.fault_helpers.SlowSteps",
]
# What an interrupted-then-resumed run must reproduce exactly.
SAME = ["val/acc_best", "test/acc", "test/loss", "epochs", "params"]


def train(*args: str, root: Path, run_dir: Path) -> subprocess.CompletedProcess:
    return run_module("seqmnist.train", f"data.root={root}", f"hydra.run.dir={run_dir}", *RUN,
                      *args, cwd=PROJECT_ROOT)  # fmt: skip


def resume(target: Path, run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_module("seqmnist.train", f"resume={target}", f"hydra.run.dir={run_dir}", *args,
                      cwd=PROJECT_ROOT)  # fmt: skip


def start_and_signal(root: Path, run_dir: Path, sig: int) -> subprocess.CompletedProcess:
    """Start a run, send ``sig`` once its first mid-epoch ``last.ckpt`` exists, wait."""
    cmd = [sys.executable, "-m", "seqmnist.train", f"data.root={root}",
           f"hydra.run.dir={run_dir}", *RUN]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=user_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its first checkpoint:\n" + proc.stdout.read()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def finished_short_run(root: Path, run_dir: Path) -> None:
    """A completed one-epoch run (the suite's FAST settings) to resume."""
    done = run_module("seqmnist.train", f"data.root={root}", f"hydra.run.dir={run_dir}", *FAST,
                      cwd=PROJECT_ROOT)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = tmp_path_factory.mktemp("faults") / "uninterrupted"
    proc = train(root=synthetic_root, run_dir=run_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return metrics(run_dir)


# -- pieces ------------------------------------------------------------------------------
def test_sampler_order_depends_only_on_seed_and_epoch() -> None:
    a, b = ResumableSampler(100, seed=3), ResumableSampler(100, seed=3)
    torch.manual_seed(0)
    first = list(a)
    torch.manual_seed(1)  # the global RNG plays no part
    assert list(b) == first and sorted(first) == list(range(100))
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(100))
    assert list(ResumableSampler(100, seed=4)) != first


def test_sampler_resumes_mid_epoch_once() -> None:
    s = ResumableSampler(50, seed=0)
    s.set_epoch(2)
    full = list(s)
    s.resume_at(2, 20)
    assert list(s) == full[20:]
    assert list(s) == full  # the next epoch's iterator starts from the beginning again


def test_loaders_leave_the_global_rng_alone(synthetic_root: Path) -> None:
    dm = SeqMNISTDataModule(root=str(synthetic_root), val_size=100, batch_size=32)
    dm.setup("fit")
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)


def test_rng_state_is_put_back_before_the_next_batch() -> None:
    cb = FaultTolerance()
    torch.manual_seed(5)
    random.seed(5)
    state = cb.state_dict()
    expected = (torch.rand(3), random.random())
    torch.manual_seed(99)
    random.seed(99)
    cb.load_state_dict(state)
    cb.on_train_batch_start(None)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left


# -- end to end --------------------------------------------------------------------------
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(
    synthetic_root: Path, tmp_path: Path, uninterrupted: dict
) -> None:
    run_dir = tmp_path / "killed"
    proc = start_and_signal(synthetic_root, run_dir, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert metrics(run_dir)["status"] == "running"  # killed: nothing got to write

    again = resume(run_dir, tmp_path / "resume_invocation")
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = metrics(run_dir)
    assert resumed["status"] == "completed"
    assert resumed["resumed_from"] == str((run_dir / "checkpoints" / "last.ckpt").resolve())
    assert {k: resumed[k] for k in SAME} == {k: uninterrupted[k] for k in SAME}
    # Logged into the same TensorBoard run as before the kill.
    assert len(list((run_dir / "tensorboard").iterdir())) == 1


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"),
                                                   (signal.SIGINT, 130, "Ctrl+C")])  # fmt: skip
def test_signal_stops_cleanly_with_a_checkpoint_and_resumes(
    synthetic_root: Path, tmp_path: Path, uninterrupted: dict, sig: int, code: int, name: str
) -> None:
    run_dir = tmp_path / "stopped"
    proc = start_and_signal(synthetic_root, run_dir, sig)
    assert proc.returncode == code, proc.stdout
    assert f"stopped by {name}" in proc.stdout
    assert f"resume={run_dir}" in proc.stdout
    assert "Traceback" not in proc.stdout
    record = metrics(run_dir)
    assert record["status"] == "interrupted" and f"resume={run_dir}" in record["error"]

    again = resume(run_dir, tmp_path / "resume_invocation")
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = metrics(run_dir)
    assert {k: resumed[k] for k in SAME} == {k: uninterrupted[k] for k in SAME}


def test_resume_can_train_longer(synthetic_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    finished_short_run(synthetic_root, run_dir)
    assert metrics(run_dir)["epochs"] == 1
    more = resume(run_dir, tmp_path / "more", "trainer.max_epochs=2")
    assert more.returncode == 0, more.stdout + more.stderr
    assert metrics(run_dir)["epochs"] == 2 and metrics(run_dir)["max_epochs"] == 2


def _corrupt_last(run_dir: Path) -> None:
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 not really a zip")


@pytest.mark.parametrize(
    ("setup", "args", "expected"),
    [
        ("none", ["resume=/no/such/run"], "no such file or directory"),
        ("no_ckpt", [], "does not exist (the run stopped before its first checkpoint)"),
        ("no_config", [], "resolved_config.yaml is missing"),
        ("corrupt", [], "truncated or corrupt"),
        ("ok", ["hidden=64"], "'hidden=64' cannot change a resumed run"),
    ],
)
def test_bad_resume_is_one_clear_error(
    synthetic_root: Path, tmp_path: Path, setup: str, args: list[str], expected: str
) -> None:
    run_dir = tmp_path / "run"
    if setup != "none":
        finished_short_run(synthetic_root, run_dir)
    if setup == "no_ckpt":
        for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
            ckpt.unlink()
    if setup == "no_config":
        (run_dir / "resolved_config.yaml").unlink()
    if setup == "corrupt":
        _corrupt_last(run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} if run_dir.exists() else {}
    target = args if setup == "none" else [f"resume={run_dir}", *args]
    invocation = f"hydra.run.dir={tmp_path / 'invocation'}"
    proc = run_module("seqmnist.train", *target, invocation, cwd=PROJECT_ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert expected in out and "Traceback" not in out
    # The run being resumed is left exactly as it was.
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
