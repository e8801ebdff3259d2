"""`python -m seqmnist.train` end to end, as a user runs it (subprocesses, tiny data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import FAST, PROJECT_ROOT, run_module, run_sweep


def train(*overrides: str, root: Path, run_dir: Path, env: dict | None = None):
    return run_module(
        "seqmnist.train",
        f"data.root={root}",
        f"hydra.run.dir={run_dir}",
        *FAST,
        *overrides,
        cwd=PROJECT_ROOT,
        env=env,
    )


def tb_tags(run_dir: Path) -> set[str]:
    (run,) = (run_dir / "tensorboard").iterdir()  # fit and test may write separate files
    acc = EventAccumulator(str(run))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_run_writes_config_metrics_checkpoints_and_events(
    synthetic_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    proc = train("cell=gru", "layers=2", "scheduler=cosine", root=synthetic_root, run_dir=run_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (run_dir / ".hydra" / "config.yaml").is_file()
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
    summary = [ln for ln in proc.stdout.splitlines() if "test_acc" in ln]
    assert len(summary) == 1 and "gru 2x16" in summary[0]


def test_same_seed_same_metrics(synthetic_root: Path, tmp_path: Path) -> None:
    runs = [train("seed=3", root=synthetic_root, run_dir=tmp_path / f"r{i}") for i in range(2)]
    assert all(p.returncode == 0 for p in runs), runs[0].stderr
    m = [json.loads((tmp_path / f"r{i}" / "metrics.json").read_text()) for i in range(2)]
    for key in ("test/acc", "test/loss", "val/acc_best"):
        assert m[0][key] == m[1][key], key


def test_multirun_makes_one_dir_per_job(synthetic_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_sweep("cell=lstm,gru", root=synthetic_root, sweep_dir=sweep)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (sweep / "results.md").is_file() and (sweep / "results.csv").is_file()
    jobs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert jobs == ["0", "1"]
    cells = [json.loads((sweep / j / "metrics.json").read_text())["cell"] for j in jobs]
    assert cells == ["lstm", "gru"]


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


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("cell=transformer", ["cell", "gru", "lstm", "rnn"]),
        ("optimizer=nope", ["optimizer", "adam", "rmsprop", "sgd"]),
        ("layers=0", ["layers=0", "integer >= 1"]),
        ("hidden=-5", ["hidden=-5", "integer >= 1"]),
        ("dropout=1.5", ["dropout=1.5", "[0, 1)"]),
        ("data.sequence=patch data.step_pixels=5", ["data.step_pixels=5", "divide"]),
    ],
)
def test_bad_override_fails_cleanly(
    synthetic_root: Path, tmp_path: Path, override: str, needles: list[str]
) -> None:
    run_dir = tmp_path / "run"
    proc = train(*override.split(), root=synthetic_root, run_dir=run_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for needle in needles:
        assert needle in out, (needle, out)
    assert "Traceback" not in out
    assert not list(run_dir.rglob("*.ckpt")) and not (run_dir / "metrics.json").exists()


def test_missing_data_is_one_clear_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = train("data.download=false", root=tmp_path / "empty", run_dir=run_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert str(tmp_path / "empty" / "MNIST" / "raw") in out and "SEQMNIST_DATA_ROOT" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(synthetic_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    proc = train("trainer=ddp", "trainer.devices=2", root=synthetic_root, run_dir=run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["test/acc"] is not None
    # Rank 0 alone writes: one best checkpoint plus last.ckpt, one summary line.
    assert len(list((run_dir / "checkpoints").glob("*.ckpt"))) == 2
    assert (proc.stdout + proc.stderr).count("test_acc") == 1


def test_help_and_cfg_job() -> None:
    proc = run_module("seqmnist.train", "--help", cwd=PROJECT_ROOT)
    assert proc.returncode == 0 and "cell: gru, lstm, rnn" in proc.stdout
    proc = run_module("seqmnist.train", "--cfg", "job", "cell=gru", cwd=PROJECT_ROOT)
    assert proc.returncode == 0 and "cell: gru" in proc.stdout


@pytest.mark.slow
@pytest.mark.realdata
def test_short_run_on_real_mnist(real_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "real"
    proc = run_module(
        "seqmnist.train",
        f"data.root={real_root}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=60",
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        cwd=PROJECT_ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # 60 steps of the default LSTM-128 already reads digits far better than chance.
    assert metrics["test/acc"] > 0.5


@pytest.mark.parametrize(
    "switch", ["compile=true", "trainer.precision=bf16-mixed", "data.device_resident=true"]
)
def test_speed_switches_train_and_test_on_cpu(
    synthetic_root: Path, tmp_path: Path, switch: str
) -> None:
    proc = train(switch, "trainer.max_epochs=2", root=synthetic_root, run_dir=tmp_path / "run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "completed" and m["epochs"] == 2
    assert 0.0 <= m["test/acc"] <= 1.0 and m["test/loss"] == m["test/loss"]  # finite, not NaN
    # The saved weights keep their plain names (evaluate/predict load them).
    from seqmnist.checkpoint import load_model

    load_model(tmp_path / "run")
