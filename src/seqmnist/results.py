"""The README's results table: ``python -m seqmnist.results SWEEP_DIR [SWEEP_DIR...] [--readme]``.

``make results`` runs the CPU experiments over seeds 0, 1, 2 as one multirun and then calls
this; ``make results-table DIRS="..."`` calls only this. It reads every job directory of the
given sweep (or run) directories with :func:`seqmnist.report.find_jobs` and
:func:`seqmnist.report.read_job`, groups the completed jobs by the experiment they ran
(``hydra.runtime.choices.experiment`` in the job's ``.hydra/hydra.yaml``), and gives one row
per experiment: what it is (the first comment line of ``conf/experiment/<name>.yaml``), seeds,
test accuracy mean +- std, parameters, epochs, mean training time per run, the machine, a
reference figure from the literature and, where the issue set one, the target and whether the
mean met it.

It writes ``results_experiments.md`` and ``results_experiments.csv`` into the first directory
(not ``results.md``/``.csv``: those are the per-job sweep report of ``seqmnist.report``, which
the multirun has just written there), prints the table and, with ``--readme``, replaces the
text between the ``<!-- results:start -->`` and ``<!-- results:end -->`` markers of the README.
Exit status: 0, or 1 when no run completed or some job failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from seqmnist.machine import describe as machine_description  # runs without a recorded machine
from seqmnist.report import find_jobs, read_job

EXPERIMENT_DIR = Path(__file__).resolve().parents[2] / "conf" / "experiment"
MD_NAME = "results_experiments.md"
CSV_NAME = "results_experiments.csv"
START = "<!-- results:start -->"
END = "<!-- results:end -->"

# Table order: the tutorials, the tuned row recipes, then the GPU pixel-by-pixel experiments;
# any other experiment follows alphabetically.
ORDER = ["tutorial_lstm", "tutorial_rnn", "tutorial_gru3", "best_row", "fast99", "fashion_row",
         "smnist_lstm", "psmnist_lstm"]  # fmt: skip

# What others reported for the same task. Paper figures were checked against the papers' text
# (Cooijmans et al.'s Table 1 also lists the IRNN and uRNN figures). Left out on purpose: the
# LSTM baselines of Le et al. 2015 and Arjovsky et al. 2016, which could not be checked and
# which later papers quote differently (98.2% or 97.3% for Arjovsky et al.'s pixel LSTM).
REFERENCES = {
    "tutorial_lstm": 'TF tutorial: "99.21%" on 128 test images',
    "tutorial_rnn": "tf.scan tutorial: no test accuracy reported",
    "tutorial_gru3": 'TF tutorial: "98.5% after 3 epochs"',
    "smnist_lstm": "LSTM 98.9% (Cooijmans et al. 2016, arXiv:1603.09025); IRNN 97.0% (Le et al. "
    "2015, arXiv:1504.00941); uRNN 95.1% (Arjovsky et al. 2016, arXiv:1511.06464)",
    "psmnist_lstm": "LSTM 90.2% (Cooijmans et al. 2016, arXiv:1603.09025); IRNN 82.0% (Le et al. "
    "2015, arXiv:1504.00941); uRNN 91.4% (Arjovsky et al. 2016, arXiv:1511.06464)",
}
# Mean test accuracy each experiment should reach (from the issue that added them).
TARGETS = {"tutorial_lstm": 0.985, "best_row": 0.993, "fashion_row": 0.90, "fast99": 0.99}

COLUMNS = ["experiment", "what", "seeds", "test acc %", "params", "epochs", "train time / run",
           "machine", "reference", "target"]  # fmt: skip
CSV_COLUMNS = ["experiment", "what", "runs", "seeds", "test_acc_mean", "test_acc_std",
               "test_acc_runs", "params", "epochs", "train_seconds_mean", "machine",
               "machine_recorded", "partial_test", "reference", "target", "target_met",
               "jobs"]  # fmt: skip


def experiment_name(job: Path) -> str | None:
    """The ``experiment=`` a job ran with, from its ``.hydra/hydra.yaml`` (None: no experiment)."""
    path = job / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return None
    choices = ((cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    name = choices.get("experiment")
    return str(name) if name else None


def describe_experiment(name: str, conf_dir: Path = EXPERIMENT_DIR) -> str:
    """What an experiment is: the first comment line of its config after ``# @package``."""
    path = conf_dir / f"{name}.yaml"
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


def _metrics_value(job: Path, key: str) -> Any:
    """One key of ``metrics.json`` that :func:`read_job` does not keep (``machine``)."""
    try:
        return json.loads((job / "metrics.json").read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _partial_test(job: Path) -> bool:
    """Whether the job tested on part of the test set only (``trainer.limit_test_batches``)."""
    for name in ("resolved_config.yaml", ".hydra/config.yaml"):
        path = job / name
        if path.is_file():
            try:
                cfg = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                return False
            limit = (cfg.get("trainer") or {}).get("limit_test_batches")
            # Lightning: None or the float 1.0 is the whole set; an int is a number of batches.
            return limit is not None and not (isinstance(limit, float) and limit == 1.0)
    return False


def collect(sweeps: Iterable[Path]) -> dict[str, Any]:
    """Every job under ``sweeps``: completed ones by experiment, the rest by what went wrong."""
    by_experiment: dict[str, list[dict[str, Any]]] = {}
    no_experiment: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    unfinished: list[dict[str, Any]] = []
    n_jobs = 0
    for sweep in sweeps:
        for job in find_jobs(sweep):
            n_jobs += 1
            row = read_job(job)
            row["path"] = str(job)
            row["experiment"] = experiment_name(job)
            status = row.get("status")
            if status == "failed":
                failed.append(row)
            elif status != "completed":  # running, missing, unreadable
                unfinished.append(row)
            elif row["experiment"] is None:
                no_experiment.append(row)
            else:
                row["machine"] = _metrics_value(job, "machine")
                row["partial_test"] = _partial_test(job)
                by_experiment.setdefault(row["experiment"], []).append(row)
    return {
        "experiments": by_experiment,
        "no_experiment": no_experiment,
        "failed": failed,
        "unfinished": unfinished,
        "jobs": n_jobs,
    }


def _distinct(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def summarise(
    name: str, rows: list[dict[str, Any]], conf_dir: Path = EXPERIMENT_DIR
) -> dict[str, Any]:
    """One experiment's row: accuracy mean and sample std over its completed runs, and the rest."""
    accs = [float(r["test/acc"]) for r in rows if isinstance(r.get("test/acc"), (int, float))]
    mean = statistics.fmean(accs) if accs else None
    std = statistics.stdev(accs) if len(accs) > 1 else None
    secs = [
        float(r["train_seconds"]) for r in rows if isinstance(r.get("train_seconds"), (int, float))
    ]
    target = TARGETS.get(name)
    return {
        "experiment": name,
        "what": describe_experiment(name, conf_dir),
        "runs": len(rows),
        "seeds": sorted(_distinct(r.get("seed") for r in rows), key=str),
        "test_acc_mean": mean,
        "test_acc_std": std,
        "test_acc_runs": len(accs),
        "params": _distinct(r.get("params") for r in rows),
        "epochs": _distinct(r.get("epochs") for r in rows),
        "train_seconds_mean": statistics.fmean(secs) if secs else None,
        "machine": _distinct(r.get("machine") for r in rows),
        # Runs that did not record their machine get the one building the table (marked *).
        "machine_missing": any(not r.get("machine") for r in rows),
        "partial_test": any(r.get("partial_test") for r in rows),
        "reference": REFERENCES.get(name, ""),
        "target": target,
        "target_met": None if target is None or mean is None else mean >= target,
        "jobs": [r["path"] for r in rows],
    }


def _order(names: Iterable[str]) -> list[str]:
    known = [n for n in ORDER if n in names]
    return known + sorted(n for n in names if n not in ORDER)


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


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
        runs = f"{s['runs']} ({seeds})" if seeds else str(s["runs"])
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
                "seeds": runs,
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
    """The table with its notes: the block that goes between the README markers."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "| "
        + " | ".join("---:" if c in ("test acc %", "params", "epochs") else "---" for c in COLUMNS)
        + " |",
    ]
    for row in table_rows(summaries, fallback_machine):
        lines.append("| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |")
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
            f"{_cell(r.get('error') or 'no error recorded')[:300]}"
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
    return "\n".join(lines + notes) + "\n"


def write_csv(path: Path, summaries: list[dict[str, Any]], fallback: str | None) -> None:
    def flat(v: Any) -> Any:
        return "; ".join(str(x) for x in v) if isinstance(v, list) else v

    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for s in summaries:
            row = {k: flat(v) for k, v in s.items()}
            row["machine_recorded"] = not s["machine_missing"]
            if s["machine_missing"]:
                row["machine"] = "; ".join(x for x in (row["machine"], fallback) if x)
            writer.writerow(row)


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the results marker lines replaced by ``block``.

    Markers count only as lines of their own, so prose may quote them inline.
    """
    lines = text.splitlines(keepends=True)
    starts = [i for i, ln in enumerate(lines) if ln.strip() == START]
    ends = [i for i, ln in enumerate(lines) if ln.strip() == END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise ValueError(
            f"expected one '{START}' line followed by one '{END}' line (found {len(starts)} "
            f"and {len(ends)}); add them to the README's '## Results' section"
        )
    body = block.strip() + "\n"
    return "".join(lines[: starts[0] + 1]) + body + "".join(lines[ends[0] :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweep_dirs",
        type=Path,
        nargs="+",
        metavar="SWEEP_DIR",
        help="multirun dirs (outputs/train/multiruns/...) or single run dirs",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        metavar="README",
        help="replace the table between the results markers of this file",
    )
    args = parser.parse_args(argv)
    for d in args.sweep_dirs:
        if not d.is_dir():
            print(f"error: {d} is not a directory", file=sys.stderr)
            return 2
    readme_text = None
    if args.readme is not None:  # check the markers before any work, so a bad README costs nothing
        if not args.readme.is_file():
            print(f"error: {args.readme} does not exist", file=sys.stderr)
            return 2
        readme_text = args.readme.read_text()
        try:
            replace_block(readme_text, "")
        except ValueError as e:
            print(f"error: {args.readme}: {e}", file=sys.stderr)
            return 2

    result = collect(args.sweep_dirs)
    for r in result["no_experiment"]:
        print(f"note: skipped {r['path']}: run without experiment=", file=sys.stderr)
    for r in result["failed"]:
        print(f"failed: {r['path']} ({r.get('experiment')}): {r.get('error')}", file=sys.stderr)
    for r in result["unfinished"]:
        print(
            f"not finished: {r['path']} ({r.get('experiment')}): {r.get('status')}", file=sys.stderr
        )
    if not result["experiments"]:
        where = ", ".join(str(d) for d in args.sweep_dirs)
        print(
            f"error: no completed experiment runs under {where} ({result['jobs']} jobs: "
            f"{len(result['failed'])} failed, {len(result['unfinished'])} unfinished, "
            f"{len(result['no_experiment'])} without experiment=)",
            file=sys.stderr,
        )
        return 1

    summaries = [summarise(n, result["experiments"][n]) for n in _order(result["experiments"])]
    fallback = machine_description() if any(s["machine_missing"] for s in summaries) else None
    md = markdown(result, summaries, args.sweep_dirs, fallback)
    out_dir = args.sweep_dirs[0]
    (out_dir / MD_NAME).write_text(f"# Experiment results\n\n{md}")
    write_csv(out_dir / CSV_NAME, summaries, fallback)
    print(md)
    print(f"wrote {out_dir / MD_NAME}, {out_dir / CSV_NAME}")
    if readme_text is not None and args.readme is not None:
        args.readme.write_text(replace_block(readme_text, md))
        print(f"updated the results table in {args.readme}")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
