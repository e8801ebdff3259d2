"""A run directory: every path under one training run (or one job of a sweep), and the
reading and writing of its files, in this one place.

::

    <run>/.hydra/config.yaml      the composed config (interpolations kept), by Hydra
    <run>/.hydra/hydra.yaml       Hydra's own config (the experiment chosen, overrides)
    <run>/resolved_config.yaml    the config with every interpolation resolved
    <run>/metrics.json            settings, status (running, completed, failed, interrupted,
                                  pruned), results, machine
    <run>/checkpoints/*.ckpt      the best (epoch_NNN-val_acc_X.ckpt) and last.ckpt

A sweep directory holds one such directory per job (``0/``, ``1/``, ...). The configs name
the checkpoint folder once, as ``paths.checkpoint_dir`` (conf/paths/default.yaml).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from seqmnist.core.files import atomic_file

log = logging.getLogger("seqmnist.runs")

METRICS_FILE = "metrics.json"
RESOLVED_CONFIG = "resolved_config.yaml"
CHECKPOINTS = "checkpoints"
# Lightning's ModelCheckpoint.CHECKPOINT_NAME_LAST + FILE_EXTENSION (save_last=true writes it;
# tests/core/test_rundir.py checks the two agree). Not imported: reports run without torch.
LAST_CKPT = "last.ckpt"


@dataclass(frozen=True)
class RunDir:
    """One run's directory and the paths under it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of_checkpoint(cls, ckpt: str | os.PathLike) -> RunDir | None:
        """The run a checkpoint file lies in (``<run>/checkpoints/x.ckpt``); None elsewhere."""
        parent = Path(ckpt).resolve().parent
        return cls(parent.parent) if parent.name == CHECKPOINTS else None

    @classmethod
    def given(cls, path: str | os.PathLike) -> RunDir:
        """A run dir named by the user, who may also have named its ``checkpoints/``."""
        p = Path(path)
        return cls(p.parent if p.name == CHECKPOINTS else p)

    # -- paths ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / LAST_CKPT

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def resolved_config(self) -> Path:
        return self.path / RESOLVED_CONFIG

    @property
    def hydra_config(self) -> Path:
        return self.path / ".hydra" / "config.yaml"

    @property
    def hydra_runtime(self) -> Path:
        return self.path / ".hydra" / "hydra.yaml"

    def checkpoint_files(self) -> list[Path]:
        """The ``.ckpt`` files of ``checkpoints/``, by name."""
        return sorted(self.checkpoints.glob("*.ckpt")) if self.checkpoints.is_dir() else []

    # -- config -----------------------------------------------------------------------
    def save_config(self, cfg: DictConfig) -> None:
        """``resolved_config.yaml``: what the run actually used (.hydra keeps interpolations)."""
        self.path.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, self.resolved_config, resolve=True)

    def load_config(self) -> DictConfig | None:
        """The run's config: ``resolved_config.yaml``, else ``.hydra/config.yaml``; None if
        neither is there and readable."""
        for path in (self.resolved_config, self.hydra_config):
            if not path.is_file():
                continue
            try:
                cfg = OmegaConf.load(path)
            except Exception:  # a damaged YAML file: try the next one
                continue
            if isinstance(cfg, DictConfig):
                return cfg
        return None

    def experiment(self) -> str | None:
        """The ``experiment=`` the run was started with (None: no experiment)."""
        if not self.hydra_runtime.is_file():
            return None
        try:
            cfg = yaml.safe_load(self.hydra_runtime.read_text()) or {}
        except yaml.YAMLError:
            return None
        choices = ((cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
        name = choices.get("experiment")
        return str(name) if name else None

    # -- metrics.json -----------------------------------------------------------------
    def read_metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` as a dict; None when absent. Raises ``ValueError`` when unreadable."""
        if not self.metrics_file.is_file():
            return None
        data = json.loads(self.metrics_file.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{self.metrics_file} holds a {type(data).__name__}, not an object")
        return data

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Write ``metrics.json`` atomically: a reader (a sweep report) never sees half a file."""
        with atomic_file(self.metrics_file, "w") as f:
            f.write(json.dumps(metrics, indent=2) + "\n")

    def record_status(self, error: BaseException | str, status: str = "failed") -> None:
        """Mark the run ``status`` with ``error`` in its ``metrics.json`` (sweeps and reports
        read why), keeping what the file already says (settings, the trackers' run ids that
        ``resume=`` continues); never raises, so it cannot hide the original error."""
        try:
            reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            try:
                kept = self.read_metrics() or {}
            except (ValueError, UnicodeDecodeError):
                kept = {}  # a damaged file: the status is what matters now
            self.write_metrics({**kept, "status": status, "error": reason})
        except Exception:
            log.exception("could not write metrics.json for the failed run")


def find_jobs(sweep: str | os.PathLike) -> list[RunDir]:
    """The job directories under ``sweep`` (those with ``.hydra/``), numbered ones in numeric
    order; ``sweep`` itself when it is a single run."""
    sweep = Path(sweep)
    jobs = [p.parent for p in sweep.glob("*/.hydra")] + [p.parent for p in sweep.glob(".hydra")]

    def key(p: Path) -> tuple:
        return (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name)

    return [RunDir(p) for p in sorted(set(jobs), key=key)]
