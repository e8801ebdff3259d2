"""``resume=PATH``: continuing a finished run, and every bad resume as one clear error that
leaves the run untouched (in-process on copies of the session's short run)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from seqmnist.core.compat import ADDED_KEYS, MOVED_TARGETS
from seqmnist.jobs.resume import resume_config
from seqmnist.train import run
from tests.helpers import compose_config, copy_run, metrics_of


def resume(run_dir: Path | str, invocation: Path, *overrides: str) -> int:
    """``python -m seqmnist.train resume=RUN_DIR overrides`` in this process: exit status."""
    args = [f"resume={run_dir}", *overrides]
    status, _ = run(compose_config(*args, run_dir=invocation), args, multirun=False)
    return status


def test_resume_can_train_longer(trained_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(trained_run, tmp_path / "run")
    assert metrics_of(run_dir)["epochs"] == 1
    assert resume(run_dir, tmp_path / "more", "trainer.max_epochs=2") == 0
    assert metrics_of(run_dir)["epochs"] == 2 and metrics_of(run_dir)["max_epochs"] == 2


def test_a_run_saved_in_an_earlier_format_resumes(trained_run: Path, tmp_path: Path) -> None:
    """Run dirs from before seqmnist.data/models/training/runs name the old class paths, and
    lack the keys added since (seqmnist.core.compat)."""
    run_dir = copy_run(trained_run, tmp_path / "old")
    saved = run_dir / "resolved_config.yaml"
    text = saved.read_text()
    for old, new in MOVED_TARGETS.items():
        assert new in text or old == "seqmnist.data.SeqMNISTDataModule", new
        text = text.replace(new, old)
    saved.write_text(text)
    old_cfg = OmegaConf.load(saved)
    for key in ADDED_KEYS:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(old_cfg, parent) if parent else old_cfg
        del node[leaf]
    OmegaConf.save(old_cfg, saved)
    cfg = resume_config(compose_config(f"resume={run_dir}"), [f"resume={run_dir}"])
    assert cfg.model._target_ == "seqmnist.models.module.SeqClassifier"
    assert cfg.trainer.plugins[0]._target_ == "seqmnist.training.faults.AtomicCheckpointIO"
    assert {k: OmegaConf.select(cfg, k) for k in ADDED_KEYS} == ADDED_KEYS
    assert resume(run_dir, tmp_path / "inv", "trainer.max_epochs=2") == 0
    assert metrics_of(run_dir)["status"] == "completed" and metrics_of(run_dir)["epochs"] == 2


def _corrupt_last(run_dir: Path) -> None:
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 not really a zip")


@pytest.mark.parametrize(
    ("setup", "args", "expected"),
    [
        ("none", ["resume=/no/such/run"], "no such file or directory"),
        ("no_ckpt", [], "does not exist (the run stopped before its first checkpoint)"),
        ("no_config", [], "resolved_config.yaml is missing"),
        ("corrupt", [], "truncated or corrupt"),
        ("ok", ["hidden=64"], "'hidden=64' cannot change a resumed run"),
    ],
)
def test_bad_resume_is_one_clear_error(
    trained_run: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    setup: str,
    args: list[str],
    expected: str,
) -> None:
    run_dir = tmp_path / "run"
    if setup != "none":
        copy_run(trained_run, run_dir)
    if setup == "no_ckpt":
        for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
            ckpt.unlink()
    if setup == "no_config":
        (run_dir / "resolved_config.yaml").unlink()
    if setup == "corrupt":
        _corrupt_last(run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} if run_dir.exists() else {}
    target = args if setup == "none" else [f"resume={run_dir}", *args]
    with caplog.at_level(logging.ERROR, logger="seqmnist.train"):
        status, _ = run(compose_config(*target, run_dir=tmp_path / "invocation"), target, False)
    assert status == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert expected in error
    # The run being resumed is left exactly as it was.
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    assert not (tmp_path / "invocation" / "metrics.json").exists()


def test_resume_keeps_the_saved_settings(trained_run: Path) -> None:
    cfg = resume_config(
        compose_config(f"resume={trained_run}", "trainer.max_epochs=5"),
        [f"resume={trained_run}", "trainer.max_epochs=5"],
    )
    saved = OmegaConf.load(trained_run / "resolved_config.yaml")
    assert cfg.trainer.max_epochs == 5 and cfg.hidden == saved.hidden == 16
    assert cfg.ckpt_path == str((trained_run / "checkpoints" / "last.ckpt").resolve())
