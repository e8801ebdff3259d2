"""`seqmnist.train`: a run's files, metrics, reproducibility and errors (in-process on tiny
data), and the few things only a real process shows (exit codes, console, multiruns)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqmnist.core.errors import ConfigError
from seqmnist.inference.checkpoints import load_model
from seqmnist.train import run
from tests.helpers import FAST, compose_config, run_module, run_sweep, train_in_process


def tb_tags(run_dir: Path) -> set[str]:
    (tb_run,) = (run_dir / "tensorboard").iterdir()  # fit and test may write separate files
    acc = EventAccumulator(str(tb_run))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def run_in_process(root: Path, run_dir: Path, *overrides: str) -> int:
    """``python -m seqmnist.train`` as a single run, in this process: its exit status."""
    cfg = compose_config(f"data.root={root}", *FAST, *overrides, run_dir=run_dir)
    status, _ = run(cfg, list(overrides), multirun=False)
    return status


def test_run_writes_config_metrics_checkpoints_and_events(
    synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="seqmnist.train"):
        status = run_in_process(synthetic_root, run_dir, "cell=gru", "layers=2", "scheduler=cosine")
    assert status == 0
    assert (run_dir / "resolved_config.yaml").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/acc", "test/loss", "val/acc_best", "epochs", "train_seconds", "params"):
        assert metrics[key] is not None, key
    assert metrics["status"] == "completed" and metrics["epochs"] == 1
    assert metrics["cell"] == "gru" and metrics["layers"] == 2
    assert 0.0 <= metrics["test/acc"] <= 1.0
    ckpts = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in ckpts and len(ckpts) == 2
    assert Path(metrics["best_ckpt"]).is_file()
    # The TensorBoard run is named after its settings.
    assert [p.name for p in (run_dir / "tensorboard").iterdir()] == [
        "gru-2x16-drop0.0-adam-lr0.001-bs32-seed42"
    ]
    tags = tb_tags(run_dir)
    for tag in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_best",
        "test/acc",
        "hp_metric",
        "lr-Adam",
    ):
        assert tag in tags, (tag, tags)
    # One summary line with the test accuracy.
    summary = [r.getMessage() for r in caplog.records if "test_acc" in r.getMessage()]
    assert len(summary) == 1 and "gru 2x16" in summary[0]


def test_same_seed_same_metrics(synthetic_root: Path, tmp_path: Path) -> None:
    m = [train_in_process(synthetic_root, tmp_path / f"r{i}", "seed=3") for i in range(2)]
    for key in ("test/acc", "test/loss", "val/acc_best"):
        assert m[0][key] == m[1][key], key
    # What was returned is what was written.
    assert (
        json.loads((tmp_path / "r1" / "metrics.json").read_text())["test/acc"] == m[1]["test/acc"]
    )


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("layers=0", ["layers=0", "integer >= 1"]),
        ("hidden=-5", ["hidden=-5", "integer >= 1"]),
        ("dropout=1.5", ["dropout=1.5", "[0, 1)"]),
        ("data.sequence=patch data.step_pixels=5", ["data.step_pixels=5", "divide"]),
        ("trainer.precision=banana", ["trainer", "banana", "Fix:"]),
        ("model.anytime_loss=cubic", ["model.anytime_loss='cubic'", "'uniform', 'linear'"]),
        (
            "bidirectional=true model.anytime_loss=uniform",
            ["bidirectional", "model.anytime_loss=uniform", "Fix:"],
        ),
    ],
)
def test_bad_value_is_one_message_exit_2_and_nothing_written(
    synthetic_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    override: str,
    needles: list[str],
) -> None:
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.ERROR, logger="seqmnist.train"):
        status = run_in_process(synthetic_root, run_dir, *override.split())
    assert status == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert not list(run_dir.rglob("*.ckpt")) and not (run_dir / "metrics.json").exists()


def test_missing_data_is_one_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.ERROR, logger="seqmnist.train"):
        status = run_in_process(tmp_path / "empty", run_dir, "data.download=false")
    assert status == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert str(tmp_path / "empty" / "MNIST" / "raw") in error and "SEQMNIST_DATA_ROOT" in error
    # The run had started: it is marked failed, with the reason, and left no checkpoint.
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "failed" and "MNIST/raw" in record["error"]
    assert not list(run_dir.rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("cell=transformer", ["cell", "gru", "lstm", "rnn"]),
        ("optimizer=nope", ["optimizer", "adam", "rmsprop", "sgd"]),
    ],
)
def test_unknown_group_option_lists_the_options(override: str, needles: list[str]) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(override)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_gpu_on_a_machine_without_one_says_so(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from seqmnist.training.config import validate

    with pytest.raises(ConfigError, match="no CUDA GPU is visible.*use trainer=cpu"):
        validate(compose_config("trainer=gpu"))


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("layers=0", ["layers=0", "integer >= 1"]),
        ("cell=transformer", ["cell", "gru", "lstm", "rnn"]),
        ("trainer.precision=banana", ["trainer", "banana", "Fix:"]),
    ],
)
def test_bad_override_exits_2_without_a_traceback(
    synthetic_root: Path, tmp_path: Path, override: str, needles: list[str]
) -> None:
    run_dir = tmp_path / "run"
    proc = run_module(
        "seqmnist.train", f"data.root={synthetic_root}", f"hydra.run.dir={run_dir}", *FAST, override
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == (1 if override.startswith("cell=") else 2), out
    for needle in needles:
        assert needle in out, (needle, out)
    assert "Traceback" not in out and "Error in call to target" not in out
    assert not list(run_dir.rglob("*.ckpt")) and not (run_dir / "metrics.json").exists()


@pytest.mark.e2e
def test_multirun_makes_one_dir_per_job(synthetic_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_sweep("cell=lstm,gru", root=synthetic_root, sweep_dir=sweep)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (sweep / "results.md").is_file() and (sweep / "results.csv").is_file()
    jobs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert jobs == ["0", "1"]
    cells = [json.loads((sweep / j / "metrics.json").read_text())["cell"] for j in jobs]
    assert cells == ["lstm", "gru"]
    # The console: no Lightning advertisement in any job.
    assert "litlogger" not in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_failing_job_is_recorded_and_the_sweep_goes_on(
    synthetic_root: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    # Job 1 asks for more validation images than the file has: it fails inside fit().
    proc = run_sweep("data.val_size=100,100000", root=synthetic_root, sweep_dir=sweep)
    out = proc.stdout + proc.stderr
    ok = json.loads((sweep / "0" / "metrics.json").read_text())
    failed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert ok["status"] == "completed" and ok["test/acc"] is not None
    assert failed["status"] == "failed" and "data.val_size=100000" in failed["error"]
    assert "data.val_size=100000" in out
    # The sweep says how many failed, in its exit status and its report.
    assert proc.returncode == 1 and "1 failed" in out
    assert "failed" in (sweep / "results.md").read_text()


@pytest.mark.e2e
def test_help_and_cfg_job() -> None:
    proc = run_module("seqmnist.train", "--help")
    assert proc.returncode == 0 and "cell: gru, lstm, rnn" in proc.stdout
    proc = run_module("seqmnist.train", "--cfg", "job", "cell=gru")
    assert proc.returncode == 0 and "cell: gru" in proc.stdout


@pytest.mark.slow
@pytest.mark.realdata
def test_short_run_on_real_mnist(real_root: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        f"data.root={real_root}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=60",
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        run_dir=tmp_path / "real",
    )
    from seqmnist.train import train

    metrics = train(cfg)
    # 60 steps of the default LSTM-128 already reads digits far better than chance.
    assert metrics["test/acc"] > 0.5


@pytest.mark.parametrize(
    "switch", ["compile=true", "trainer.precision=bf16-mixed", "data.device_resident=true"]
)
def test_speed_switches_train_and_test_on_cpu(
    synthetic_root: Path, tmp_path: Path, switch: str
) -> None:
    m = train_in_process(synthetic_root, tmp_path / "run", switch, "trainer.max_epochs=2")
    assert m["status"] == "completed" and m["epochs"] == 2
    assert 0.0 <= m["test/acc"] <= 1.0 and m["test/loss"] == m["test/loss"]  # finite, not NaN
    # The saved weights keep their plain names (evaluate/predict load them).
    load_model(tmp_path / "run")
