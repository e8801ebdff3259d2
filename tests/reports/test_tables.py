"""The one mean +- std and the one table writer behind every report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from seqmnist.reports import aggregate, tables


def test_mean_std_and_groups() -> None:
    assert aggregate.mean_std([]) == (None, None)
    assert aggregate.mean_std([0.5]) == (0.5, None)
    mean, std = aggregate.mean_std([0.96, 0.98])
    assert mean == pytest.approx(0.97) and std == pytest.approx(0.0141421, abs=1e-6)
    rows = [
        {"cell": "a", "x": 1},
        {"cell": "b", "x": 2},
        {"cell": "a", "x": 3.0},
        {"cell": "a", "x": None},
        {"cell": "a", "x": True},
    ]
    groups = aggregate.group_by(rows, ["cell"])
    assert list(groups) == [("a",), ("b",)] and len(groups[("a",)]) == 4
    assert aggregate.numbers(groups[("a",)], "x") == [1.0, 3.0]  # None and bools skipped
    assert aggregate.summary(groups[("a",)], ["x", "y"]) == {
        "x mean": 2.0,
        "x std": pytest.approx(1.41421356),
    }
    assert aggregate.distinct([None, 2, 1, 2]) == [2, 1]


def test_one_table_writer_for_markdown_and_csv(tmp_path: Path) -> None:
    rows = [{"a": "x|y", "b": 1.5}, {"a": "line\nbreak", "b": None}]
    md = tables.markdown_table(rows, ["a", "b"], header=["A", "B"], right=["b"])
    assert md.splitlines() == ["| A | B |", "| --- | ---: |", "| x/y | 1.5 |", "| line break |  |"]
    tables.write_csv(tmp_path / "d.csv", rows, ["a", "b"])
    assert list(csv.DictReader((tmp_path / "d.csv").open())) == [
        {"a": "x|y", "b": "1.5"},
        {"a": "line\nbreak", "b": ""},
    ]
    tables.write_csv(tmp_path / "l.csv", [[1, 2], [3, 4]], ["p", "q"])
    assert (tmp_path / "l.csv").read_text().splitlines() == ["p,q", "1,2", "3,4"]
    assert json.loads(json.dumps(tables.cell_text("a" * 300)))[:5] == "aaaaa"
    assert len(tables.cell_text("a" * 300)) == 200
