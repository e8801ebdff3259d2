"""Faults a run must survive: kills and signals mid-epoch (real processes), RNG state in
checkpoints and half-written checkpoint files."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seqmnist.train import run
from seqmnist.training.faults import AtomicCheckpointIO, FaultTolerance, rng_states
from seqmnist.training.lifecycle import Lifecycle, Phase
from tests.helpers import FAST, PROJECT_ROOT, compose_config, metrics_of, user_env

# Two epochs of 16 steps (500 synthetic training images, batch 32), a last.ckpt every 3
# steps, dropout between two layers (so the RNG matters) and a one-cycle schedule (so the
# scheduler state matters).
RUN = [
    *(o for o in FAST if not o.startswith(("trainer.max_epochs", "trainer.limit_train"))),
    "trainer.max_epochs=2",
    "layers=2",
    "dropout=0.3",
    "optimizer.lr=0.01",
    "scheduler=onecycle",
    "callbacks.resume_checkpoint.every_n_train_steps=3",
]
# Each step sleeps 0.1 s so a signal lands mid-epoch (only the signalled runs need it).
SLOW = "+callbacks.slow._target_=tests.helpers.SlowSteps"
# What an interrupted-then-resumed run must reproduce exactly.
SAME = ["val/acc_best", "test/acc", "test/loss", "epochs", "params"]


def start_and_signal(
    root: Path, run_dir: Path, sig: int, *extra: str, group: bool = False
) -> subprocess.CompletedProcess:
    """Start a run, send ``sig`` once its first mid-epoch ``last.ckpt`` exists, wait.

    ``group``: to every process of the run, as Ctrl+C in a terminal does (DDP ranks
    included); otherwise to the process started (rank 0), as ``kill PID`` does.
    """
    cmd = [
        sys.executable,
        "-m",
        "seqmnist.train",
        f"data.root={root}",
        f"hydra.run.dir={run_dir}",
        *RUN,
        SLOW,
        *extra,
    ]
    # A session of its own either way, so that a run that hangs is ended with all its ranks
    # instead of holding their ports and cores for the tests after it.
    proc = subprocess.Popen(
        cmd,
        cwd=PROJECT_ROOT,
        env=user_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        last = run_dir / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 240
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is not None or not last.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("no mid-epoch checkpoint within 240 s:\n" + proc.communicate()[0])
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, _ = proc.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def resume_in_process(run_dir: Path, invocation: Path, *overrides: str) -> int:
    """``python -m seqmnist.train resume=RUN_DIR overrides`` in this process: exit status."""
    args = [f"resume={run_dir}", *overrides]
    status, _ = run(compose_config(*args, run_dir=invocation), args, multirun=False)
    return status


@pytest.fixture(scope="module")
def uninterrupted(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from seqmnist.train import train

    run_dir = tmp_path_factory.mktemp("faults") / "uninterrupted"
    cfg = compose_config(f"data.root={synthetic_root}", *RUN, run_dir=run_dir)
    return train(cfg)


# -- pieces ------------------------------------------------------------------------------
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


def test_only_this_processs_own_device_generator_is_saved() -> None:
    assert set(rng_states(torch.device("cpu"))) == {"torch", "python"}
    # An older checkpoint's per-GPU list on a CPU-only resume: the CPU state is restored.
    cb = FaultTolerance()
    state = {"rng": {**rng_states(), "cuda": [torch.zeros(8, dtype=torch.uint8)]}}
    expected = torch.rand(2)  # what comes after the saved state
    cb.load_state_dict(state)
    cb.on_train_batch_start(None)
    assert torch.equal(torch.rand(2), expected)  # rewound: the same draws come again
    cb.load_state_dict({"rng_per_rank": [state["rng"]]})  # gathered format, one rank
    cb.on_train_batch_start(None)


class _OneProcess:
    world_size = 1


@pytest.mark.parametrize(
    ("sig", "code", "name"),
    [
        (signal.SIGTERM, 143, "SIGTERM"),
        (signal.SIGINT, 130, "Ctrl+C"),
        (signal.SIGUSR1, 138, "SIGUSR1 (the job's time limit)"),
        (signal.SIGUSR2, 140, "SIGUSR2 (the job's time limit)"),
    ],
)
def test_a_signal_is_recorded_during_the_fit_and_raises_during_setup(
    sig: int, code: int, name: str
) -> None:
    with Lifecycle() as life:
        life.enter(Phase.FIT)
        os.kill(os.getpid(), sig)
        assert life.signal == sig and life.agreed(_OneProcess())
        assert (life.exit_code, life.name) == (code, name)
    assert Lifecycle.active is None
    with Lifecycle(), pytest.raises(SIGTERMException):
        os.kill(os.getpid(), signal.SIGTERM)  # in setup: nothing to save, the run ends


@pytest.mark.parametrize("phase", [Phase.TEST, Phase.REPORT, Phase.DONE])
def test_a_signal_once_the_fit_is_over_is_noted_not_obeyed(phase: Phase) -> None:
    with Lifecycle() as life:
        life.enter(phase)
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGTERM)
        assert life.signal is None and not life.agreed(_OneProcess())
        assert life.late == (None if phase is Phase.DONE else signal.SIGUSR2)


def test_a_submitit_job_ignores_the_time_limit_signals_once_its_run_has_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """submitit's own handler would requeue the finished job and exit -1, and Python resets
    its handlers to the default action (which kills) as the interpreter ends."""
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    try:
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
        with Lifecycle():
            pass
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
        monkeypatch.delenv("SUBMITIT_EXECUTOR")
        for sig, handler in before.items():
            signal.signal(sig, handler)
        with Lifecycle():
            pass
        assert {s: signal.getsignal(s) for s in before} == before  # elsewhere: put back
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


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


@pytest.mark.parametrize(
    "extra",
    [["augment=affine"], ["callbacks=ema"]],
    ids=["augment-mid-epoch", "ema-mid-epoch"],
)
def test_a_stop_mid_epoch_resumes_to_the_uninterrupted_run(
    synthetic_root: Path, tmp_path: Path, extra: list[str]
) -> None:
    """With training-batch augmentation (drawn before a batch starts) and with an EMA of the
    weights (updated at a batch's end), a run stopped by a signal mid-epoch and resumed ends
    as the uninterrupted run does."""
    args = [f"data.root={synthetic_root}", *RUN, *extra]
    full = tmp_path / "full"
    assert run(compose_config(*args, run_dir=full), args, multirun=False)[0] == 0

    stopped = tmp_path / "stopped"
    at = ["+callbacks.signal_at._target_=tests.helpers.SignalAt", "+callbacks.signal_at.step=20"]
    status, _ = run(compose_config(*args, *at, run_dir=stopped), [*args, *at], multirun=False)
    assert status == 143 and metrics_of(stopped)["status"] == "interrupted"
    assert torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 21

    more = [f"resume={stopped}", "+callbacks.signal_at=null"]
    assert run(compose_config(*more, run_dir=tmp_path / "inv"), more, multirun=False)[0] == 0
    resumed, uninterrupted = metrics_of(stopped), metrics_of(full)
    assert {k: resumed[k] for k in SAME} == {k: uninterrupted[k] for k in SAME}
    ends = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (stopped, full)]
    # With the EMA, state_dict holds the averaged weights and current_model_state the trained
    # ones (for resume=), averaging_state the average's count of updates; without it, neither.
    ema = "callbacks=ema" in extra
    for end in ends:
        assert ("current_model_state" in end, "averaging_state" in end) == (ema, ema)
    for key in ("state_dict", "current_model_state") if ema else ("state_dict",):
        names = sorted(n for n in ends[1][key] if n.startswith("net."))
        assert names and names == sorted(n for n in ends[0][key] if n.startswith("net."))
        for name in names:
            assert torch.equal(ends[0][key][name], ends[1][key][name]), (key, name)
    if ema:
        averaged, trained = ends[1]["state_dict"], ends[1]["current_model_state"]
        assert any(not torch.equal(averaged[n], trained[n]) for n in names)  # an average
        counts = [end["averaging_state"] for end in ends]
        assert counts[0].keys() == counts[1].keys() and counts[1]
        for name, count in counts[1].items():
            assert torch.equal(counts[0][name], count), name
        steps = [
            {k: v for k, v in end["callbacks"].items() if k.startswith("EMAWeights")}
            for end in ends
        ]
        assert steps[0] == steps[1] and steps[1], steps


# -- real processes: a kill, a signal ----------------------------------------------------
@pytest.mark.e2e
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(
    synthetic_root: Path, tmp_path: Path, uninterrupted: dict
) -> None:
    run_dir = tmp_path / "killed"
    proc = start_and_signal(synthetic_root, run_dir, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert metrics_of(run_dir)["status"] == "running"  # killed: nothing got to write

    assert resume_in_process(run_dir, tmp_path / "resume_invocation") == 0
    resumed = metrics_of(run_dir)
    assert resumed["status"] == "completed"
    assert resumed["resumed_from"] == str((run_dir / "checkpoints" / "last.ckpt").resolve())
    assert {k: resumed[k] for k in SAME} == {k: uninterrupted[k] for k in SAME}
    # Logged into the same TensorBoard run as before the kill.
    assert len(list((run_dir / "tensorboard").iterdir())) == 1


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("sig", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl+C")]
)
def test_signal_stops_cleanly_with_a_checkpoint_and_resumes(
    synthetic_root: Path, tmp_path: Path, uninterrupted: dict, sig: int, code: int, name: str
) -> None:
    run_dir = tmp_path / "stopped"
    proc = start_and_signal(synthetic_root, run_dir, sig)
    assert proc.returncode == code, proc.stdout
    assert f"stopped by {name}" in proc.stdout
    assert f"resume={run_dir}" in proc.stdout
    assert "Traceback" not in proc.stdout
    record = metrics_of(run_dir)
    assert record["status"] == "interrupted" and f"resume={run_dir}" in record["error"]

    assert resume_in_process(run_dir, tmp_path / "resume_invocation") == 0
    resumed = metrics_of(run_dir)
    assert {k: resumed[k] for k in SAME} == {k: uninterrupted[k] for k in SAME}
