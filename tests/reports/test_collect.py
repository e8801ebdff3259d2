"""A report's rows, read from run directories."""

from __future__ import annotations

from pathlib import Path

from seqmnist.core.rundir import RunDir, find_jobs
from seqmnist.reports.collect import read_job


def test_a_finished_run_reads_back(trained_run: Path) -> None:
    row = read_job(trained_run)
    assert row["status"] == "completed" and row["job"] == "run"
    assert row["hidden"] == 16 and row["cell"] == "lstm" and row["experiment"] is None
    assert row["partial_test"] is False
    assert row["test/acc"] == RunDir(trained_run).read_metrics()["test/acc"]
    assert RunDir(trained_run).load_config().hidden == 16


def test_a_job_without_metrics_takes_its_settings_from_its_config(
    trained_run: Path, tmp_path: Path
) -> None:
    job = tmp_path / "sweep" / "7"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text((trained_run / "resolved_config.yaml").read_text())
    row = read_job(job)
    assert row["status"] == "missing" and row["hidden"] == 16 and row["cell"] == "lstm"
    assert find_jobs(tmp_path / "sweep") == [RunDir(job)]
    (job / "metrics.json").write_text("{broken")
    assert read_job(job)["status"] == "unreadable"
