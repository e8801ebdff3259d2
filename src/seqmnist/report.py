"""Summarise a sweep: ``python -m seqmnist.report SWEEP_DIR`` (``make report DIR=...``).

Reads every job directory under ``SWEEP_DIR`` (a directory holding ``.hydra/``), its config
and ``metrics.json``, and writes into ``SWEEP_DIR``:

* ``results.csv`` and ``results.md``: one row per job, sorted by test accuracy (then best
  validation accuracy), with failed jobs and their error, and jobs still running or
  missing their metrics marked as such;
* when some settings were run with several seeds, a second table in ``results.md``
  (and ``results_grouped.csv``) with mean +- std over the seeds of each setting;
* ``results.png``: test accuracy against parameter count, one marker per cell, and one
  panel per swept key.

It prints the top rows and exits with status 1 when any job failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

COLUMNS = [
    "job", "cell", "layers", "hidden", "dropout", "bidirectional", "optimizer", "lr", "scheduler",
    "batch_size", "dataset", "sequence", "seed", "params", "val/acc_best", "test/acc", "epochs",
    "train_seconds", "status", "error",
]  # fmt: skip
SETTING_KEYS = ["cell", "layers", "hidden", "dropout", "bidirectional", "optimizer", "lr",
                "scheduler", "batch_size", "dataset", "sequence"]  # fmt: skip
METRICS = ["val/acc_best", "test/acc", "params", "epochs", "train_seconds"]


def _settings_from_config(job: Path) -> dict[str, Any]:
    """Settings of a job without metrics (failed early, running): from its Hydra config."""
    path = job / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    cfg = yaml.safe_load(path.read_text()) or {}
    net = (cfg.get("model") or {}).get("net") or {}
    opt = cfg.get("optimizer") or {}
    data = cfg.get("data") or {}
    return {
        "cell": net.get("cell"),
        "layers": cfg.get("layers"),
        "hidden": cfg.get("hidden"),
        "dropout": cfg.get("dropout"),
        "bidirectional": cfg.get("bidirectional"),
        "optimizer": str(opt.get("_target_", "")).rsplit(".", 1)[-1] or None,
        "lr": opt.get("lr"),
        "batch_size": data.get("batch_size"),
        "dataset": data.get("dataset"),
        "sequence": data.get("sequence"),
        "seed": cfg.get("seed"),
    }


def read_job(job: Path) -> dict[str, Any]:
    """One row: settings, metrics and status of a job directory."""
    row: dict[str, Any] = {"job": job.name, **_settings_from_config(job)}
    metrics_file = job / "metrics.json"
    if not metrics_file.is_file():
        row["status"] = "missing"
        row["error"] = "no metrics.json (still running, or killed before it started)"
        return row
    try:
        metrics = json.loads(metrics_file.read_text())
    except json.JSONDecodeError as e:
        return {**row, "status": "unreadable", "error": f"metrics.json: {e}"}
    row.update({k: v for k, v in metrics.items() if k in COLUMNS and v is not None})
    row.setdefault("status", "completed")
    return row


def find_jobs(sweep: Path) -> list[Path]:
    """Job directories: those with a ``.hydra`` folder, numbered ones in numeric order."""
    jobs = [p.parent for p in sweep.glob("*/.hydra")] + [p.parent for p in sweep.glob(".hydra")]

    def key(p: Path) -> tuple:
        return (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name)

    return sorted(set(jobs), key=key)


def _sort_key(row: dict[str, Any]) -> tuple:
    def num(v: Any) -> float:
        return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else -1.0

    return (-num(row.get("test/acc")), -num(row.get("val/acc_best")))


def swept_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Settings that take more than one value across the jobs."""
    return [k for k in [*SETTING_KEYS, "seed"] if len({str(r.get(k)) for r in rows}) > 1]


def group_over_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds for each setting that completed with several seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status") == "completed":
            groups.setdefault(tuple(str(r.get(k)) for k in SETTING_KEYS), []).append(r)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        g = {k: members[0].get(k) for k in SETTING_KEYS}
        g["seeds"] = len(members)
        for m in METRICS:
            values = [float(r[m]) for r in members if isinstance(r.get(m), (int, float))]
            if values:
                g[f"{m} mean"] = statistics.fmean(values)
                g[f"{m} std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(g)
    return sorted(out, key=lambda g: -g.get("test/acc mean", -1.0))


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)) and key == "params":
        return f"{int(value):,}"
    if isinstance(value, float):
        if "acc" in key:
            return f"{100 * value:.2f}"
        return f"{value:.1f}" if "seconds" in key else f"{value:g}"
    return str(value).replace("|", "/").replace("\n", " ")[:200]


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    header = [c.replace("/", " ") + (" %" if "/acc" in c else "") for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(c, r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, Any]], keys: list[str], path: Path) -> bool:
    """Test accuracy vs parameters (marker per cell) plus one panel per swept key."""
    done = [r for r in rows if isinstance(r.get("test/acc"), (int, float))]
    if not done:
        return False
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["params", *[k for k in keys if k not in ("params", "cell", "seed")]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    markers = {"rnn": "o", "lstm": "s", "gru": "^"}
    for ax, key in zip(axes[0], panels, strict=True):
        values = sorted({str(r.get(key)) for r in done}, key=_natural)
        for cell in sorted({str(r.get("cell")) for r in done}):
            pts = [r for r in done if str(r.get("cell")) == cell]
            if key == "params":
                xs = [r.get("params") or 0 for r in pts]
            else:
                xs = [values.index(str(r.get(key))) for r in pts]
            ys = [100 * r["test/acc"] for r in pts]
            ax.scatter(xs, ys, marker=markers.get(cell, "x"), label=cell, alpha=0.8)
        if key == "params":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(key)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(title="cell")
    fig.suptitle(f"{len(done)} completed jobs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _natural(s: str) -> tuple:
    try:
        return (0, float(s), "")
    except ValueError:
        return (1, 0.0, s)


def _pm(mean: float | None, std: float | None, scale: float = 100.0) -> str | None:
    if mean is None:
        return None
    return f"{scale * mean:.2f} +- {scale * (std or 0.0):.2f}"


def build_report(sweep: Path) -> dict[str, Any]:
    """Write the report files into ``sweep``; return rows, groups and counts."""
    jobs = find_jobs(sweep)
    if not jobs:
        raise SystemExit(f"error: no job directories (with .hydra/) under {sweep}")
    rows = sorted((read_job(j) for j in jobs), key=_sort_key)
    keys = swept_keys(rows)
    groups = group_over_seeds(rows) if "seed" in keys else []
    write_csv(sweep / "results.csv", rows, COLUMNS)

    # The Markdown shows what varies; what is the same for every job goes in one line.
    fixed = [k for k in SETTING_KEYS if k not in keys and rows[0].get(k) is not None]
    shown = ["job", *keys, "params", "val/acc_best", "test/acc", "epochs", "train_seconds",
             "status", "error"]  # fmt: skip
    md = [f"# Sweep results: {sweep}", "",
          f"{len(rows)} jobs; swept: {', '.join(keys) or '-'}; fixed: "
          + ", ".join(f"{k}={_fmt(k, rows[0].get(k))}" for k in fixed), "",
          markdown_table(rows, shown)]  # fmt: skip
    if groups:
        gcols = [*SETTING_KEYS, "seeds"] + [f"{m} {s}" for m in METRICS for s in ("mean", "std")]
        write_csv(sweep / "results_grouped.csv", groups, gcols)
        for g in groups:
            g["val acc_best %"] = _pm(g.get("val/acc_best mean"), g.get("val/acc_best std"))
            g["test acc %"] = _pm(g.get("test/acc mean"), g.get("test/acc std"))
            g["params"] = g.get("params mean")
            g["seconds"] = _pm(g.get("train_seconds mean"), g.get("train_seconds std"), 1.0)
        gshown = [k for k in keys if k != "seed"] + ["seeds", "params", "val acc_best %",
                                                      "test acc %", "seconds"]  # fmt: skip
        md += ["", "## Mean +- std over seeds", "", markdown_table(groups, gshown)]
    (sweep / "results.md").write_text("\n".join(md) + "\n")
    has_plot = plot(rows, keys, sweep / "results.png")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    return {"rows": rows, "groups": groups, "keys": keys, "counts": counts, "plot": has_plot}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun dir (outputs/train/multiruns/...)")
    parser.add_argument("--top", type=int, default=10, help="rows printed (default %(default)s)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    result = build_report(args.sweep_dir)
    cols = ["job", "cell", "layers", "hidden", "optimizer", "lr", "seed", "val/acc_best",
            "test/acc", "status"]  # fmt: skip
    print(markdown_table(result["rows"][: args.top], cols))
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result["counts"].items()))
    print(f"\n{len(result['rows'])} jobs: {counts}")
    written = ["results.md", "results.csv"] + (["results.png"] if result["plot"] else [])
    print(f"wrote {', '.join(str(args.sweep_dir / w) for w in written)}")
    return 1 if result["counts"].get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
