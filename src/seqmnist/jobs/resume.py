"""``resume=PATH``: continue a stopped or killed run in its own directory, with its own config.

A run dir resumes from its ``checkpoints/last.ckpt``; a ``.ckpt`` path from that file. The
config is the run's saved ``resolved_config.yaml``; only ``trainer.*``, ``test``, ``threads``,
``callbacks.*`` and ``optuna_trial.*`` may be overridden alongside, since the checkpoint only
makes sense with the rest. A run that was a search trial reports to it only while the trial
still runs (:func:`seqmnist.jobs.search.resumed_trial`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seqmnist.core.compat import upgrade_config
from seqmnist.core.errors import ConfigError
from seqmnist.core.rundir import RunDir
from seqmnist.jobs.search import resumed_trial
from seqmnist.jobs.tracking import continue_runs

log = logging.getLogger("seqmnist.resume")

# Keys a resumed run may change (``resume=DIR trainer.max_epochs=30``); everything else is
# the run's saved config, since the checkpoint only makes sense with it.
RESUMABLE_OVERRIDES = ("trainer.", "test", "threads", "callbacks.", "optuna_trial.")


def relocate(node: Any, old: str, new: str) -> None:
    """Point every path under ``old`` at ``new`` (in place): a run dir that was moved or
    copied resumes in its own directory, not where it was first written."""
    if isinstance(node, DictConfig):
        for key in node:
            value = node[key]
            if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
                node[key] = new + value[len(old) :]
            else:
                relocate(value, old, new)
    elif OmegaConf.is_list(node):
        for i, value in enumerate(node):
            if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
                node[i] = new + value[len(old) :]
            else:
                relocate(value, old, new)


def resume_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``resume=PATH`` -> (run dir, checkpoint): a run dir resumes from its ``last.ckpt``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(
            f"resume={path}: no such file or directory. Fix: pass a run dir "
            "(outputs/train/runs/<time>) or one of its checkpoints/*.ckpt"
        )
    if p.is_dir():
        run, ckpt = RunDir(p), RunDir(p).last_ckpt
        if not ckpt.is_file():
            found = [str(c) for c in run.checkpoint_files()]
            fix = (
                f"Checkpoints there: {found}; pass one as resume=FILE."
                if found
                else ("Start the run again instead.")
            )
            raise ConfigError(
                f"resume={path}: {ckpt} does not exist (the run stopped before its first "
                f"checkpoint). {fix}"
            )
    else:
        ckpt = p
        run = RunDir.of_checkpoint(p) or RunDir(p.parent)
    if not run.resolved_config.is_file():
        raise ConfigError(
            f"resume={path}: {run.resolved_config} is missing, so the run's "
            "settings are unknown. Fix: pass a run dir made by seqmnist.train, or start a new "
            f"run from the weights with ckpt_path={ckpt}"
        )
    return run.path.resolve(), ckpt.resolve()


def resume_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config of the run to resume, with ``ckpt_path`` set and allowed overrides applied.

    ``overrides`` are the command line's ``key=value`` items; only ``trainer.*``, ``test``,
    ``threads`` and ``callbacks.*`` may change, because the rest is what the checkpoint was
    trained with.
    """
    run_dir, ckpt = resume_paths(cfg.resume)
    run = RunDir(run_dir)
    saved = OmegaConf.load(run.resolved_config)
    assert isinstance(saved, DictConfig)
    upgrade_config(saved)
    written_in = OmegaConf.select(saved, "paths.output_dir")
    if written_in and Path(written_in).resolve() != run_dir:
        relocate(saved, str(written_in), str(run_dir))
    for item in overrides:
        key, _, value = item.lstrip("+").partition("=")
        if key == "resume" or key.startswith("hydra."):
            continue
        if not key.startswith(RESUMABLE_OVERRIDES) or item.startswith("~"):
            raise ConfigError(
                f"{item!r} cannot change a resumed run: resume={cfg.resume} continues with the "
                f"settings saved in {run.resolved_config}. Allowed with resume: "
                "trainer.* (e.g. trainer.max_epochs=30), test, threads, callbacks.*, "
                "optuna_trial.* (optuna_trial.trial_id=null: report to no search). To train "
                f"other settings from these weights, start a new run with ckpt_path={ckpt}"
            )
        parsed = OmegaConf.from_dotlist([f"{key}={value}"])
        OmegaConf.update(saved, key, OmegaConf.select(parsed, key), force_add=True)
    saved.ckpt_path = str(ckpt)
    saved.resume = str(run_dir)
    if said := resumed_trial(saved):
        log.info(f"resume={cfg.resume}: {said}")
    # The MLflow / W&B runs it started go on, rather than new ones beside them (a damaged
    # metrics.json: new tracker runs, and the training still resumes).
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        continue_runs(saved, (run.read_metrics() or {}).get("tracking") or {})
    return saved
