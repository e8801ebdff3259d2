"""The answering-early table (docs/answering-early.md): for each experiment of one or more
sweeps, how soon its runs answer, evaluated on the full test set with early exit.

Every completed run's best checkpoint is read once over the test set
(:func:`seqmnist.reports.evaluation.compute`); each row gives, as mean +- sample std over
the runs: the accuracy reading all T steps, the accuracy after a quarter, half and three
quarters of them, the early-exit point within the budget (the most accurate threshold whose
mean steps read is at most 5/7 of T unless told otherwise: accuracy, mean and
90th-percentile steps), and the area under the early-exit frontier. Runs of a bidirectional
model (no early answer) or without a checkpoint are skipped with a note.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from seqmnist.core.errors import SeqMNISTError
from seqmnist.inference.checkpoints import load_checkpoint
from seqmnist.reports import aggregate, tables
from seqmnist.reports.evaluation import compute
from seqmnist.reports.experiments import collect

MD_NAME = "results_anytime.md"
CSV_NAME = "results_anytime.csv"
MARKERS = ("<!-- anytime:start -->", "<!-- anytime:end -->")
QUARTERS = {"acc_quarter": "1/4", "acc_half": "1/2", "acc_three_quarters": "3/4"}
FIGURES = [
    "accuracy",
    *QUARTERS,
    "exit_accuracy",
    "exit_mean_steps",
    "exit_p90_steps",
    "area",
]


def run_figures(run: str | Path, root: str | Path, budget: float | None) -> dict[str, Any] | None:
    """One run's figures (module docstring), or None for a bidirectional model."""
    result = compute(load_checkpoint(run), root, batch_size=1000, num_errors=0, budget=budget)
    exits, any_ = result["early_exit"], result["anytime"]
    if exits is None:
        return None
    t, acc = any_["steps"], any_["accuracy"]
    within = exits["within_budget"] or {}
    return {
        "steps": t,
        "accuracy": result["metrics"]["accuracy"],
        # After round(T/4), round(T/2), round(3T/4) steps: 7, 14, 21 of 28 rows.
        **{key: acc[max(1, round(t * (i + 1) / 4)) - 1] for i, key in enumerate(QUARTERS)},
        "exit_accuracy": within.get("accuracy"),
        "exit_mean_steps": within.get("mean_steps"),
        "exit_p90_steps": within.get("p90_steps"),
        "exit_threshold": within.get("threshold"),
        "budget": exits["budget"],
        "area": exits["area"],
    }


def summarise(
    sweeps: Iterable[Path], root: str | Path, budget: float | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """One summary per experiment of ``sweeps`` (its runs' figures, their mean and std),
    and a note for each run skipped."""
    found = collect(sweeps)
    out, skipped = [], []
    for name, rows in sorted(found["experiments"].items()):
        runs = []
        for row in rows:  # the run's best checkpoint (inference.checkpoints picks it)
            try:
                figures = run_figures(row["path"], root, budget)
            except SeqMNISTError as e:  # no checkpoint, a damaged one: the others still count
                skipped.append(f"{row['path']} ({name}): {e}")
                continue
            if figures is None:
                skipped.append(f"{row['path']} ({name}): bidirectional, no early answer")
                continue
            runs.append({"seed": row.get("seed"), **figures})
        if not runs:
            continue
        stats = {k: aggregate.mean_std([r[k] for r in runs if r[k] is not None]) for k in FIGURES}
        out.append({"experiment": name, "runs": runs, "stats": stats})
    return out, skipped


def _pct(stat: tuple[float | None, float | None]) -> str:
    mean, std = stat
    if mean is None:
        return ""
    return f"{100 * mean:.2f}" + (f" +- {100 * std:.2f}" if std is not None else "")


def _steps(runs: list[dict[str, Any]]) -> str:
    return ", ".join(str(t) for t in sorted({r["steps"] for r in runs}))


def table_row(s: dict[str, Any]) -> dict[str, str]:
    st, runs = s["stats"], s["runs"]
    mean_steps, _ = st["exit_mean_steps"]
    p90, _ = st["exit_p90_steps"]
    area, area_std = st["area"]
    thresholds = sorted({r["exit_threshold"] for r in runs if r["exit_threshold"]})
    return {
        "experiment": f"`{s['experiment']}`",
        "seeds": ", ".join(str(r["seed"]) for r in runs),
        "steps": _steps(runs),
        "all steps %": _pct(st["accuracy"]),
        **{f"after {share} %": _pct(st[key]) for key, share in QUARTERS.items()},
        "early exit %": _pct(st["exit_accuracy"]),
        "mean (p90) steps read": (
            f"{mean_steps:.1f} ({p90:.1f})" if mean_steps is not None else "none within"
        ),
        "threshold": ", ".join(f"{t:g}" for t in thresholds),
        "frontier area": f"{area:.4f}" + (f" +- {area_std:.4f}" if area_std is not None else ""),
    }


def markdown(
    summaries: list[dict[str, Any]], command: str, budget: float | None, skipped: list[str]
) -> str:
    """The table and its notes: the block between the page's anytime markers."""
    rows = [table_row(s) for s in summaries]
    columns = list(rows[0]) if rows else []
    table = tables.markdown_table(rows, columns, right=tuple(c for c in columns[1:]))
    within = "5/7 of the steps (20 of 28 rows)" if budget is None else f"{budget:g} steps"
    notes = [
        "",
        f"Built by `{command}`: each run's best-`val/acc` checkpoint read over the full "
        "10,000-image test set; mean +- sample std over the runs, in %; do not edit by hand.",
        f"After 1/4, 1/2, 3/4: the answer after that share of the steps (7, 14, 21 of 28 rows). "
        f"Early exit: the most accurate threshold of `evaluate`'s grid whose mean steps read "
        f"is at most {within}, read off each run's test frontier. Frontier area: accuracy "
        "against the share of steps read, from chance at 0 to 1 "
        "(`seqmnist.inference.early_exit.frontier_area`).",
    ]
    if skipped:
        notes.append(f"Skipped {len(skipped)} runs: " + "; ".join(f"`{s}`" for s in skipped))
    return table + "\n" + "\n".join(notes) + "\n"


CSV_COLUMNS = ["experiment", "seed", "steps", *FIGURES, "exit_threshold", "budget"]


def csv_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run."""
    return [{"experiment": s["experiment"], **r} for s in summaries for r in s["runs"]]
