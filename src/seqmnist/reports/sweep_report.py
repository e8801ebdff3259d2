"""The report of one sweep directory: ``results.md``, ``results.csv``, ``results.png``.

One row per job, sorted by test accuracy (then best validation accuracy), with failed jobs
and their error, and jobs still running or missing their metrics marked as such; when some
settings were run with several seeds, a second table (and ``results_grouped.csv``) with
mean +- std over the seeds of each setting; and a figure of test accuracy against parameter
count, one marker per cell, one panel per swept key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from seqmnist.core.errors import SeqMNISTError
from seqmnist.core.rundir import find_jobs
from seqmnist.reports import aggregate, tables
from seqmnist.reports.collect import read_job
from seqmnist.training.settings import SETTINGS

# What a job's metrics.json says of its result, in the order the tables show it.
RESULTS = ["params", "val/acc_best", "test/acc", "epochs", "train_seconds"]
COLUMNS = [
    "job",
    *SETTINGS[: SETTINGS.index("seed") + 1],
    *RESULTS,
    "state",
    "status",
    "error",
]
# A job's status as a search trial's state: finished (complete or pruned), failed, or not yet.
STATES = {
    "completed": "complete",
    "pruned": "pruned",
    "failed": "failed",
    "unreadable": "failed",
    "interrupted": "failed",
}
# What tells the settings apart; the seed is what a group averages over.
SETTING_KEYS = [k for k in SETTINGS if k != "seed"]
METRICS = ["val/acc_best", "test/acc", "params", "epochs", "train_seconds"]


class ReportError(SeqMNISTError):
    """The directory holds nothing to report."""


def _sort_key(row: dict[str, Any]) -> tuple:
    def num(v: Any) -> float:
        return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else -1.0

    return (-num(row.get("test/acc")), -num(row.get("val/acc_best")))


def swept_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Settings that take more than one value across the jobs."""
    return [k for k in [*SETTING_KEYS, "seed"] if len({str(r.get(k)) for r in rows}) > 1]


def group_over_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds for each setting that completed with several seeds."""
    done = [r for r in rows if r.get("status") == "completed"]
    out = []
    for members in aggregate.group_by(done, SETTING_KEYS).values():
        if len(members) < 2:
            continue
        g = {k: members[0].get(k) for k in SETTING_KEYS}
        g["seeds"] = len(members)
        g.update(aggregate.summary(members, METRICS))
        out.append(g)
    return sorted(out, key=lambda g: -g.get("test/acc mean", -1.0))


def fmt(key: str, value: Any) -> str:
    """How the sweep report shows a value: accuracies in %, parameters with separators."""
    if value is None:
        return ""
    if isinstance(value, (int, float)) and key == "params":
        return f"{int(value):,}"
    if isinstance(value, float):
        if "acc" in key:
            return f"{100 * value:.2f}"
        return f"{value:.1f}" if "seconds" in key else f"{value:g}"
    return tables.cell_text(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    header = [c.replace("/", " ") + (" %" if "/acc" in c else "") for c in columns]
    return tables.markdown_table(rows, columns, header=header, fmt=fmt)


def _pm(mean: float | None, std: float | None, scale: float = 100.0) -> str | None:
    if mean is None:
        return None
    return f"{scale * mean:.2f} +- {scale * (std or 0.0):.2f}"


def plot(rows: list[dict[str, Any]], keys: list[str], path: Path) -> bool:
    """Test accuracy vs parameters (marker per cell) plus one panel per swept key."""
    done = [r for r in rows if isinstance(r.get("test/acc"), (int, float))]
    if not done:
        return False
    from seqmnist.reports.plots import sweep_figure

    sweep_figure(done, keys, str(path))
    return True


def build_report(sweep: Path) -> dict[str, Any]:
    """Write the report files into ``sweep``; return rows, groups, swept keys and counts.

    Raises :class:`ReportError` when ``sweep`` holds no job directory.
    """
    sweep = Path(sweep)
    jobs = find_jobs(sweep)
    if not jobs:
        raise ReportError(
            f"no job directories (with .hydra/) under {sweep}. Fix: pass a sweep directory "
            "(outputs/train/multiruns/<time>) or a run directory."
        )
    rows = sorted((read_job(j) for j in jobs), key=_sort_key)
    for r in rows:
        r["state"] = STATES.get(str(r.get("status")), "running")
    keys = swept_keys(rows)
    groups = group_over_seeds(rows) if "seed" in keys else []
    tables.write_csv(sweep / "results.csv", rows, COLUMNS)

    # The Markdown shows what varies; what is the same for every job goes in one line.
    fixed = [k for k in SETTING_KEYS if k not in keys and rows[0].get(k) is not None]
    shown = ["job", *keys, *RESULTS, "state", "error"]
    md = [
        f"# Sweep results: {sweep}",
        "",
        f"{len(rows)} jobs; swept: {', '.join(keys) or '-'}; fixed: "
        + ", ".join(f"{k}={fmt(k, rows[0].get(k))}" for k in fixed),
        "",
        markdown_table(rows, shown),
    ]
    if groups:
        gcols = [*SETTING_KEYS, "seeds"] + [f"{m} {s}" for m in METRICS for s in ("mean", "std")]
        tables.write_csv(sweep / "results_grouped.csv", groups, gcols)
        for g in groups:
            g["val acc_best %"] = _pm(g.get("val/acc_best mean"), g.get("val/acc_best std"))
            g["test acc %"] = _pm(g.get("test/acc mean"), g.get("test/acc std"))
            g["params"] = g.get("params mean")
            g["seconds"] = _pm(g.get("train_seconds mean"), g.get("train_seconds std"), 1.0)
        gshown = [k for k in keys if k != "seed"] + [
            "seeds",
            "params",
            "val acc_best %",
            "test acc %",
            "seconds",
        ]
        md += ["", "## Mean +- std over seeds", "", markdown_table(groups, gshown)]
    (sweep / "results.md").write_text("\n".join(md) + "\n")
    has_plot = plot(rows, keys, sweep / "results.png")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    return {"rows": rows, "groups": groups, "keys": keys, "counts": counts, "plot": has_plot}


def search_summary(sweep: Path) -> dict[str, Any]:
    """One search at a glance: its pruner, trials by state, the compute its trials took (sum
    of their ``train_seconds``), the sweep's wall time and the best ``val/acc_best``."""
    import yaml

    sweep = Path(sweep)
    path = sweep / "optimization_results.yaml"
    if not path.is_file():
        raise ReportError(f"{path} does not exist: {sweep} is not a finished Optuna search")
    results = yaml.safe_load(path.read_text()) or {}
    rows = [read_job(j) for j in find_jobs(sweep)]
    best = aggregate.numbers([r for r in rows if r.get("status") == "completed"], "val/acc_best")
    pruner = results.get("pruner")
    return {
        "search": str(sweep),
        "pruner": pruner.get("name") if isinstance(pruner, dict) else pruner,
        "trials": len(rows),
        "pruned": sum(r.get("status") == "pruned" for r in rows),
        "failed": sum(r.get("status") == "failed" for r in rows),
        "epochs": sum(int(r.get("epochs") or 0) for r in rows),
        "compute_seconds": sum(aggregate.numbers(rows, "train_seconds")),
        "wall_seconds": results.get("wall_seconds"),
        "best_val_acc": max(best) if best else None,
    }


def compare_searches(sweeps: list[Path]) -> str:
    """A Markdown table of :func:`search_summary` for each search, compute relative to the
    first one."""
    rows = [search_summary(s) for s in sweeps]
    base = rows[0]["compute_seconds"] or 1.0
    for r in rows:
        r["compute"] = f"{r['compute_seconds']:.0f} s ({100 * r['compute_seconds'] / base:.0f}%)"
        r["wall"] = f"{r['wall_seconds']:.0f} s" if r["wall_seconds"] is not None else ""
        r["best val acc %"] = f"{100 * r['best_val_acc']:.2f}" if r["best_val_acc"] else ""
    cols = [
        "pruner",
        "trials",
        "pruned",
        "failed",
        "epochs",
        "compute",
        "wall",
        "best val acc %",
        "search",
    ]
    return tables.markdown_table(rows, cols, right=cols[1:8])
