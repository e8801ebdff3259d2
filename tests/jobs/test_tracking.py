"""MLflow and W&B tracking (logger=mlflow, logger=wandb): what lands in each tracker's store
after a tiny synthetic run, read back through the tracker's own reader."""

from __future__ import annotations

import json
import re
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seqmnist.core.errors import ConfigError
from seqmnist.jobs import tracking
from tests.helpers import compose_config, metrics_of, run_module, train_in_process

mlflow = pytest.importorskip("mlflow", reason="the tracking extra: make install-extras")
wandb = pytest.importorskip("wandb", reason="the tracking extra: make install-extras")


def mlflow_runs(log_dir: Path) -> Any:
    mlflow.set_tracking_uri(f"sqlite:///{log_dir / 'mlflow' / 'mlflow.db'}")
    return mlflow.search_runs(search_all_experiments=True)


def test_mlflow_holds_params_metrics_and_artifacts(synthetic_root: Path, tmp_path: Path) -> None:
    run_dir, log_dir = tmp_path / "run", tmp_path / "outputs"
    metrics = train_in_process(
        synthetic_root, run_dir, "logger=[tensorboard,mlflow]", f"paths.log_dir={log_dir}"
    )
    assert metrics["status"] == "completed"
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*")), "the list kept both"

    runs = mlflow_runs(log_dir)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    # The same flat settings as TensorBoard's HParams tab.
    assert (run["params.cell"], run["params.hidden"], run["params.seed"]) == ("lstm", "16", "42")
    assert run["params.params"] == str(metrics["params"])
    assert run["metrics.test/acc"] == pytest.approx(metrics["test/acc"])
    assert run["metrics.val/acc_best"] == pytest.approx(metrics["val/acc_best"])
    assert run["tags.run_dir"] == str(run_dir.resolve())

    client = mlflow.tracking.MlflowClient()
    assert client.get_experiment(run["experiment_id"]).name == "train"
    # Every training step (log_every_n_steps=1, 5 batches) and the epoch's mean.
    assert len(client.get_metric_history(run["run_id"], "train/loss")) == 5
    assert len(client.get_metric_history(run["run_id"], "train/loss_epoch")) == 1
    ckpts = [a.path for a in client.list_artifacts(run["run_id"], "checkpoints")]
    assert ckpts == [f"checkpoints/{Path(metrics['best_ckpt']).name}"]
    local = client.download_artifacts(run["run_id"], "results/metrics.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == metrics_of(run_dir)


def wandb_records(run_file: Path) -> Iterator[Any]:
    """The records of a W&B run file (.wandb): LevelDB's log format (32 KiB blocks of
    chunks with a 7-byte header) after a 7-byte W&B header, each record a protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf = run_file.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def finished_records(run_file: Path, timeout: float = 30.0) -> list[Any]:
    """The run file's records once W&B's writer process has written its last (``exit``)
    record: ``finish()`` can return while that process still writes."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(run_file))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{run_file} has no exit record after {timeout} s"
        time.sleep(0.2)


@pytest.fixture
def no_wandb_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no wandb settings
    (tmp_path / "home").mkdir()


def test_wandb_runs_offline_and_keeps_the_history(
    synthetic_root: Path, tmp_path: Path, no_wandb_login: None
) -> None:
    run_dir = tmp_path / "run"
    metrics = train_in_process(synthetic_root, run_dir, "logger=wandb")
    assert metrics["status"] == "completed"
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = finished_records(run_file)
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    steps = [h for h in history if "train/loss" in h]
    assert len(steps) == 5
    (test,) = [h for h in history if "test/acc" in h]
    assert test["test/acc"] == pytest.approx(metrics["test/acc"])
    config = {
        item.key: json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
    }
    assert config["cell"] == "lstm" and config["hidden"] == 16
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert [a.type for a in artifacts] == ["model"]
    assert [e.path for a in artifacts for e in a.manifest.contents] == [
        Path(metrics["best_ckpt"]).name
    ]
    files = run_file.parent / "files"
    assert json.loads((files / "metrics.json").read_text()) == metrics_of(run_dir)


def test_wandb_goes_online_only_with_a_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_wandb_login: None
) -> None:
    assert tracking.wandb_offline()
    netrc = tmp_path / "home" / ".netrc"
    netrc.write_text("machine api.wandb.ai login user password k\n")
    netrc.chmod(0o600)
    assert not tracking.wandb_offline()  # `wandb login` wrote this
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert not tracking.wandb_offline()
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's own choice wins
    assert tracking.wandb_offline()
    assert compose_config("logger=wandb").logger.wandb.offline is True


def test_a_missing_tracker_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, package in (("mlflow", "mlflow"), ("wandb", "wandb")):
        monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
        cfg = compose_config(f"logger={name}")
        with pytest.raises(ConfigError, match="make install-extras"):
            tracking.prepare(cfg.logger)


def test_logger_list_and_many_compose() -> None:
    both = compose_config("logger=[tensorboard,mlflow]").logger
    assert sorted(both) == ["mlflow", "tensorboard"]
    assert sorted(compose_config("logger=many").logger) == ["csv", "tensorboard"]
    uri = compose_config("logger=mlflow", "logger.mlflow.tracking_uri=http://h:5000").logger
    assert uri.mlflow.tracking_uri == "http://h:5000"
    assert uri.mlflow.artifact_location is None  # a server keeps the artifacts itself


def test_mlflows_own_variable_picks_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    local = compose_config("logger=mlflow").logger.mlflow
    assert local.tracking_uri.startswith("sqlite:///") and local.tracking_uri.endswith(".db")
    assert local.artifact_location.endswith("/mlflow/artifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    served = compose_config("logger=mlflow").logger.mlflow
    assert served.tracking_uri == "http://127.0.0.1:5000" and served.artifact_location is None


def test_a_tracking_server_that_is_down_stops_the_run_with_the_fix() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = compose_config("logger=mlflow", f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="does not answer.*make cluster-up.*MLFLOW_TRACKING_URI"):
        tracking.prepare(cfg.logger)


def test_a_job_that_loses_the_race_to_create_the_experiment_finds_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs of a sweep both see no experiment; the second one's creation is refused.
    It must go on into the experiment made, not lose its params (seen on a server)."""
    cfg = compose_config(
        "logger=mlflow", f"logger.mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"
    )
    tracking.prepare(cfg.logger)  # the first job
    client = mlflow.tracking.MlflowClient(tracking_uri=cfg.logger.mlflow.tracking_uri)
    made = client.get_experiment_by_name(cfg.logger.mlflow.experiment_name)
    assert made is not None
    # The second job looked before the first one created it.
    monkeypatch.setattr(mlflow.tracking.MlflowClient, "get_experiment_by_name", lambda *a: None)
    tracking.prepare(cfg.logger)
    monkeypatch.undo()
    assert [e.experiment_id for e in client.search_experiments() if e.name != "Default"] == [
        made.experiment_id
    ]


def test_a_tracker_that_refuses_the_params_stops_the_run(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a resumed run's changed param is let pass (MLflow keeps the first value)."""
    from mlflow.exceptions import MlflowException

    def refused(*args: Any, **kwargs: Any) -> None:
        raise MlflowException("the server is read-only", error_code="PERMISSION_DENIED")

    monkeypatch.setattr("lightning.pytorch.loggers.MLFlowLogger.log_hyperparams", refused)
    with pytest.raises(MlflowException, match="read-only"):
        train_in_process(
            synthetic_root, tmp_path / "run", "logger=mlflow", f"paths.log_dir={tmp_path}"
        )


@pytest.mark.e2e
@pytest.mark.slow
def test_a_sweeps_jobs_share_one_experiment_named_after_it(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Two jobs started together: one experiment, created once, both runs in it."""
    sweep = tmp_path / "outputs" / "train" / "multiruns" / "sweep-a"
    proc = run_module(
        "seqmnist.train",
        "-m",
        f"data.root={synthetic_root}",
        "cell=lstm,gru",
        "logger=mlflow",
        f"paths.log_dir={tmp_path / 'outputs'}",
        f"hydra.sweep.dir={sweep}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "callbacks.model_summary=null",
        "hidden=8",
        "data.val_size=100",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(tmp_path / "outputs")
    assert sorted(runs["params.cell"]) == ["gru", "lstm"]
    assert set(runs["status"]) == {"FINISHED"}
    client = mlflow.tracking.MlflowClient()
    names = {e.name for e in client.search_experiments()} - {"Default"}  # MLflow's own
    assert names == {"train/sweep-a"}
    sweep_experiment = client.get_experiment_by_name("train/sweep-a")
    assert set(runs["experiment_id"]) == {sweep_experiment.experiment_id}


def test_a_resumed_run_continues_its_mlflow_and_wandb_runs(
    synthetic_root: Path, tmp_path: Path, no_wandb_login: None
) -> None:
    from seqmnist.train import run

    run_dir, log_dir = tmp_path / "run", tmp_path / "outputs"
    train_in_process(synthetic_root, run_dir, "logger=[mlflow,wandb]", f"paths.log_dir={log_dir}")
    first = metrics_of(run_dir)["tracking"]
    args = [f"resume={run_dir}", "trainer.max_epochs=2"]
    status, _ = run(compose_config(*args, run_dir=tmp_path / "inv"), args, multirun=False)
    assert status == 0 and metrics_of(run_dir)["epochs"] == 2
    assert metrics_of(run_dir)["tracking"] == first

    runs = mlflow_runs(log_dir)
    assert list(runs["run_id"]) == [first["mlflow"]] and runs.iloc[0]["status"] == "FINISHED"
    history = mlflow.tracking.MlflowClient().get_metric_history(first["mlflow"], "val/acc")
    assert len(history) == 2  # one validation per epoch, both in the one run
    # W&B: the resumed run writes under the same run id (offline-run-<time>-<id>[-N] dirs,
    # which `wandb sync` uploads into the one run).
    dirs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2
    assert {re.match(r"offline-run-\d{8}_\d{6}-([^-]+)", p.name).group(1) for p in dirs} == {
        first["wandb"]
    }


def test_a_failed_run_closes_its_tracker_runs(
    synthetic_root: Path, tmp_path: Path, no_wandb_login: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that fails (a search's trial, say) ends its MLflow and W&B runs, so the next
    run in the same process does not log into them."""
    from seqmnist import train as train_module

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(train_module, "fit", broken)
    log_dir = tmp_path / "outputs"
    with pytest.raises(RuntimeError, match="boom"):
        train_in_process(
            synthetic_root, tmp_path / "run", "logger=[mlflow,wandb]", f"paths.log_dir={log_dir}"
        )
    assert list(mlflow_runs(log_dir)["status"]) == ["FAILED"]
    assert wandb.run is None  # finished: the next WandbLogger starts a run of its own


def test_experiment_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hydra.types import RunMode

    class Sweep:
        mode = RunMode.MULTIRUN

        class sweep:  # noqa: N801
            dir = str(tmp_path / "outputs" / "train" / "multiruns" / "2026-12-02_10-00-00_1")

    monkeypatch.setattr(tracking.HydraConfig, "get", staticmethod(lambda: Sweep))
    assert tracking.experiment_name("train", str(tmp_path / "outputs")) == (
        "train/2026-12-02_10-00-00_1"
    )
    Sweep.sweep.dir = "/scratch/me/lr"  # a sweep dir of the user's own: the task and its name
    assert tracking.experiment_name("train", str(tmp_path / "outputs")) == "train/lr"
    Sweep.mode = RunMode.RUN
    assert tracking.experiment_name("train", str(tmp_path / "outputs")) == "train"


def test_a_sweep_dir_of_ones_own_is_named_for_the_ui_and_tagged_with_its_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside the log dir: ``train/<sweep dir name>`` in the MLflow UI's list, the whole path
    as the experiment's ``sweep_dir`` tag."""
    from hydra.types import RunMode

    class Sweep:
        mode = RunMode.MULTIRUN

        class sweep:  # noqa: N801
            dir = str(tmp_path / "scratch" / "me" / "lr")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(
        "logger=mlflow", f"logger.mlflow.tracking_uri={uri}", f"paths.log_dir={tmp_path / 'out'}"
    )
    monkeypatch.setattr(tracking.HydraConfig, "get", staticmethod(lambda: Sweep))
    tracking.prepare(cfg.logger)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    made = client.get_experiment_by_name("train/lr")
    assert made is not None and made.tags["sweep_dir"] == Sweep.sweep.dir
    caplog.set_level("WARNING", "seqmnist.tracking")
    tracking.prepare(cfg.logger)  # the sweep's next job: no warning
    assert "holds the runs" not in caplog.text
    Sweep.sweep.dir = str(tmp_path / "scratch" / "you" / "lr")  # another sweep, the same name
    tracking.prepare(cfg.logger)
    first = tmp_path / "scratch" / "me" / "lr"
    assert f"experiment train/lr holds the runs of the sweep in {first}" in caplog.text
