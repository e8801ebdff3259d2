"""Summarise a sweep: ``python -m seqmnist.report SWEEP_DIR`` (``make report DIR=...``).

Reads every job directory under ``SWEEP_DIR`` and writes ``results.md``, ``results.csv``
(and ``results_grouped.csv`` when settings were run with several seeds) and ``results.png``
there (see :mod:`seqmnist.reports.sweep_report`). Prints the top rows; exits with status 1 when
any job failed, 2 when there is nothing to report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seqmnist.reports.sweep_report import (
    ReportError,
    build_report,
    compare_searches,
    markdown_table,
)
from seqmnist.shell import command


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun dir (outputs/train/multiruns/...)")
    parser.add_argument("--top", type=int, default=10, help="rows printed (default %(default)s)")
    parser.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        metavar="SEARCH_DIR",
        help="also compare Optuna searches: trials, pruned, compute, wall, best",
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise ReportError(f"{args.sweep_dir} is not a directory")
    result = build_report(args.sweep_dir)
    cols = [
        "job",
        "cell",
        "layers",
        "hidden",
        "optimizer",
        "lr",
        "seed",
        "val/acc_best",
        "test/acc",
        "status",
    ]
    print(markdown_table(result["rows"][: args.top], cols))
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result["counts"].items()))
    print(f"\n{len(result['rows'])} jobs: {counts}")
    written = ["results.md", "results.csv"] + (["results.png"] if result["plot"] else [])
    print(f"wrote {', '.join(str(args.sweep_dir / w) for w in written)}")
    if args.compare:
        print("\n" + compare_searches([args.sweep_dir, *args.compare]))
    return 1 if result["counts"].get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
