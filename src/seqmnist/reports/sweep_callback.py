"""Hydra callback that closes a multirun: report, failure count and exit status."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from seqmnist.core.errors import SeqMNISTError
from seqmnist.reports.sweep_report import build_report

log = logging.getLogger("seqmnist.sweep")


class SweepSummary(Callback):
    """After a multirun: write the sweep report, say how many jobs failed, and exit 1 if any.

    It reads the jobs' ``metrics.json`` files from the sweep directory, so it works the same
    for every launcher (jobs may run in other processes or on other machines).
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not sweep.is_dir():
            return
        try:
            result = build_report(sweep)
        except SeqMNISTError as e:  # no job got as far as its directory
            log.error(f"no sweep report: {e}")
            sys.exit(1)
        counts = result["counts"]
        failed = counts.get("failed", 0)
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        n = len(result["rows"])
        log.info(f"sweep finished: {n} jobs ({summary}); report: {sweep}/results.md")
        if failed:
            for row in result["rows"]:
                if row.get("status") == "failed":
                    log.error(f"job {row['job']} failed: {row.get('error')}")
            sys.exit(1)
