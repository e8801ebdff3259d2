"""seqmnist.report (and seqmnist.reports.sweep_report) on hand-made sweep dirs: sorting,
failures, partial sweeps, seed groups."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from seqmnist import report
from seqmnist.reports.sweep_report import ReportError, build_report
from tests.helpers import PROJECT_ROOT


def make_job(sweep: Path, name: str, metrics: dict | None, **cfg) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    config = {
        "seed": cfg.get("seed", 0),
        "layers": cfg.get("layers", 1),
        "hidden": cfg.get("hidden", 128),
        "dropout": 0.0,
        "bidirectional": False,
        "model": {
            "net": {
                "cell": cfg.get("cell", "lstm"),
                "num_layers": cfg.get("layers", 1),
                "hidden_size": cfg.get("hidden", 128),
                "dropout": 0.0,
                "bidirectional": False,
            }
        },
        "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.001},
        "data": {"batch_size": 128, "dataset": "mnist", "sequence": "row"},
    }
    (job / ".hydra" / "config.yaml").write_text(json.dumps(config))  # JSON is valid YAML
    if metrics is not None:
        base = {k: config[k] for k in ("seed", "layers", "hidden")}
        base |= {"cell": cfg.get("cell", "lstm"), "optimizer": "Adam", "lr": 0.001}
        (job / "metrics.json").write_text(json.dumps({**base, **metrics}))


def done(acc: float, params: int = 1000) -> dict:
    return {
        "status": "completed",
        "test/acc": acc,
        "val/acc_best": acc + 0.001,
        "params": params,
        "epochs": 2,
        "train_seconds": 3.0,
    }


def test_report_sorts_marks_failures_and_missing(tmp_path: Path, capsys) -> None:
    make_job(tmp_path, "0", done(0.95), cell="lstm", seed=0)
    make_job(tmp_path, "1", done(0.97), cell="gru", seed=0)
    make_job(tmp_path, "2", {"status": "failed", "error": "ConfigError: boom"}, cell="rnn")
    make_job(tmp_path, "3", None, cell="gru", seed=1)  # still running / killed
    code = report.main([str(tmp_path)])
    assert code == 1  # a job failed
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["job"] for r in rows[:2]] == ["1", "0"]  # best test accuracy first
    by_job = {r["job"]: r for r in rows}
    assert by_job["2"]["status"] == "failed" and "boom" in by_job["2"]["error"]
    assert by_job["3"]["status"] == "missing" and by_job["3"]["cell"] == "gru"
    md = (tmp_path / "results.md").read_text()
    assert "boom" in md and "| 1 | gru |" in md
    assert (tmp_path / "results.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "4 jobs: 2 completed, 1 failed, 1 missing" in out


def test_seeds_are_grouped_into_mean_and_std(tmp_path: Path) -> None:
    for i, acc in enumerate([0.96, 0.98]):
        make_job(tmp_path, str(i), done(acc), cell="lstm", seed=i)
    for i, acc in enumerate([0.90, 0.92]):
        make_job(tmp_path, str(i + 2), done(acc), cell="gru", seed=i)
    result = build_report(tmp_path)
    assert result["keys"] == ["cell", "seed"]
    lstm, gru = result["groups"]
    assert lstm["cell"] == "lstm" and lstm["seeds"] == 2
    assert abs(lstm["test/acc mean"] - 0.97) < 1e-9
    assert abs(lstm["test/acc std"] - 0.0141421) < 1e-6
    assert gru["cell"] == "gru"
    assert "Mean +- std over seeds" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results_grouped.csv").is_file()


def test_unreadable_metrics_and_empty_dir(tmp_path: Path) -> None:
    make_job(tmp_path, "0", done(0.9))
    (tmp_path / "0" / "metrics.json").write_text("{not json")
    rows = build_report(tmp_path)["rows"]
    assert rows[0]["status"] == "unreadable"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match="no job directories"):
        build_report(empty)
    # The command turns it into one line and exit status 2.
    assert report.main([str(empty)]) == 2


def test_searches_are_compared_by_compute_pruning_and_best(tmp_path: Path) -> None:
    import yaml

    from seqmnist.reports.sweep_report import compare_searches, search_summary

    for name, pruner, wall in (("none", "none", 100.0), ("median", "median", 40.0)):
        sweep = tmp_path / name
        make_job(sweep, "0", {**done(0.9), "train_seconds": 30.0, "epochs": 6})
        if name == "none":
            make_job(sweep, "1", {**done(0.95), "train_seconds": 30.0, "epochs": 6})
        else:
            make_job(
                sweep,
                "1",
                {
                    "status": "pruned",
                    "val/acc_best": 0.5,
                    "train_seconds": 5.0,
                    "epochs": 1,
                    "pruned_at_epoch": 0,
                },
            )
        (sweep / "optimization_results.yaml").write_text(
            yaml.safe_dump({"pruner": pruner, "wall_seconds": wall})
        )
    s = search_summary(tmp_path / "median")
    assert (s["pruner"], s["trials"], s["pruned"], s["epochs"]) == ("median", 2, 1, 7)
    # Pruned trials are left out of the best (their score is of an unfinished run).
    assert s["compute_seconds"] == 35.0 and s["best_val_acc"] == pytest.approx(0.901)
    table = compare_searches([tmp_path / "none", tmp_path / "median"])
    assert "| none | 2 | 0 | 0 | 12 | 60 s (100%) | 100 s | 95.10 |" in table
    assert "| median | 2 | 1 | 0 | 7 | 35 s (58%) | 40 s | 90.10 |" in table
    with pytest.raises(ReportError, match="not a finished Optuna search"):
        search_summary(tmp_path / "missing")


@pytest.mark.e2e
def test_the_report_commands_start_without_torch() -> None:
    """report and results read JSON and YAML: they import neither torch nor Lightning (a
    fresh interpreter, since this one has both)."""
    code = (
        "import sys, seqmnist.report, seqmnist.results\n"
        "print(sorted(m for m in ('torch', 'lightning', 'optuna') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
