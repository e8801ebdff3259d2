"""seqmnist.bench: runs both paths on tiny data and reports figures (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seqmnist.bench import cli as bench
from seqmnist.bench import throughput
from tests.helpers import compose_config


def test_macs_per_sample_counts_every_gate_gemm() -> None:
    c = throughput.BenchConfig("x", "gru", 2, 10, 8)
    # layer 1: 28 steps x 3 gates x 10 x (28 + 10); layer 2: input is the hidden state.
    assert throughput.macs_per_sample(c) == 28 * 3 * 10 * 38 + 28 * 3 * 10 * 20 + 10 * 10


def small_bench(root: Path, out: Path, samples: int, *args: str) -> None:
    """``make bench`` on the synthetic data: one round of ``samples`` samples, 100 held out."""
    bench.main(
        [
            "--root",
            str(root),
            "--val-size",
            "100",
            "--rounds",
            "1",
            "--samples",
            str(samples),
            *args,
            "--out",
            str(out),
        ]
    )


def test_bench_writes_json_table_and_ratio_line(
    synthetic_root: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "bench.json"
    small_bench(
        synthetic_root,
        out,
        640,
        "--configs",
        "lstm128-bs128",
        "--run-rounds",
        "0",
        "--augment",
        "affine",
    )
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out.read_text())
    (row,) = report["results"]
    # The augmentation row: the default config without and with augment=affine, paired.
    aug = report["augment"]
    assert aug["augment"]["rotate"] == 10.0 and aug["augment"]["elastic_alpha"] == 0.0
    (without,), (with_,) = aug["without_rounds"], aug["with_rounds"]
    assert abs(aug["ratio"] - with_ / without) < 2e-3
    assert aug["epoch_seconds_without"] == pytest.approx(500 / without, abs=0.006)  # 500 images
    assert any("+ augment=affine" in ln and "s epoch" in ln for ln in lines)
    assert row["cell"] == "lstm" and row["batch_size"] == 128
    assert row["plain_samples_per_s"] > 0 and row["lightning_samples_per_s"] > 0
    (plain,), (light,) = row["plain_rounds"], row["lightning_rounds"]  # one round: its ratio
    assert abs(row["ratio"] - light / plain) < 2e-3
    assert row["efficiency_vs_matmul"] > 0
    assert any(ln.startswith("| lstm128-bs128") for ln in lines)
    assert lines[-1] == f"bench: step/plain = {row['ratio']:.3f}"
    # The default row: the path as chosen here against plain float32 nn.LSTM.
    assert row["precision"] == "auto" and row["plain_precision"] == "32-true"


def test_switch_rows_run_both_paths_with_the_switch_on(
    synthetic_root: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "bench.json"
    args = ["--root", str(synthetic_root), "--val-size", "100", "--rounds", "1"]
    args += [
        "--samples",
        "256",
        "--switches",
        "--configs",
        "lstm128-bs128 bf16",
        "--run-rounds",
        "0",
    ]
    bench.main([*args, "--out", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert row["precision"] == "bf16-mixed" and not row["compile"]
    assert row["plain_samples_per_s"] > 0 and row["lightning_samples_per_s"] > 0
    assert "| lstm128-bs128 bf16-mixed |" in capsys.readouterr().out


@pytest.mark.e2e
def test_whole_run_row_times_the_entry_point_against_the_plain_script(
    synthetic_root: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "bench.json"
    small_bench(synthetic_root, out, 256, "--configs", "lstm128-bs128 (", "--run-rounds", "1")
    lines = capsys.readouterr().out.strip().splitlines()
    whole = json.loads(out.read_text())["whole_run"]
    assert whole["samples"] == 500 and whole["epochs"] == 1  # 600 images, 100 for validation
    (plain,), (run,) = whole["plain_rounds"], whole["run_rounds"]
    assert plain > 0 and run > 0 and abs(whole["ratio"] - run / plain) < 2e-3
    step_ratio = json.loads(out.read_text())["results"][0]["ratio"]
    # The step ratio's line stays, and the whole-run ratio's line follows it.
    assert lines[-2:] == [
        f"bench: step/plain = {step_ratio:.3f}",
        f"bench: run/plain = {whole['ratio']:.3f}",
    ]


def test_the_plain_script_trains_and_validates(synthetic_root: Path, capsys) -> None:
    from seqmnist.bench import plain_script

    plain_script.main(["--root", str(synthetic_root), "--epochs", "2", "--val-size", "100"])
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 1000 and result["train_seconds"] > 0
    assert 0.0 <= result["val_acc"] <= 1.0


def test_the_plain_script_runs_the_fast99_recipe(synthetic_root: Path, capsys) -> None:
    from seqmnist.bench import plain_script

    # Patch mode, one-cycle (which raises if stepped past its total), clipping, test score.
    plain_script.main(
        [
            "--root",
            str(synthetic_root),
            "--epochs",
            "2",
            "--val-size",
            "100",
            "--step-pixels",
            "56",
            "--lr",
            "0.01",
            "--onecycle",
            "--clip",
            "1.0",
            "--test",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert len(result["epochs"]) == 2
    (acc1, sec1), (acc2, sec2) = result["epochs"]
    assert 0 < sec1 < sec2 <= result["train_seconds"] and acc2 == round(result["val_acc"], 4)
    assert 0.0 <= result["test_acc"] <= 1.0


def test_the_plain_script_takes_an_experiments_recipe_from_its_file() -> None:
    from seqmnist.bench.plain_script import experiment_recipe
    from seqmnist.core.errors import ConfigError

    cfg = compose_config("experiment=fast99")
    assert experiment_recipe("fast99") == {
        "epochs": cfg.trainer.max_epochs,
        "step_pixels": cfg.data.step_pixels,
        "lr": cfg.optimizer.lr,
        "onecycle": True,
        "clip": cfg.trainer.gradient_clip_val,
    }
    assert experiment_recipe("tutorial_lstm")["onecycle"] is False  # row by row, no schedule
    assert experiment_recipe("tutorial_lstm")["step_pixels"] == 28
    with pytest.raises(ConfigError, match="Fix:"):
        experiment_recipe("tutorial_gru3")  # a GRU: not this script's network
    with pytest.raises(ConfigError, match="augmentation"):
        experiment_recipe("best_row")  # augmented batches and averaged weights: not here


def test_unknown_config_or_missing_gpu_is_one_clear_error(synthetic_root: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--root", str(synthetic_root), "--configs", "lstm999"])
    assert exc.value.code == 2
    assert "no such config" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exc:
            bench.main(["--root", str(synthetic_root), "--accelerator", "gpu"])
        assert exc.value.code == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_gpu_check_says_it_skipped_on_a_machine_without_cuda(capsys, monkeypatch) -> None:
    from seqmnist.bench import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("| skipped | no CUDA device on this machine |") == len(gpu_check.CHECKS)
    assert "gpu-check: 6 of 6 skipped" in out


def test_early_exit_bench_reports_each_way_on_the_test_set(
    synthetic_root: Path, tmp_path: Path, capsys
) -> None:
    from seqmnist.bench import early_exit
    from tests.helpers import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "m.ckpt", synthetic_root, hidden=16)
    out = tmp_path / "ee.json"
    early_exit.main(
        ["--ckpt", str(ckpt), "--root", str(synthetic_root), "--threshold", "0.11"]
        + ["--rounds", "1", "--batch", "64", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert "| early exit, p >= 0.11 |" in printed and "bench: early_exit/all_rows = " in printed
    rows = {r["way"]: r for r in json.loads(out.read_text())["rows"]}
    whole, early = rows["all rows"], rows["early exit, p >= 0.11"]
    stepping = rows["stepping 4 rows a call, all rows"]
    assert whole["mean_steps"] == 28 == stepping["mean_steps"]
    assert early["mean_steps"] < 28
    # Reading in pieces to the end answers as the whole-sequence pass does, and reading one
    # row a call stops where reading four a call does.
    assert stepping["accuracy"] == whole["accuracy"]
    one = rows["early exit, p >= 0.11, one row a call"]
    assert (one["mean_steps"], one["accuracy"]) == (early["mean_steps"], early["accuracy"])
    # A bidirectional model has no early answer: one error line, status 2.
    bi = make_checkpoint(tmp_path / "bi.ckpt", synthetic_root, bidirectional=True)
    assert early_exit.main(["--ckpt", str(bi), "--root", str(synthetic_root)]) == 2
    assert "bidirectional" in capsys.readouterr().err
