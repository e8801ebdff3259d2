"""A run directory: what one training run (or one job of a sweep) leaves behind, read and
written in this one place.

::

    <run>/.hydra/config.yaml      the composed config (interpolations kept), by Hydra
    <run>/.hydra/hydra.yaml       Hydra's own config (the experiment chosen, overrides)
    <run>/resolved_config.yaml    the config with every interpolation resolved
    <run>/metrics.json            settings, status (running, completed, failed, interrupted),
                                  results, machine
    <run>/checkpoints/*.ckpt

A sweep directory holds one such directory per job (``0/``, ``1/``, ...).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("seqmnist.runs")

METRICS_FILE = "metrics.json"
RESOLVED_CONFIG = "resolved_config.yaml"
HYDRA_CONFIG = ".hydra/config.yaml"
# The flat settings that tell runs apart (TensorBoard's HParams tab, reports, results).
SETTINGS = ["cell", "layers", "hidden", "dropout", "bidirectional", "optimizer", "lr", "scheduler",
            "batch_size", "dataset", "sequence", "seed", "max_epochs",
            "gradient_clip_val"]  # fmt: skip


def _short_name(target: Any) -> str | None:
    return str(target).rsplit(".", 1)[-1] if target else None


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """The flat settings of a run's config (see :data:`SETTINGS`); unreadable ones are None."""

    def get(key: str) -> Any:
        try:
            return OmegaConf.select(cfg, key, default=None)
        except Exception:  # an interpolation that only resolves inside Hydra
            return None

    return {
        "cell": get("model.net.cell"),
        "layers": get("model.net.num_layers"),
        "hidden": get("model.net.hidden_size"),
        "dropout": get("model.net.dropout"),
        "bidirectional": get("model.net.bidirectional"),
        "optimizer": _short_name(get("optimizer._target_")),
        "lr": get("optimizer.lr"),
        "scheduler": _short_name(get("scheduler.scheduler._target_")) or "none",
        "batch_size": get("data.batch_size"),
        "dataset": get("data.dataset"),
        "sequence": get("data.sequence"),
        "seed": get("seed"),
        "max_epochs": get("trainer.max_epochs"),
        "gradient_clip_val": get("trainer.gradient_clip_val") or 0.0,
    }


def load_config(run_dir: Path) -> DictConfig | None:
    """The run's config: ``resolved_config.yaml``, else ``.hydra/config.yaml``; None if neither
    is there and readable."""
    for name in (RESOLVED_CONFIG, HYDRA_CONFIG):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        try:
            cfg = OmegaConf.load(path)
        except Exception:  # a damaged YAML file: try the next one
            continue
        if isinstance(cfg, DictConfig):
            return cfg
    return None


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """``metrics.json`` as a dict; None when absent. Raises ``ValueError`` when unreadable."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not an object")
    return data


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Write ``metrics.json`` atomically: a reader (a sweep report) never sees half a file."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp", dir=run_dir)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, run_dir / METRICS_FILE)


def record_status(run_dir: Path, error: BaseException | str, status: str = "failed") -> None:
    """Mark the run ``status`` with ``error`` in its own ``metrics.json`` (sweeps and reports
    read why); never raises, so it cannot hide the original error."""
    try:
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        write_metrics(run_dir, {"status": status, "error": reason})
    except Exception:
        log.exception("could not write metrics.json for the failed run")


def find_jobs(sweep: Path) -> list[Path]:
    """Job directories under ``sweep`` (those with ``.hydra/``), numbered ones in numeric
    order; ``sweep`` itself when it is a single run."""
    sweep = Path(sweep)
    jobs = [p.parent for p in sweep.glob("*/.hydra")] + [p.parent for p in sweep.glob(".hydra")]

    def key(p: Path) -> tuple:
        return (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name)

    return sorted(set(jobs), key=key)


def experiment_name(job: Path) -> str | None:
    """The ``experiment=`` a job ran with, from its ``.hydra/hydra.yaml`` (None: no experiment)."""
    path = Path(job) / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return None
    choices = ((cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    name = choices.get("experiment")
    return str(name) if name else None


def partial_test(cfg: DictConfig | None) -> bool:
    """Whether the run tested on part of the test set only (``trainer.limit_test_batches``)."""
    if cfg is None:
        return False
    limit = OmegaConf.select(cfg, "trainer.limit_test_batches", default=None)
    # Lightning: None or the float 1.0 is the whole set; an int is a number of batches.
    return limit is not None and not (isinstance(limit, float) and limit == 1.0)


def read_job(job: Path) -> dict[str, Any]:
    """One row for a job: its settings, everything in its ``metrics.json``, its status.

    Settings come from ``metrics.json``, else (a job that failed early or is still running)
    from its config. Status: the recorded one; ``missing`` without ``metrics.json``,
    ``unreadable`` when that file is damaged; ``completed`` for files older than statuses.
    """
    job = Path(job)
    cfg = load_config(job)
    row: dict[str, Any] = {"job": job.name, "path": str(job)}
    if cfg is not None:
        row.update(run_settings(cfg))
    row["experiment"] = experiment_name(job)
    row["partial_test"] = partial_test(cfg)
    try:
        metrics = read_metrics(job)
    except (ValueError, UnicodeDecodeError) as e:
        return {**row, "status": "unreadable", "error": f"metrics.json: {e}"}
    if metrics is None:
        row["status"] = "missing"
        row["error"] = "no metrics.json (still running, or killed before it started)"
        return row
    row.update({k: v for k, v in metrics.items() if v is not None})
    row.setdefault("status", "completed")
    return row


def read_jobs(sweeps: list[Path]) -> list[dict[str, Any]]:
    """:func:`read_job` for every job under every directory of ``sweeps``."""
    return [read_job(job) for sweep in sweeps for job in find_jobs(sweep)]
