"""The run directory: every path under a run, and its metrics.json, in one place."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from seqmnist.core.rundir import LAST_CKPT, RunDir


def test_last_ckpt_is_the_name_lightning_writes() -> None:
    assert LAST_CKPT == ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION


def test_paths_of_a_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.last_ckpt == tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert run.metrics_file == tmp_path / "run" / "metrics.json"
    assert run.resolved_config == tmp_path / "run" / "resolved_config.yaml"
    assert RunDir.given(tmp_path / "run" / "checkpoints") == run
    assert RunDir.given(tmp_path / "run") == run
    assert run.checkpoint_files() == []
    run.checkpoints.mkdir(parents=True)
    (run.checkpoints / "b.ckpt").write_bytes(b"")
    (run.checkpoints / "a.ckpt").write_bytes(b"")
    (run.checkpoints / "notes.txt").write_text("")
    assert [p.name for p in run.checkpoint_files()] == ["a.ckpt", "b.ckpt"]
    assert RunDir.of_checkpoint(run.checkpoints / "a.ckpt") == RunDir(run.path.resolve())
    assert RunDir.of_checkpoint(tmp_path / "loose.ckpt") is None


def test_the_trained_run_is_laid_out_as_rundir_says(trained_run: Path) -> None:
    run = RunDir(trained_run)
    assert run.last_ckpt.is_file() and run.resolved_config.is_file()
    assert run.read_metrics()["status"] == "completed"
    assert run.load_config().hidden == 16 and run.experiment() is None


def test_metrics_are_written_whole_and_failures_recorded(tmp_path: Path) -> None:
    RunDir(tmp_path / "r").write_metrics({"status": "running", "lr": 0.1})
    assert RunDir(tmp_path / "r").read_metrics() == {"status": "running", "lr": 0.1}
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["metrics.json"]  # no temp file
    RunDir(tmp_path / "r").record_status(ValueError("boom"))
    assert RunDir(tmp_path / "r").read_metrics() == {
        "status": "failed",
        "lr": 0.1,
        "error": "ValueError: boom",
    }
    assert RunDir(tmp_path / "nothing").read_metrics() is None
    (tmp_path / "r" / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an object"):
        RunDir(tmp_path / "r").read_metrics()
    RunDir(tmp_path / "r").record_status("killed")  # over a damaged file: the status alone
    assert RunDir(tmp_path / "r").read_metrics() == {"status": "failed", "error": "killed"}


def test_a_status_write_keeps_what_the_run_recorded(tmp_path: Path) -> None:
    """A signal-stopped run keeps its trackers' run ids (resume= continues
    them) and its settings; before, the status write replaced the whole file."""
    run = RunDir(tmp_path / "r")
    recorded = {"status": "running", "cell": "gru", "tracking": {"mlflow": "abc", "wandb": "x1"}}
    run.write_metrics(recorded)
    run.record_status("stopped by SIGTERM", status="interrupted")
    assert run.read_metrics() == {
        **recorded,
        "status": "interrupted",
        "error": "stopped by SIGTERM",
    }


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_run_files_get_the_umasks_mode(tmp_path: Path, mask: int) -> None:
    """Metrics.json and checkpoints were written 0600 (mkstemp's mode), unreadable
    to a group sharing the project directory; now as an ordinary open() would write them."""
    from seqmnist.training.faults import AtomicCheckpointIO

    before = os.umask(mask)
    try:
        run = RunDir(tmp_path / "r")
        run.write_metrics({"status": "running"})
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, run.last_ckpt)
    finally:
        os.umask(before)
    for path in (run.metrics_file, run.last_ckpt):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["last.ckpt"]  # no temp file
