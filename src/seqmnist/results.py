"""The results table: ``python -m seqmnist.results SWEEP_DIR [SWEEP_DIR...] [--page PAGE]``.

``make results`` runs the experiments marked ``run: true`` in ``conf/experiment/`` over seeds
0, 1, 2 as one multirun and then calls this; ``make results-table DIRS="..."`` calls only
this. It writes ``results_experiments.md`` and ``results_experiments.csv`` into the first
directory (``results.md``/``.csv`` are the per-job sweep report of ``seqmnist.report``),
prints the table and, with ``--page``, replaces the text between the
``<!-- results:start -->`` and ``<!-- results:end -->`` markers of that page.

``--anytime`` builds the answering-early table instead (:mod:`seqmnist.reports.anytime`:
each run's checkpoint read over the test set with early exit) into ``results_anytime.md`` /
``.csv`` and, with ``--page``, between the ``<!-- anytime:start -->`` markers.

The pages are docs/results.md and docs/answering-early.md. ``--list`` prints the experiments
that ``make results`` runs (comma-separated), ``--catalogue PAGE`` rewrites a page's list of
experiments (docs/training.md) between its ``experiments`` markers.
Exit status: 0, or 1 when no run completed or some job failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seqmnist.core.machine import describe as machine_description  # runs without a recorded one
from seqmnist.reports import experiments as ex
from seqmnist.reports.tables import write_csv
from seqmnist.shell import command


def _readme(path: Path) -> str:
    if not path.is_file():
        raise ex.ExperimentError(f"{path} does not exist")
    return path.read_text()


def table(sweep_dirs: list[Path], readme: Path | None) -> int:
    for d in sweep_dirs:
        if not d.is_dir():
            raise ex.ExperimentError(f"{d} is not a directory")
    readme_text = None
    if readme is not None:  # check the markers before any work, so a bad page costs nothing
        readme_text = _readme(readme)
        try:
            ex.replace_block(readme_text, "")
        except ex.ExperimentError as e:
            raise ex.ExperimentError(f"{readme}: {e}") from None

    result = ex.collect(sweep_dirs)
    for r in result["no_experiment"]:
        print(f"note: skipped {r['path']}: run without experiment=", file=sys.stderr)
    for r in result["failed"]:
        print(f"failed: {r['path']} ({r.get('experiment')}): {r.get('error')}", file=sys.stderr)
    for r in result["unfinished"]:
        print(
            f"not finished: {r['path']} ({r.get('experiment')}): {r.get('status')}", file=sys.stderr
        )
    if not result["experiments"]:
        where = ", ".join(str(d) for d in sweep_dirs)
        print(
            f"error: no completed experiment runs under {where} ({result['jobs']} jobs: "
            f"{len(result['failed'])} failed, {len(result['unfinished'])} unfinished, "
            f"{len(result['no_experiment'])} without experiment=)",
            file=sys.stderr,
        )
        return 1

    known = ex.catalogue()
    by_name = {e.name: e for e in known}
    summaries = [
        ex.summarise(n, result["experiments"][n], by_name)
        for n in ex.ordered(result["experiments"], known)
    ]
    fallback = None
    if any(s["machine_missing"] for s in summaries):
        fallback = machine_description()
    md = ex.markdown(result, summaries, sweep_dirs, fallback)
    out_dir = sweep_dirs[0]
    (out_dir / ex.MD_NAME).write_text(f"# Experiment results\n\n{md}")
    write_csv(out_dir / ex.CSV_NAME, ex.csv_rows(summaries, fallback), ex.CSV_COLUMNS)
    print(md)
    print(f"wrote {out_dir / ex.MD_NAME}, {out_dir / ex.CSV_NAME}")
    if readme_text is not None and readme is not None:
        readme.write_text(ex.replace_block(readme_text, md))
        print(f"updated the results table in {readme}")
    return 1 if result["failed"] else 0


def anytime_table(sweep_dirs: list[Path], readme: Path | None, budget: float | None) -> int:
    """The answering-early table of the experiments under ``sweep_dirs``."""
    # Imported here: they load torch, which the results table itself never needs.
    from seqmnist.data import default_data_root
    from seqmnist.reports import anytime

    for d in sweep_dirs:
        if not d.is_dir():
            raise ex.ExperimentError(f"{d} is not a directory")
    readme_text = _readme(readme) if readme is not None else None
    if readme_text is not None:  # the markers first: a bad page costs no evaluation
        try:
            ex.replace_block(readme_text, "", anytime.MARKERS)
        except ex.ExperimentError as e:
            raise ex.ExperimentError(f"{readme}: {e}") from None
    summaries, skipped = anytime.summarise(sweep_dirs, default_data_root(), budget)
    for note in skipped:
        print(f"note: skipped {note}", file=sys.stderr)
    if not summaries:
        print(f"error: no completed runs with a checkpoint under {sweep_dirs}", file=sys.stderr)
        return 1
    command_line = "python -m seqmnist.results --anytime " + " ".join(str(d) for d in sweep_dirs)
    md = anytime.markdown(summaries, command_line, budget, skipped)
    out_dir = sweep_dirs[0]
    (out_dir / anytime.MD_NAME).write_text(f"# Answering early\n\n{md}")
    write_csv(out_dir / anytime.CSV_NAME, anytime.csv_rows(summaries), anytime.CSV_COLUMNS)
    print(md)
    print(f"wrote {out_dir / anytime.MD_NAME}, {out_dir / anytime.CSV_NAME}")
    if readme_text is not None and readme is not None:
        readme.write_text(ex.replace_block(readme_text, md, anytime.MARKERS))
        print(f"updated the answering-early table in {readme}")
    return 0


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweep_dirs",
        type=Path,
        nargs="*",
        metavar="SWEEP_DIR",
        help="multirun dirs (outputs/train/multiruns/...) or single run dirs",
    )
    parser.add_argument(
        "--page",
        "--readme",  # its first name, when the tables were in the README
        dest="readme",
        type=Path,
        metavar="PAGE",
        help="replace the table between the results markers of this file",
    )
    parser.add_argument(
        "--anytime",
        action="store_true",
        help="build the answering-early table (early exit on the test set) instead",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="--anytime: the mean steps read allowed for the early-exit column (default: 5/7 "
        "of each model's steps, 20 of 28 rows)",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="print the experiments `make results` runs, comma-separated",
    )
    parser.add_argument(
        "--catalogue",
        type=Path,
        metavar="PAGE",
        help="rewrite the list of experiments between its markers in PAGE",
    )
    args = parser.parse_args(argv)
    if args.list:
        print(",".join(e.name for e in ex.catalogue() if e.run))
        return 0
    if args.catalogue is not None:
        text = _readme(args.catalogue)
        block = ex.catalogue_markdown(ex.catalogue())
        args.catalogue.write_text(ex.replace_block(text, block, ex.CATALOGUE_MARKERS))
        print(f"updated the list of experiments in {args.catalogue}")
        return 0
    if not args.sweep_dirs:
        parser.error("give at least one SWEEP_DIR (or --list / --catalogue)")
    if args.anytime:
        return anytime_table(args.sweep_dirs, args.readme, args.budget)
    return table(args.sweep_dirs, args.readme)


if __name__ == "__main__":
    sys.exit(main())
