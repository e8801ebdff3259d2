"""DDP proven on CPU: two gloo processes killed, signalled, poisoned with a NaN, evaluated on
uneven splits, swept, and started the way SLURM starts them (submitit's local executor).

Each test starts real processes (the ranks are the point), on the tiny synthetic data.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seqmnist.core.machine import usable_cpus
from tests.helpers import (
    FAST,
    ONE_THREAD,
    PROJECT_ROOT,
    best_ckpt,
    metrics_of,
    run_module,
    run_sweep,
    user_env,
)
from tests.training.test_faults import RUN, SAME, start_and_signal

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def train_ddp(root: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_module(
        "seqmnist.train", f"data.root={root}", f"hydra.run.dir={run_dir}", *RUN, *DDP, *extra
    )


def resume(run_dir: Path) -> subprocess.CompletedProcess:
    return run_module("seqmnist.train", f"resume={run_dir}")


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """Weights, optimizer-free: the module's state_dict of the run's final last.ckpt,
    including the epoch's metric sums of every rank."""
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp") / "uninterrupted"
    proc = train_ddp(synthetic_root, run_dir)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return run_dir


def assert_same_run(run_dir: Path, reference: Path) -> None:
    got, want = metrics_of(run_dir), metrics_of(reference)
    assert got["status"] == "completed"
    assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}
    a, b = final_state(run_dir), final_state(reference)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_killed_mid_epoch_then_resumed_equals_an_uninterrupted_ddp_run(
    synthetic_root: Path, tmp_path: Path, uninterrupted: Path
) -> None:
    run_dir = tmp_path / "killed"
    # SIGKILL to both ranks: no clean stop, only the every-3-steps last.ckpt to go on.
    proc = start_and_signal(synthetic_root, run_dir, signal.SIGKILL, *DDP, group=True)
    assert proc.returncode == -signal.SIGKILL
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step < 8  # mid-way through the first epoch (8 steps per rank)

    proc = resume(run_dir)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # Same weights, same metric sums, same test figures: each rank read exactly the rest of
    # its share of the epoch, with its own generators.
    assert_same_run(run_dir, uninterrupted)


def test_sigterm_to_rank_0_stops_both_ranks_with_a_checkpoint(
    synthetic_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "stopped"
    # To rank 0 alone, as `kill PID` does: rank 1 learns of it through the all-reduce.
    proc = start_and_signal(synthetic_root, run_dir, signal.SIGTERM, *DDP)
    assert proc.returncode == 143, proc.stdout[-3000:]
    assert "stopped by SIGTERM" in proc.stdout and f"resume={run_dir}" in proc.stdout
    assert "Traceback" not in proc.stdout
    assert metrics_of(run_dir)["status"] == "interrupted"
    # Saved after the signal, mid-epoch, by both ranks together (rank 1's generators too).
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] > 3  # newer than the periodic one that the signal followed
    (state,) = [v for k, v in ckpt["callbacks"].items() if "FaultTolerance" in k]
    assert len(state["rng_per_rank"]) == 2


def test_ctrl_c_stops_both_ranks_with_a_checkpoint(synthetic_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "ctrl_c"
    # As a terminal does: SIGINT to every process of the run, both ranks.
    proc = start_and_signal(synthetic_root, run_dir, signal.SIGINT, *DDP, group=True)
    assert proc.returncode == 130, proc.stdout[-3000:]
    assert "stopped by Ctrl+C" in proc.stdout and "Traceback" not in proc.stdout
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert metrics_of(run_dir)["status"] == "interrupted"


def fails_on_both_ranks(root: Path, run_dir: Path, *extra: str, says: str) -> None:
    """A short 2-rank run that must stop on every rank with one message, exit 2, and the run
    marked failed."""
    proc = run_module(
        "seqmnist.train",
        f"data.root={root}",
        f"hydra.run.dir={run_dir}",
        *FAST,
        *DDP,
        *extra,
        timeout=180,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert says in out and "Traceback" not in out
    assert metrics_of(run_dir)["status"] == "failed"


def test_nan_on_one_rank_stops_both_with_the_message(synthetic_root: Path, tmp_path: Path) -> None:
    fails_on_both_ranks(
        synthetic_root,
        tmp_path / "nan",
        "+callbacks.nan._target_=tests.helpers.NaNOnRank",
        says="the training loss became non-finite on rank 1 at step 2",
    )


def test_a_search_storage_error_on_rank_0_stops_both_ranks(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Rank 0 reads the search's storage before it broadcasts its pruning
    verdict; its error left rank 1 in the broadcast until the process group timed out (30
    minutes). Now the error is broadcast and both ranks stop with the message."""
    fails_on_both_ranks(
        synthetic_root,
        tmp_path / "trial",
        f"optuna_trial.storage=sqlite:///{tmp_path / 'no' / 'such' / 'study.db'}",
        "optuna_trial.study_name=gone",
        "optuna_trial.trial_id=0",
        "optuna_trial.number=0",
        says="trial 0 of study 'gone' could not report epoch 0 to the search's storage",
    )


def test_val_and_test_accuracy_under_2_and_3_ranks_equal_one_process(
    synthetic_root: Path, trained_run: Path
) -> None:
    from tests.ddp_evaluate import evaluate

    ckpt = best_ckpt(trained_run)
    results = {1: evaluate(str(ckpt), str(synthetic_root), devices=1)}  # here, one process
    for devices in (2, 3):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.ddp_evaluate",
                str(ckpt),
                str(synthetic_root),
                str(devices),
            ],
            cwd=PROJECT_ROOT,
            env=user_env(ONE_THREAD),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        results[devices] = json.loads(line.removeprefix("RESULT "))
    one = results[1]
    for devices in (2, 3):
        got = results[devices]
        # 100 val and 200 test images do not split evenly over 3 ranks: every image once.
        assert got["val/acc"] == one["val/acc"] and got["test/acc"] == one["test/acc"]
        # The accuracy after 7, 14 and 21 rows too (anytime training's curve).
        for k in (7, 14, 21):
            assert got[f"val/acc_step{k}"] == one[f"val/acc_step{k}"]
            assert got[f"test/acc_step{k}"] == one[f"test/acc_step{k}"]
        assert got["val/loss"] == pytest.approx(one["val/loss"], rel=1e-6)
        assert got["test/loss"] == pytest.approx(one["test/loss"], rel=1e-6)


def test_a_ddp_job_in_a_multirun_runs_each_job_once(synthetic_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_sweep(*DDP, "seed=1,2", root=synthetic_root, sweep_dir=sweep)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    # Lightning starts rank 1 by running the command line again; it must not sweep again.
    assert len(re.findall(r"Launching 2 jobs", out)) == 1
    assert out.count("Starting with 2 processes") == 2
    assert out.count("test_acc") == 2  # one summary line per job, from rank 0 alone
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, seed in (("0", 1), ("1", 2)):
        metrics = metrics_of(sweep / job)
        assert metrics["status"] == "completed" and metrics["seed"] == seed
        assert len(list((sweep / job / "checkpoints").glob("*.ckpt"))) == 2


def test_slurm_shaped_launch_on_submitit_local_tasks(synthetic_root: Path, tmp_path: Path) -> None:
    """One task per device, started by submitit as srun starts them on SLURM."""
    sweep = tmp_path / "tasks"
    proc = run_sweep("hydra/launcher=local_ranks", *DDP, root=synthetic_root, sweep_dir=sweep)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = sorted((sweep / ".submitit").glob("*/*_log.err"))
    assert len(logs) == 2  # two tasks of one job
    text = "".join(p.read_text() for p in logs)
    assert "MEMBER: 1/2" in text and "MEMBER: 2/2" in text
    assert "Starting with 2 processes" in text
    assert metrics_of(sweep / "0")["status"] == "completed"
    # The two tasks share this machine's cores rather than each taking all of them.
    said = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    assert_the_ranks_share_the_cores(said, metrics_of(sweep / "0"))


def assert_the_ranks_share_the_cores(log: str, metrics: dict) -> None:
    cores = usable_cpus()
    threads = max(1, cores // 2)
    plural = "" if threads == 1 else "s"
    assert f"2 CPU ranks share this machine's {cores} cores: {threads} torch thread{plural}" in log
    assert f"{cores} CPUs, {threads} torch threads" in metrics["machine"], metrics["machine"]


def test_cpu_ranks_started_by_lightning_share_the_cores(uninterrupted: Path) -> None:
    log = (uninterrupted / "train.log").read_text()
    assert_the_ranks_share_the_cores(log, metrics_of(uninterrupted))


def test_torchrun_copies_share_the_run_dir_they_are_given(
    synthetic_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "torchrun"
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "seqmnist.train",
        f"data.root={synthetic_root}",
        *FAST,
        *DDP,
    ]
    refused = subprocess.run(
        args,
        cwd=PROJECT_ROOT,
        env=user_env(ONE_THREAD),
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Fix: give them one, e.g. hydra.run.dir=" in out
    proc = subprocess.run(
        [*args, f"hydra.run.dir={run_dir}"],
        cwd=PROJECT_ROOT,
        env=user_env(ONE_THREAD),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    assert metrics_of(run_dir)["status"] == "completed"
