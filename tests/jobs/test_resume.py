"""``resume=PATH``: continuing a finished run, and every bad resume as one clear error that
leaves the run untouched (in-process on copies of the session's short run)."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from seqmnist.core.compat import ADDED_KEYS, MOVED_TARGETS
from seqmnist.core.internals import optuna_trial_id
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


def test_a_run_resumed_after_its_last_validation_still_reports_its_best(
    trained_run: Path, tmp_path: Path
) -> None:
    """A job stopped after its last validation (a SLURM time limit during the test, say)
    resumes from a checkpoint with no epoch left to run: its figures come from it."""
    run_dir = copy_run(trained_run, tmp_path / "run")
    before = metrics_of(run_dir)
    assert before["val/acc_best"] is not None
    assert resume(run_dir, tmp_path / "again") == 0
    after = metrics_of(run_dir)
    assert after["epochs"] == before["epochs"] and after["status"] == "completed"
    assert after["val/acc_best"] == before["val/acc_best"]
    assert after["test/acc"] == before["test/acc"]


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


def _trial_run(trained_run: Path, to: Path, state: str) -> tuple[Path, optuna.Study, int]:
    """A copy of ``trained_run`` that was trial 0 of a study whose trial is now ``state``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_dir = copy_run(trained_run, to / "run")
    url = f"sqlite:///{to / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    trial = study.ask()
    if state == "complete":
        study.tell(trial, 0.5)
    saved = OmegaConf.load(run_dir / "resolved_config.yaml")
    saved.optuna_trial.update(
        storage=url, study_name="s", trial_id=optuna_trial_id(trial), number=trial.number
    )
    OmegaConf.save(saved, run_dir / "resolved_config.yaml")
    return run_dir, study, optuna_trial_id(trial)


@pytest.mark.parametrize("state", ["complete", "running"])
def test_a_search_trial_resumes_and_says_whether_it_still_reports(
    trained_run: Path, tmp_path: Path, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Resuming a run that was a trial crashed at its first validation
    (pruning reported into a finished trial). A closed trial is let go; a running one (a job
    requeued at its time limit) goes on reporting its epochs."""
    run_dir, study, _ = _trial_run(trained_run, tmp_path, state)
    caplog.set_level(logging.INFO, logger="seqmnist.resume")
    assert resume(run_dir, tmp_path / "inv", "trainer.max_epochs=2") == 0
    assert metrics_of(run_dir)["status"] == "completed" and metrics_of(run_dir)["epochs"] == 2
    (trial,) = study.get_trials()
    if state == "complete":
        assert "the study has closed it (COMPLETE); this run no longer reports" in caplog.text
        assert trial.intermediate_values == {}
    else:
        assert "still runs: this run reports to it" in caplog.text
        assert list(trial.intermediate_values) == [1]  # epoch 1, the resumed one


def test_a_trial_whose_storage_is_gone_resumes_unattached(
    trained_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir, _, _ = _trial_run(trained_run, tmp_path, "running")
    (tmp_path / "optuna.db").unlink()
    caplog.set_level(logging.INFO, logger="seqmnist.resume")
    assert resume(run_dir, tmp_path / "inv", "trainer.max_epochs=2") == 0
    assert "its storage could not be read" in caplog.text and "no longer reports" in caplog.text
    # And by hand: optuna_trial.* may be given with resume=.
    cfg = resume_config(
        compose_config(f"resume={run_dir}"), [f"resume={run_dir}", "optuna_trial.trial_id=null"]
    )
    assert cfg.optuna_trial.trial_id is None
