"""The run directory: every path under a run, and its metrics.json, in one place."""

from __future__ import annotations

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
        "error": "ValueError: boom",
    }
    assert RunDir(tmp_path / "nothing").read_metrics() is None
    (tmp_path / "r" / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an object"):
        RunDir(tmp_path / "r").read_metrics()
