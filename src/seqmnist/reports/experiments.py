"""Experiments: the catalogue of ``conf/experiment/`` and the results table (docs/results.md).

Each ``conf/experiment/<name>.yaml`` says what it is (its first comment line) and, in its
``results:`` block, its row in the table, whether ``make results`` runs it, its target and a
reference figure. Everything that lists experiments (the docs, the Makefile's
``make results``, the tests) reads them from here.

The table groups the completed jobs of one or more sweep directories by the experiment they
ran and gives one row per experiment: what it is, seeds, test accuracy mean +- std,
parameters, epochs, mean training time per run, the machine, the reference and whether the
mean met the target.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from seqmnist.core.errors import SeqMNISTError
from seqmnist.core.project import CONF_DIR
from seqmnist.reports import aggregate, tables
from seqmnist.reports.collect import read_jobs

EXPERIMENT_DIR = CONF_DIR / "experiment"
MD_NAME = "results_experiments.md"
CSV_NAME = "results_experiments.csv"
RESULTS_MARKERS = ("<!-- results:start -->", "<!-- results:end -->")
CATALOGUE_MARKERS = ("<!-- experiments:start -->", "<!-- experiments:end -->")

COLUMNS = [
    "experiment",
    "what",
    "seeds",
    "test acc %",
    "params",
    "epochs",
    "train time / run",
    "machine",
    "reference",
    "target",
]
CSV_COLUMNS = [
    "experiment",
    "what",
    "runs",
    "seeds",
    "test_acc_mean",
    "test_acc_std",
    "test_acc_runs",
    "params",
    "epochs",
    "train_seconds_mean",
    "machine",
    "machine_recorded",
    "partial_test",
    "reference",
    "target",
    "target_met",
    "jobs",
]


class ExperimentError(SeqMNISTError):
    """An experiment file or a page's block is not as the results table needs it."""


@dataclass(frozen=True)
class Experiment:
    """One ``conf/experiment/*.yaml`` as the results table sees it."""

    name: str
    what: str
    order: int
    run: bool  # part of `make results`
    target: float | None
    reference: str


def describe_experiment(name: str, conf_dir: Path = EXPERIMENT_DIR) -> str:
    """What an experiment is: the first comment line of its file after ``# @package``."""
    path = Path(conf_dir) / f"{name}.yaml"
    if not path.is_file():
        return ""
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text.startswith("#"):
            if text:  # the comment block is over
                break
            continue
        text = text.lstrip("#").strip()
        if text and not text.startswith("@package"):
            return text
    return ""


def catalogue(conf_dir: Path = EXPERIMENT_DIR) -> list[Experiment]:
    """Every experiment file of ``conf_dir``, in table order."""
    found = []
    for path in sorted(Path(conf_dir).glob("*.yaml")):
        block = (yaml.safe_load(path.read_text()) or {}).get("results")
        if not isinstance(block, dict) or not {"order", "run", "target", "reference"} <= set(block):
            raise ExperimentError(
                f"{path} has no complete 'results:' block (order, run, target, reference). "
                "Fix: copy one from another file of conf/experiment/."
            )
        found.append(
            Experiment(
                name=path.stem,
                what=describe_experiment(path.stem, conf_dir),
                order=int(block["order"]),
                run=bool(block["run"]),
                target=None if block["target"] is None else float(block["target"]),
                reference=str(block["reference"] or ""),
            )
        )
    return sorted(found, key=lambda e: (e.order, e.name))


def catalogue_markdown(experiments: list[Experiment]) -> str:
    """The list of experiments (docs/training.md): name and what it is."""
    rows = [{"name": f"`{e.name}`", "what it is": e.what} for e in experiments]
    return tables.markdown_table(rows, ["name", "what it is"])


# -- the results table --------------------------------------------------------------------
def collect(sweeps: Iterable[Path]) -> dict[str, Any]:
    """Every job under ``sweeps``: completed ones by experiment, the rest by what went wrong."""
    out: dict[str, Any] = {
        "experiments": {},
        "no_experiment": [],
        "failed": [],
        "unfinished": [],
        "jobs": 0,
    }
    for row in read_jobs(list(sweeps)):
        out["jobs"] += 1
        status = row.get("status")
        if status == "failed":
            out["failed"].append(row)
        elif status != "completed":  # running, missing, unreadable
            out["unfinished"].append(row)
        elif row["experiment"] is None:
            out["no_experiment"].append(row)
        else:
            out["experiments"].setdefault(row["experiment"], []).append(row)
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def summarise(name: str, rows: list[dict[str, Any]], known: dict[str, Experiment]) -> dict:
    """One experiment's row: accuracy mean and sample std over its completed runs, and the rest."""
    exp = known.get(name)
    mean, std = aggregate.mean_std(aggregate.numbers(rows, "test/acc"))
    secs, _ = aggregate.mean_std(aggregate.numbers(rows, "train_seconds"))
    target = exp.target if exp else None
    return {
        "experiment": name,
        "what": exp.what if exp else "",
        "runs": len(rows),
        "seeds": sorted(aggregate.distinct(r.get("seed") for r in rows), key=str),
        "test_acc_mean": mean,
        "test_acc_std": std,
        "test_acc_runs": len(aggregate.numbers(rows, "test/acc")),
        "params": aggregate.distinct(r.get("params") for r in rows),
        "epochs": aggregate.distinct(r.get("epochs") for r in rows),
        "train_seconds_mean": secs,
        "machine": aggregate.distinct(r.get("machine") for r in rows),
        # Runs that did not record their machine get the one building the table (marked *).
        "machine_missing": any(not r.get("machine") for r in rows),
        "partial_test": any(r.get("partial_test") for r in rows),
        "reference": exp.reference if exp else "",
        "target": target,
        "target_met": None if target is None or mean is None else mean >= target,
        "jobs": [r["path"] for r in rows],
    }


def ordered(names: Iterable[str], known: list[Experiment]) -> list[str]:
    """``names`` in catalogue order; unknown ones follow alphabetically."""
    order = [e.name for e in known]
    names = set(names)
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def table_rows(summaries: list[dict[str, Any]], fallback_machine: str | None) -> list[dict]:
    """The summaries as display strings, keyed by :data:`COLUMNS`."""
    out = []
    for s in summaries:
        acc = ""
        if s["test_acc_mean"] is not None:
            acc = f"{100 * s['test_acc_mean']:.2f}"
            if s["test_acc_std"] is not None:
                acc += f" +- {100 * s['test_acc_std']:.2f}"
            if s["partial_test"]:
                acc += " (part of the test set)"
        seeds = ", ".join(str(x) for x in s["seeds"])
        machine = "; ".join(str(m) for m in s["machine"])
        if s["machine_missing"]:
            machine = "; ".join(x for x in (machine, f"{fallback_machine} *") if x)
        target = ""
        if s["target"] is not None:
            verdict = {True: "met", False: "missed", None: "no result"}[s["target_met"]]
            target = f">= {100 * s['target']:g}%: {verdict}"
        out.append(
            {
                "experiment": f"`{s['experiment']}`",
                "what": s["what"],
                "seeds": f"{s['runs']} ({seeds})" if seeds else str(s["runs"]),
                "test acc %": acc,
                "params": ", ".join(f"{int(p):,}" for p in s["params"]),
                "epochs": ", ".join(str(e) for e in s["epochs"]),
                "train time / run": _duration(s["train_seconds_mean"]),
                "machine": machine,
                "reference": s["reference"],
                "target": target,
            }
        )
    return out


def markdown(
    result: dict[str, Any],
    summaries: list[dict[str, Any]],
    sweeps: list[Path],
    fallback_machine: str | None,
) -> str:
    """The table with its notes: the block that goes between the page's markers."""
    table = tables.markdown_table(
        table_rows(summaries, fallback_machine),
        COLUMNS,
        fmt=lambda _k, v: tables.cell_text(v, limit=10_000),
        right=("test acc %", "params", "epochs"),
    )
    n_done = sum(s["runs"] for s in summaries)
    notes = [
        "",
        f"Built by `python -m seqmnist.results {' '.join(str(s) for s in sweeps)}` from the runs' "
        f"`metrics.json` ({n_done} completed runs of {result['jobs']} jobs); do not edit by hand.",
        "Test accuracy: mean +- sample std over the runs, in %, on the full 10,000-image test "
        "set, from each run's best-`val/acc` checkpoint. Train time: the fit alone, per run. "
        "Target: met when the mean reaches it.",
    ]
    if any(s["partial_test"] for s in summaries):
        notes.append(
            "Rows marked (part of the test set) come from runs with `trainer.limit_test_batches` "
            "set: not comparable with the others."
        )
    if any(s["machine_missing"] for s in summaries):
        notes.append(
            "\\* The runs did not record their machine; this is the machine the table was built on."
        )
    if result["failed"]:
        notes.append(f"Failed jobs ({len(result['failed'])}), not in the table:")
        notes += [
            f"- `{r['path']}` ({r.get('experiment') or 'no experiment'}): "
            f"{tables.cell_text(r.get('error') or 'no error recorded', limit=300)}"
            for r in result["failed"]
        ]
    if result["unfinished"]:
        notes.append(f"Unfinished jobs ({len(result['unfinished'])}), not in the table:")
        notes += [
            f"- `{r['path']}` ({r.get('experiment') or 'no experiment'}): {r.get('status')}"
            for r in result["unfinished"]
        ]
    if result["no_experiment"]:
        notes.append(
            f"Skipped {len(result['no_experiment'])} completed jobs run without `experiment=`."
        )
    return table + "\n" + "\n".join(notes) + "\n"


def csv_rows(summaries: list[dict[str, Any]], fallback: str | None) -> list[dict[str, Any]]:
    def flat(v: Any) -> Any:
        return "; ".join(str(x) for x in v) if isinstance(v, list) else v

    out = []
    for s in summaries:
        row = {k: flat(v) for k, v in s.items()}
        row["machine_recorded"] = not s["machine_missing"]
        if s["machine_missing"]:
            row["machine"] = "; ".join(x for x in (row["machine"], fallback) if x)
        out.append(row)
    return out


def replace_block(text: str, block: str, markers: tuple[str, str] = RESULTS_MARKERS) -> str:
    """``text`` with everything between the two marker lines replaced by ``block``.

    Markers count only as lines of their own, so prose may quote them inline. Raises
    :class:`ExperimentError` when they are not there exactly once, in order.
    """
    start, end = markers
    lines = text.splitlines(keepends=True)
    starts = [i for i, ln in enumerate(lines) if ln.strip() == start]
    ends = [i for i, ln in enumerate(lines) if ln.strip() == end]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise ExperimentError(
            f"expected one '{start}' line followed by one '{end}' line (found {len(starts)} "
            f"and {len(ends)}); add them to the page's table section (docs/results.md, "
            "docs/answering-early.md)"
        )
    body = block.strip() + "\n"
    return "".join(lines[: starts[0] + 1]) + body + "".join(lines[ends[0] :])
