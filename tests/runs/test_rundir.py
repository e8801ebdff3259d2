"""The one run-directory reader and writer, the one mean +- std and the one table writer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from seqmnist.runs import aggregate, tables
from seqmnist.runs.rundir import (
    find_jobs,
    load_config,
    read_job,
    read_metrics,
    record_status,
    run_settings,
    write_metrics,
)
from tests.helpers import compose_config


def test_run_settings_of_a_composed_config() -> None:
    cfg = compose_config("cell=gru", "layers=3", "hidden=200", "optimizer=rmsprop",
                         "scheduler=onecycle", "trainer.gradient_clip_val=1.0")  # fmt: skip
    s = run_settings(cfg)
    assert (s["cell"], s["layers"], s["hidden"], s["optimizer"]) == ("gru", 3, 200, "RMSprop")
    assert s["scheduler"] == "OneCycleLR" and s["gradient_clip_val"] == 1.0
    assert (s["dataset"], s["sequence"], s["seed"], s["max_epochs"]) == ("mnist", "row", 42, 20)


def test_a_finished_run_reads_back(trained_run: Path) -> None:
    row = read_job(trained_run)
    assert row["status"] == "completed" and row["job"] == "run"
    assert row["hidden"] == 16 and row["cell"] == "lstm" and row["experiment"] is None
    assert row["partial_test"] is False
    assert row["test/acc"] == read_metrics(trained_run)["test/acc"]
    assert load_config(trained_run).hidden == 16


def test_metrics_are_written_whole_and_failures_recorded(tmp_path: Path) -> None:
    write_metrics(tmp_path / "r", {"status": "running", "lr": 0.1})
    assert read_metrics(tmp_path / "r") == {"status": "running", "lr": 0.1}
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["metrics.json"]  # no temp file
    record_status(tmp_path / "r", ValueError("boom"))
    assert read_metrics(tmp_path / "r") == {"status": "failed", "error": "ValueError: boom"}
    assert read_metrics(tmp_path / "nothing") is None
    (tmp_path / "r" / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an object"):
        read_metrics(tmp_path / "r")


def test_a_job_without_metrics_takes_its_settings_from_its_config(
    trained_run: Path, tmp_path: Path
) -> None:
    job = tmp_path / "sweep" / "7"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text((trained_run / "resolved_config.yaml").read_text())
    row = read_job(job)
    assert row["status"] == "missing" and row["hidden"] == 16 and row["cell"] == "lstm"
    assert find_jobs(tmp_path / "sweep") == [job]
    (job / "metrics.json").write_text("{broken")
    assert read_job(job)["status"] == "unreadable"


def test_mean_std_and_groups() -> None:
    assert aggregate.mean_std([]) == (None, None)
    assert aggregate.mean_std([0.5]) == (0.5, None)
    mean, std = aggregate.mean_std([0.96, 0.98])
    assert mean == pytest.approx(0.97) and std == pytest.approx(0.0141421, abs=1e-6)
    rows = [{"cell": "a", "x": 1}, {"cell": "b", "x": 2}, {"cell": "a", "x": 3.0},
            {"cell": "a", "x": None}, {"cell": "a", "x": True}]  # fmt: skip
    groups = aggregate.group_by(rows, ["cell"])
    assert list(groups) == [("a",), ("b",)] and len(groups[("a",)]) == 4
    assert aggregate.numbers(groups[("a",)], "x") == [1.0, 3.0]  # None and bools skipped
    assert aggregate.summary(groups[("a",)], ["x", "y"]) == {
        "x mean": 2.0, "x std": pytest.approx(1.41421356)}  # fmt: skip
    assert aggregate.distinct([None, 2, 1, 2]) == [2, 1]


def test_one_table_writer_for_markdown_and_csv(tmp_path: Path) -> None:
    rows = [{"a": "x|y", "b": 1.5}, {"a": "line\nbreak", "b": None}]
    md = tables.markdown_table(rows, ["a", "b"], header=["A", "B"], right=["b"])
    assert md.splitlines() == ["| A | B |", "| --- | ---: |", "| x/y | 1.5 |", "| line break |  |"]
    tables.write_csv(tmp_path / "d.csv", rows, ["a", "b"])
    assert list(csv.DictReader((tmp_path / "d.csv").open())) == [
        {"a": "x|y", "b": "1.5"}, {"a": "line\nbreak", "b": ""}]  # fmt: skip
    tables.write_csv(tmp_path / "l.csv", [[1, 2], [3, 4]], ["p", "q"])
    assert (tmp_path / "l.csv").read_text().splitlines() == ["p,q", "1,2", "3,4"]
    assert json.loads(json.dumps(tables.cell_text("a" * 300)))[:5] == "aaaaa"
    assert len(tables.cell_text("a" * 300)) == 200
