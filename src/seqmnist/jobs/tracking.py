"""Experiment trackers beside TensorBoard: MLflow and Weights & Biases, through Lightning's own
``MLFlowLogger`` and ``WandbLogger`` (conf/logger/mlflow.yaml, conf/logger/wandb.yaml).

The loggers carry the params and the per-step, per-epoch and test metrics themselves (every
``self.log`` reaches every logger). What is done here: name the experiment after the sweep,
keep W&B offline unless an API key is set up, create the MLflow experiment once when a
sweep's jobs start together, and hand each tracker the run's best checkpoint and
``metrics.json`` when the run ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import netrc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import Logger, MLFlowLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from seqmnist.core.errors import ConfigError
from seqmnist.core.internals import wandb_run_started
from seqmnist.core.rundir import CHECKPOINTS

log = logging.getLogger("seqmnist.tracking")

SQLITE = "sqlite:///"
SWEEP_DIR_TAG = "sweep_dir"  # an MLflow experiment's tag: the sweep dir it was made for


def sweep_dir() -> Path | None:
    """This multirun's sweep dir, absolute; None in a single run."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # composed outside a Hydra app (tests, a rank's resolved config)
        return None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(str(hydra_cfg.sweep.dir)).expanduser().resolve()


# -- names and modes, as config resolvers (seqmnist.jobs.resolvers) --------------------
def experiment_name(task_name: str, log_dir: str = "outputs") -> str:
    """The tracker's experiment (W&B: group) of this run: the task for a single run, the
    sweep for a multirun, so one sweep's jobs are compared in one place. A sweep under the
    log dir is named by its path there, less ``multiruns`` (``train/2026-12-02_10-00-00_1``);
    one elsewhere by the task and the sweep dir's name (``train/lr``), as a user looks for it
    in the MLflow UI's list; its whole path is the experiment's ``sweep_dir`` tag."""
    sweep = sweep_dir()
    if sweep is None:
        return task_name
    try:
        inside = sweep.relative_to(Path(log_dir).expanduser().resolve())
    except ValueError:
        return f"{task_name}/{sweep.name}"
    return "/".join(p for p in inside.parts if p != "multiruns") or task_name


def wandb_offline() -> bool:
    """Whether W&B runs offline: yes unless an API key is set up (``WANDB_API_KEY`` or
    ``wandb login``'s netrc entry), so a run never blocks on a login prompt. A ``WANDB_MODE``
    the user set is obeyed."""
    mode = os.environ.get("WANDB_MODE")
    if mode:  # online, offline, dryrun or disabled: wandb.init reads it itself
        return mode in ("offline", "dryrun")
    if os.environ.get("WANDB_API_KEY"):
        return False
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    try:
        return netrc.netrc().authenticators(host) is None
    except FileNotFoundError:
        return True
    except (netrc.NetrcParseError, OSError) as e:
        log.warning(f"W&B runs offline: ~/.netrc could not be read ({e}).")
        return True


def absolute(path: str) -> str:
    """``path`` made absolute: a tracker's files must not depend on the job's working dir."""
    return str(Path(path).expanduser().resolve())


def served(uri: str) -> bool:
    """Whether an MLflow tracking URI names a server (which keeps the artifacts itself)."""
    return urlparse(str(uri)).scheme in ("http", "https")


def artifact_location(tracking_uri: str, log_dir: str) -> str | None:
    """Where a new MLflow experiment keeps its files: beside a local database, under
    ``log_dir``; on a server, wherever the server says (None)."""
    return None if served(tracking_uri) else f"{absolute(log_dir)}/mlflow/artifacts"


def check_server(uri: str, timeout: float = 10) -> None:
    """A tracking server that does not answer stops the run before it starts (MLflow's
    client would retry each call for minutes)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(
            f"the MLflow tracking server at {uri} does not answer ({reason}). Fix: start it "
            "(make cluster-up for the local one, then source outputs/cluster/env.sh), or "
            "unset MLFLOW_TRACKING_URI to log into the SQLite database under outputs/."
        ) from None


# -- before the run ---------------------------------------------------------------------
@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _chosen(logger_cfg: DictConfig | None, name: str) -> DictConfig | None:
    node = (logger_cfg or {}).get(name)
    return node if node and "_target_" in node else None


def prepare(logger_cfg: DictConfig | None) -> None:
    """Before the loggers are built: the chosen trackers' packages, and the MLflow database
    and experiment.

    A tracker chosen without its package stops the run here with the fix. The jobs of a
    parallel sweep start together, and each would otherwise create the SQLite schema and
    the sweep's experiment at the same moment (one of them then fails on a unique-name
    error): one job at a time does it here, under a lock beside the database. A server
    refuses the second creation of a name (RESOURCE_ALREADY_EXISTS) to whichever job comes
    second, on another machine perhaps: that job finds the experiment made.
    """
    for name in ("mlflow", "wandb"):
        if _chosen(logger_cfg, name) is not None and importlib.util.find_spec(name) is None:
            raise ConfigError(
                f"logger={name} needs the {name} package, an optional extra. Fix: make "
                "install-extras (or pip install -e '.[tracking]')."
            )
    node = _chosen(logger_cfg, "mlflow")
    uri = str(node.get("tracking_uri") or "") if node is not None else ""
    if served(uri):
        check_server(uri)
        _create_experiment(uri, node)
    elif uri.startswith(SQLITE):
        db = Path(uri[len(SQLITE) :])
        with _file_lock(db.with_name(db.name + ".lock")):
            _create_experiment(uri, node)  # the client creates or upgrades the schema


def _create_experiment(uri: str, node: DictConfig) -> None:
    """The run's experiment, made unless it exists (by another job of the sweep, maybe just
    now: the MLFlowLogger would then lose the race and, with it, the run's params)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = str(node.experiment_name)
    sweep = sweep_dir()
    made = client.get_experiment_by_name(name)
    if made is not None:
        # Two sweep dirs of one name (/scratch/a/lr, /scratch/b/lr) share the experiment.
        theirs = made.tags.get(SWEEP_DIR_TAG)
        if sweep is not None and theirs and theirs != str(sweep):
            log.warning(
                f"MLflow experiment {name} holds the runs of the sweep in {theirs}; this "
                f"sweep's ({sweep}) join them. Fix: another name for the sweep dir."
            )
        return
    tags = {SWEEP_DIR_TAG: str(sweep)} if sweep is not None else None
    try:
        client.create_experiment(name, artifact_location=node.get("artifact_location"), tags=tags)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def run_ids(loggers: list[Logger]) -> dict[str, str]:
    """Each tracker's run id, kept in ``metrics.json`` so ``resume=`` continues that run."""
    ids: dict[str, str] = {}
    for lg in loggers:
        if isinstance(lg, MLFlowLogger) and lg.run_id:
            ids["mlflow"] = str(lg.run_id)
        elif isinstance(lg, WandbLogger):
            ids["wandb"] = str(lg.version)
    return ids


def continue_runs(cfg: DictConfig, ids: dict[str, str]) -> None:
    """A resumed run logs into the tracker runs it started (in place, on its saved config)."""
    logger = cfg.get("logger") or {}
    if ids.get("mlflow") and (logger.get("mlflow") or {}).get("_target_"):
        OmegaConf.update(cfg, "logger.mlflow.run_id", ids["mlflow"], force_add=True)
    if ids.get("wandb") and (logger.get("wandb") or {}).get("_target_"):
        OmegaConf.update(cfg, "logger.wandb.id", ids["wandb"], force_add=True)
        OmegaConf.update(cfg, "logger.wandb.resume", "allow", force_add=True)


def log_settings(loggers: list[Logger], settings: dict[str, Any]) -> None:
    """Each logger's hyper-parameters. A resumed MLflow run keeps the params it was started
    with: MLflow refuses to change a param (``resume=RUN trainer.max_epochs=30``). Any other
    failure stops the run: a tracked run without its params is no use for comparison."""
    for lg in loggers:
        try:
            lg.log_hyperparams(settings)
        except Exception as e:
            if not (isinstance(lg, MLFlowLogger) and _param_changed(e)):
                raise
            log.warning(f"MLflow keeps the params this run started with: {e}")


def _param_changed(e: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(e, MlflowException) and e.error_code == "INVALID_PARAMETER_VALUE"


def _end_wandb_run(lg: WandbLogger, exit_code: int = 0) -> None:
    """Flush and end a started W&B run: an offline run's directory is complete once the
    command ends, and the next run in this process (a search's next trial) starts its own."""
    if wandb_run_started(lg):
        lg.experiment.finish(exit_code=exit_code)


def close(loggers: list[Logger], status: str) -> None:
    """Mark the trackers' runs as ended when the run stops early (``failed`` or ``killed``),
    so the next run in this process (a search's next trial) does not log into them."""
    for lg in loggers:
        try:
            if isinstance(lg, MLFlowLogger):
                lg.finalize("failed" if status == "failed" else "KILLED")
            elif isinstance(lg, WandbLogger):
                _end_wandb_run(lg, exit_code=1 if status == "failed" else 0)
        except Exception as e:  # the run's own error is the one to report
            log.warning(f"{type(lg).__name__}: could not close the run: {e}")


# -- after the run ----------------------------------------------------------------------
def _mlflow_publish(lg: MLFlowLogger, files: dict[str, Path]) -> None:
    for folder, path in files.items():
        lg.experiment.log_artifact(lg.run_id, str(path), artifact_path=folder)


def _wandb_publish(lg: WandbLogger, files: dict[str, Path]) -> None:
    import wandb

    run = lg.experiment
    if CHECKPOINTS in files:
        # A model artifact, as WandbLogger(log_model=True) would make, of the best checkpoint.
        model = wandb.Artifact(f"model-{run.id}", type="model")
        model.add_file(str(files[CHECKPOINTS]))
        run.log_artifact(model, aliases=["best"])
    if "results" in files:
        run.save(str(files["results"]), base_path=str(files["results"].parent), policy="now")


def publish(loggers: list[Logger], best_ckpt: str | None, metrics_file: Path) -> None:
    """Give each tracker the run's best checkpoint and ``metrics.json``, then end its W&B run
    (rank 0 only)."""
    files: dict[str, Path] = {}  # artifact folder (named as in the run dir) -> file
    if best_ckpt and Path(best_ckpt).is_file():
        files[CHECKPOINTS] = Path(best_ckpt)
    if metrics_file.is_file():
        files["results"] = metrics_file
    for lg in loggers:
        try:
            if isinstance(lg, MLFlowLogger):
                _mlflow_publish(lg, files)
            elif isinstance(lg, WandbLogger):
                try:
                    _wandb_publish(lg, files)
                finally:
                    _end_wandb_run(lg)
        except Exception as e:  # the run itself is done and saved: say, don't fail
            log.warning(f"{type(lg).__name__}: could not upload the run's files: {e}")
