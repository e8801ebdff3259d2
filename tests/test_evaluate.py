"""`seqmnist.evaluate`: reports written, numbers consistent, errors clear (in-process through
the command's `run`; a subprocess only for the exit code and the run directory's name)."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqmnist.core.errors import DataError
from seqmnist.evaluate import run
from seqmnist.inference.checkpoints import CheckpointError
from seqmnist.reports.evaluation import BIDIRECTIONAL_NOTE, FILES, evaluate_checkpoint
from tests.helpers import (
    LAYOUT_IDS,
    LAYOUTS,
    ONE_THREAD,
    best_ckpt,
    compose_config,
    make_checkpoint,
    run_module,
)

TEST_SIZE = 200  # the synthetic test split


def evaluate(*overrides: str, out: Path, root: Path | None = None) -> dict:
    """``python -m seqmnist.evaluate overrides`` in this process; eval.json's content."""
    args = [*([f"data.root={root}"] if root is not None else []), *overrides]
    return run(compose_config(*args, config_name="evaluate", run_dir=out))


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def check_reports(out: Path, n: int, classes: list[str]) -> dict:
    """Every file is there and the numbers agree with each other; returns eval.json."""
    result = json.loads((out / "eval.json").read_text())
    # Early exit's files for a model with early answers (unidirectional) only.
    early = result["anytime"]["early_answer"]
    assert set(result["files"]) == {k for k in FILES if early or not k.startswith("early_exit")}
    for name in FILES.values():
        assert (out / name).exists() == (early or not name.startswith("early_exit")), name
    m = result["metrics"]
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (len(classes), len(classes))
    assert cm.sum() == n == result["data"]["test_size"]
    assert m["correct"] == np.trace(cm)
    assert m["accuracy"] == pytest.approx(np.trace(cm) / n, abs=1e-6)
    for i, row in enumerate(m["per_class"]):
        assert row["class"] == classes[i]
        assert row["support"] == cm[i].sum()
        recall = cm[i, i] / cm[i].sum() if cm[i].sum() else 0.0
        precision = cm[i, i] / cm[:, i].sum() if cm[:, i].sum() else 0.0
        assert row["recall"] == pytest.approx(recall, abs=1e-6)
        assert row["precision"] == pytest.approx(precision, abs=1e-6)
        tn = n - cm[i].sum() - cm[:, i].sum() + cm[i, i]
        assert row["accuracy"] == pytest.approx((cm[i, i] + tn) / n, abs=1e-6)
    # The CSV holds the same matrix, rows labelled with the class names.
    rows = read_csv(out / "confusion_matrix.csv")
    assert rows[0] == ["true\\predicted", *classes]
    assert [r[0] for r in rows[1:]] == classes
    assert np.array_equal(np.array([[int(v) for v in r[1:]] for r in rows[1:]]), cm)
    norm = np.array(
        [[float(v) for v in r[1:]] for r in read_csv(out / FILES["confusion_normalized_csv"])[1:]]
    )
    filled = cm.sum(1) > 0
    assert np.allclose(norm[filled].sum(1), 1.0, atol=1e-4)
    # The anytime curve: one accuracy per step, in [0, 1], in JSON and CSV alike.
    any_ = result["anytime"]
    t = result["data"]["seq_len"]
    assert any_["steps"] == t and len(any_["accuracy"]) == t
    curve = read_csv(out / "anytime.csv")
    assert curve[0] == ["k", "pixels_read", "accuracy"] and len(curve) == t + 1
    assert [int(r[0]) for r in curve[1:]] == list(range(1, t + 1))
    assert int(curve[-1][1]) == 784
    assert np.allclose([float(r[2]) for r in curve[1:]], any_["accuracy"], atol=1e-6)
    assert all(0.0 <= a <= 1.0 for a in any_["accuracy"])
    # Confident errors: wrong, sorted by confidence, at most the number of errors.
    errors = result["confident_errors"]
    assert len(errors) == min(25, n - m["correct"])
    assert all(e["true"] != e["predicted"] for e in errors)
    probs = [e["probability"] for e in errors]
    assert probs == sorted(probs, reverse=True)
    assert len(read_csv(out / "confident_errors.csv")) == len(errors) + 1
    if early:
        check_early_exit(out, result)
    for png in ("confusion_matrix.png", "confusion_matrix_normalized.png", "anytime.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200, png
    md = (out / "eval.md").read_text()
    assert "| class | support | precision | recall | F1 | accuracy |" in md
    for c in classes:
        assert f"| {c} | " in md
    assert f"{100 * m['accuracy']:.2f}%" in md
    return result


def check_early_exit(out: Path, result: dict) -> None:
    """Early exit's numbers: fewer steps at lower thresholds, a threshold of 1 reads all."""
    exits, t = result["early_exit"], result["data"]["seq_len"]
    points = exits["points"]
    assert [q["threshold"] for q in points] == sorted(q["threshold"] for q in points)
    means = [q["mean_steps"] for q in points]
    assert means == sorted(means)  # a lower threshold never reads more
    assert all(1 <= q["mean_steps"] <= t and 1 <= q["p90_steps"] <= t for q in points)
    last = points[-1]
    assert last["threshold"] == 1.0 and last["mean_steps"] == t and last["early_share"] == 0
    assert last["accuracy"] == pytest.approx(result["metrics"]["accuracy"], abs=1e-9)
    n_classes = len(result["data"]["class_names"])
    assert 1 / n_classes <= exits["area"] <= 1
    rows = read_csv(out / "early_exit.csv")
    assert rows[0][:3] == ["model", "threshold", "accuracy"]
    mine = [r for r in rows[1:] if r[0] == exits["model"]]
    assert len(mine) == len(points)
    assert sum(int(r[6]) for r in mine) == len(exits["frontier"])
    with Image.open(out / "early_exit.png") as im:
        assert im.format == "PNG" and im.width > 300
    assert "## Early exit" in (out / "eval.md").read_text()


def test_evaluate_a_checkpoint(
    trained_run: Path, synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "eval"
    ckpt = best_ckpt(trained_run)
    with caplog.at_level(logging.INFO, logger="seqmnist.evaluate"):
        returned = evaluate(f"ckpt_path={ckpt}", out=out, root=synthetic_root)
    result = check_reports(out, TEST_SIZE, [str(d) for d in range(10)])
    assert returned == result
    m = result["metrics"]
    assert result["checkpoint"] == str(ckpt.resolve())
    # Unidirectional: answering after all T rows is the model's answer.
    assert result["anytime"]["early_answer"] is True
    assert result["anytime"]["accuracy"][-1] == pytest.approx(m["accuracy"], abs=1e-9)
    assert list(result["anytime"]["quarters"]) == ["7", "14", "21", "28"]
    # Lightning's own test loop on the same checkpoint (metrics.json) agrees.
    trained = json.loads((trained_run / "metrics.json").read_text())
    assert m["accuracy"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert m["loss"] == pytest.approx(trained["test/loss"], rel=1e-4)
    out_text = "\n".join(r.getMessage() for r in caplog.records)
    assert "test acc" in out_text and "k=28" in out_text and str(out) in out_text
    assert BIDIRECTIONAL_NOTE not in out_text
    # The confident-errors picture holds one panel per error.
    with Image.open(out / "confident_errors.png") as im:
        assert im.width > 300
    # TensorBoard events under the run's own directory.
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("eval/acc", "eval/loss", "eval/anytime_acc", "eval_class_recall/3"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    assert len(acc.Scalars("eval/anytime_acc")) == 28
    assert {"eval/confusion_matrix", "eval/anytime", "eval/confident_errors"} <= set(tags["images"])
    assert "eval/early_exit_area" in tags["scalars"] and "eval/early_exit" in tags["images"]
    assert "early exit, " in out_text and "frontier area" in out_text


def test_early_exit_beside_another_model(
    trained_run: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    other = make_checkpoint(tmp_path / "other" / "m.ckpt", synthetic_root, cell="gru")
    out = tmp_path / "eval"
    result = evaluate(
        f"ckpt_path={trained_run}",
        f"compare={other}",
        "early_exit.thresholds=[0.1,0.5,0.9,1]",
        "early_exit.budget=14",
        out=out,
        root=synthetic_root,
    )
    exits, theirs = result["early_exit"], result["early_exit"]["compare"]
    assert theirs["checkpoint"] == str(other.resolve()) and "gru" in theirs["model"]
    assert theirs["model"] == "m: gru 1x8, trained on its last step"
    assert [q["threshold"] for q in theirs["points"]] == [0.1, 0.5, 0.9, 1.0]
    assert theirs["points"][-1]["mean_steps"] == 28
    # Threshold 0.1 answers at the first row (of 10 classes the top one always has 0.1+).
    within = exits["within_budget"]
    assert within is not None and within["mean_steps"] <= 14
    assert within["accuracy"] == max(
        q["accuracy"] for q in exits["points"] if q["mean_steps"] <= 14
    )
    models = {r[0] for r in read_csv(out / "early_exit.csv")[1:]}
    assert models == {exits["model"], theirs["model"]}


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("early_exit.thresholds=[0.5,1.5]", "early_exit.thresholds=1.5"),
        ("early_exit.thresholds=[0]", "early_exit.thresholds=0"),
        ("early_exit.thresholds=[]", "must be a list"),
        ("early_exit.budget=0", "early_exit.budget=0"),
        ("early_exit.thresholds=high", "early_exit.thresholds='high'"),
    ],
)
def test_bad_early_exit_settings_are_refused(
    trained_run: Path, synthetic_root: Path, tmp_path: Path, override: str, says: str
) -> None:
    from seqmnist.core.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(says)):
        evaluate(f"ckpt_path={trained_run}", override, out=tmp_path / "e", root=synthetic_root)
    assert not (tmp_path / "e" / "eval.json").exists()


def test_one_threshold_may_be_given_as_a_number(
    trained_run: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    result = evaluate(
        f"ckpt_path={trained_run}",
        "early_exit.thresholds=0.9",
        out=tmp_path / "e",
        root=synthetic_root,
    )
    assert [q["threshold"] for q in result["early_exit"]["points"]] == [0.9]
    # The default budget: 5/7 of the steps, 20 of 28 rows.
    assert result["early_exit"]["budget"] == pytest.approx(20)


def test_compare_with_a_model_of_other_steps_is_refused(
    trained_run: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    from seqmnist.core.errors import ConfigError

    pixels = make_checkpoint(tmp_path / "px" / "m.ckpt", synthetic_root, sequence="pixel")
    with pytest.raises(ConfigError, match="reads 784 steps, this 28"):
        evaluate(
            f"ckpt_path={trained_run}", f"compare={pixels}", out=tmp_path / "e", root=synthetic_root
        )
    bi = make_checkpoint(tmp_path / "bi" / "m.ckpt", synthetic_root, bidirectional=True)
    with pytest.raises(ConfigError, match="the model evaluated is bidirectional"):
        evaluate(
            f"ckpt_path={bi}", f"compare={trained_run}", out=tmp_path / "e", root=synthetic_root
        )
    assert not (tmp_path / "e" / "eval.json").exists()


@pytest.mark.e2e
def test_evaluate_a_run_dir_uses_its_best_checkpoint(
    trained_run: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "logs"
    proc = run_module(
        "seqmnist.evaluate",
        f"ckpt_path={trained_run}",
        f"data.root={synthetic_root}",
        f"paths.log_dir={log_dir}",
        "num_errors=4",
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Its own timestamped directory: outputs/evaluate/runs/<date>_<time>_<microseconds>.
    runs = list((log_dir / "evaluate" / "runs").iterdir())
    assert len(runs) == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}", runs[0].name)
    result = json.loads((runs[0] / "eval.json").read_text())
    assert result["checkpoint"] == str(best_ckpt(trained_run).resolve())
    assert len(result["confident_errors"]) == min(4, TEST_SIZE - result["metrics"]["correct"])
    assert (runs[0] / "evaluate.log").is_file()


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_every_layout_evaluates(synthetic_root: Path, tmp_path: Path, layout: dict) -> None:
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "m.ckpt", synthetic_root, **layout)
    dataset, bidirectional = layout["dataset"], layout["bidirectional"]
    out = tmp_path / "eval"
    result = evaluate_checkpoint(ckpt, out, data_root=synthetic_root, batch_size=64, device="cpu")
    classes = result["data"]["class_names"]
    if dataset == "fashion_mnist":
        assert classes[0] == "T-shirt/top" and "Ankle boot" in (out / "eval.md").read_text()
    check_reports(out, TEST_SIZE, classes)
    t = {"column": 28, "permuted": 784, "pixel": 784}.get(layout["sequence"])
    assert result["data"]["seq_len"] == (t or 784 // layout.get("step_pixels", 28))
    md = (out / "eval.md").read_text()
    if bidirectional:
        # Still computed, but flagged: the backward half has read the rest of the image.
        assert result["anytime"]["early_answer"] is False
        assert result["anytime"]["note"] == BIDIRECTIONAL_NOTE and BIDIRECTIONAL_NOTE in md
    else:
        assert result["anytime"]["early_answer"] is True and BIDIRECTIONAL_NOTE not in md
        assert result["anytime"]["accuracy"][-1] == pytest.approx(
            result["metrics"]["accuracy"], abs=1e-9
        )


def test_no_checkpoint_given(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        evaluate(out=tmp_path / "e")
    assert "ckpt_path=PATH" in str(err.value)
    assert not (tmp_path / "e").exists()


@pytest.mark.e2e
def test_no_checkpoint_given_exits_2_without_a_traceback(tmp_path: Path) -> None:
    proc = run_module("seqmnist.evaluate", f"hydra.run.dir={tmp_path / 'e'}", env=ONE_THREAD)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert "ckpt_path=PATH" in out and "Traceback" not in out


@pytest.mark.parametrize("kind", ["missing", "text"])
def test_bad_checkpoint_fails_cleanly(tmp_path: Path, synthetic_root: Path, kind: str) -> None:
    path = tmp_path / "model.ckpt"
    if kind == "text":
        path.write_text("not a model")
    with pytest.raises(CheckpointError) as err:
        evaluate(f"ckpt_path={path}", out=tmp_path / "e", root=synthetic_root)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)
    assert not (tmp_path / "e" / "eval.json").exists()


def test_missing_data_names_data_root(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        evaluate(
            f"ckpt_path={trained_run}",
            "data.download=false",
            out=tmp_path / "e",
            root=tmp_path / "nodata",
        )
    assert str(tmp_path / "nodata" / "MNIST" / "raw") in str(err.value)
    assert "data.root" in str(err.value)
    assert not (tmp_path / "e" / "eval.json").exists()
