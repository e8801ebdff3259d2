"""The rows of a report: one per job, read from its run directory (settings, ``metrics.json``,
status), for a sweep's table and the experiments table alike."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seqmnist.core.compat import run_status
from seqmnist.core.rundir import RunDir, find_jobs
from seqmnist.training.settings import run_settings


def partial_test(cfg: DictConfig | None) -> bool:
    """Whether the run tested on part of the test set only (``trainer.limit_test_batches``)."""
    if cfg is None:
        return False
    limit = OmegaConf.select(cfg, "trainer.limit_test_batches", default=None)
    # Lightning: None or the float 1.0 is the whole set; an int is a number of batches.
    return limit is not None and not (isinstance(limit, float) and limit == 1.0)


def read_job(job: RunDir | str | os.PathLike) -> dict[str, Any]:
    """One row for a job: its settings, everything in its ``metrics.json``, its status.

    Settings come from ``metrics.json``, else (a job that failed early or is still running)
    from its config. Status: the recorded one; ``missing`` without ``metrics.json``,
    ``unreadable`` when that file is damaged.
    """
    run = job if isinstance(job, RunDir) else RunDir(job)
    cfg = run.load_config()
    row: dict[str, Any] = {"job": run.name, "path": str(run.path)}
    if cfg is not None:
        row.update(run_settings(cfg))
    row["experiment"] = run.experiment()
    row["partial_test"] = partial_test(cfg)
    try:
        metrics = run.read_metrics()
    except (ValueError, UnicodeDecodeError) as e:
        return {**row, "status": "unreadable", "error": f"metrics.json: {e}"}
    if metrics is None:
        row["status"] = "missing"
        row["error"] = "no metrics.json (still running, or killed before it started)"
        return row
    row.update({k: v for k, v in metrics.items() if v is not None})
    row["status"] = run_status(metrics)
    return row


def read_jobs(sweeps: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """:func:`read_job` for every job under every directory of ``sweeps``."""
    return [read_job(job) for sweep in sweeps for job in find_jobs(sweep)]
