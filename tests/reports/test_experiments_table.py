"""seqmnist.results (and seqmnist.reports.experiments) on hand-made job dirs: grouping by
experiment, mean/std, targets, failures, several sweep dirs, and the README block between the
results markers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from seqmnist import results
from seqmnist.core.rundir import RunDir
from seqmnist.reports import experiments as ex
from tests.helpers import PROJECT_ROOT

MACHINE = "Linux x86_64, 2 CPUs, torch 2.14.1, no GPU"


def make_job(
    sweep: Path,
    name: str,
    experiment: str | None,
    metrics: dict | None,
    *,
    seed: int = 0,
    limit_test_batches: int | float | None = None,
) -> Path:
    """A job dir as a multirun leaves it: .hydra/{hydra,config}.yaml, resolved config, metrics."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    # Only the part of hydra.yaml the builder reads; Hydra writes `experiment: null` when unset.
    choices = {"experiment": experiment, "cell": "lstm", "data": "mnist"}
    (job / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}})
    )
    config = {
        "seed": seed,
        "layers": 1,
        "hidden": 128,
        "model": {"net": {"cell": "lstm", "num_layers": 1, "hidden_size": 128}},
        "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.001},
        "data": {"batch_size": 128, "dataset": "mnist", "sequence": "row"},
        "trainer": {"limit_test_batches": limit_test_batches},
    }
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (job / "resolved_config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps({"seed": seed, **metrics}))
    return job


def done(acc: float, *, seconds: float = 300.0, machine: str | None = MACHINE) -> dict:
    m = {
        "status": "completed",
        "test/acc": acc,
        "val/acc_best": acc,
        "params": 82186,
        "epochs": 25,
        "train_seconds": seconds,
    }
    if machine is not None:
        m["machine"] = machine
    return m


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    return {r["experiment"]: r for r in csv.DictReader(path.open())}


def table_line(md: str, experiment: str) -> list[str]:
    (line,) = [ln for ln in md.splitlines() if ln.startswith(f"| `{experiment}` |")]
    return [c.strip() for c in line.strip("|").split("|")]


def cell(md: str, experiment: str, column: str) -> str:
    return table_line(md, experiment)[ex.COLUMNS.index(column)]


def test_mean_std_seeds_targets_and_order(tmp_path: Path, capsys) -> None:
    for i, acc in enumerate([0.990, 0.992, 0.994]):
        make_job(tmp_path, str(i), "best_row", done(acc, seconds=300 + 25 * i), seed=i)
    for i, acc in enumerate([0.985, 0.987]):
        make_job(tmp_path, str(3 + i), "tutorial_lstm", done(acc), seed=i)
    make_job(tmp_path, "5", "fashion_row", done(0.91), seed=0)

    assert results.main([str(tmp_path)]) == 0
    md = (tmp_path / ex.MD_NAME).read_text()
    assert md == "# Experiment results\n\n" + capsys.readouterr().out.split("\nwrote ")[0]
    # Sample std (n - 1): the std of 99.0, 99.2, 99.4 is 0.2.
    assert cell(md, "best_row", "test acc %") == "99.20 +- 0.20"
    assert cell(md, "best_row", "seeds") == "3 (0, 1, 2)"
    assert cell(md, "best_row", "params") == "82,186"
    assert cell(md, "best_row", "epochs") == "25"
    assert cell(md, "best_row", "train time / run") == "5.4 min"  # mean of 300, 325, 350 s
    assert cell(md, "best_row", "machine") == MACHINE
    assert cell(md, "best_row", "target") == ">= 99.4%: missed"
    assert cell(md, "tutorial_lstm", "target") == ">= 98.5%: met"  # mean 98.6
    assert cell(md, "tutorial_lstm", "reference") == 'TF tutorial: "99.21%" on 128 test images'
    # One run: a mean without a std.
    assert cell(md, "fashion_row", "test acc %") == "91.00"
    assert cell(md, "fashion_row", "target") == ">= 91.5%: missed"
    # What each experiment is comes from the first comment line of its config.
    assert cell(md, "best_row", "what") == ex.describe_experiment("best_row")
    assert cell(md, "best_row", "what").startswith("Best row-MNIST recipe")
    # Tutorials first, then the tuned recipes, whatever the job order on disk.
    rows = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| `")]
    assert rows == ["`tutorial_lstm`", "`best_row`", "`fashion_row`"]

    by_name = read_csv(tmp_path / ex.CSV_NAME)
    assert float(by_name["best_row"]["test_acc_mean"]) == pytest.approx(0.992)
    assert float(by_name["best_row"]["test_acc_std"]) == pytest.approx(0.002)
    assert by_name["best_row"]["runs"] == "3" and by_name["best_row"]["target_met"] == "False"
    assert by_name["tutorial_lstm"]["target_met"] == "True"
    assert by_name["fashion_row"]["test_acc_std"] == ""  # undefined for one run
    assert "did not record their machine" not in md and "limit_test_batches" not in md
    # Nothing was written over the sweep's own per-job report.
    assert not (tmp_path / "results.md").exists()


def test_failed_unfinished_and_experimentless_jobs(tmp_path: Path, capsys) -> None:
    make_job(tmp_path, "0", "tutorial_rnn", done(0.97), seed=0)
    make_job(tmp_path, "1", "tutorial_rnn", {"status": "failed", "error": "RuntimeError: boom"})
    make_job(tmp_path, "2", "tutorial_gru3", {"status": "running"})
    make_job(tmp_path, "3", "tutorial_gru3", None)  # killed before it wrote metrics.json
    make_job(tmp_path, "4", None, done(0.5))  # a plain run: no experiment

    assert results.main([str(tmp_path)]) == 1  # a job failed
    captured = capsys.readouterr()
    assert "RuntimeError: boom" in captured.err and "run without experiment=" in captured.err
    md = (tmp_path / ex.MD_NAME).read_text()
    # Only the completed run counts toward the experiment's figures.
    assert cell(md, "tutorial_rnn", "seeds") == "1 (0)"
    assert cell(md, "tutorial_rnn", "test acc %") == "97.00"
    assert "tf.scan tutorial" in cell(md, "tutorial_rnn", "reference")
    assert "`tutorial_gru3`" not in "".join(ln[:20] for ln in md.splitlines())  # no row
    assert "Failed jobs (1)" in md and "RuntimeError: boom" in md and str(tmp_path / "1") in md
    assert "Unfinished jobs (2)" in md and "running" in md and "missing" in md
    assert "Skipped 1 completed jobs run without `experiment=`" in md
    assert "(1 completed runs of 5 jobs)" in md


def test_no_completed_runs_is_an_error(tmp_path: Path, capsys) -> None:
    make_job(tmp_path, "0", "best_row", {"status": "failed", "error": "OOM"})
    make_job(tmp_path, "1", None, done(0.9))
    assert results.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no completed experiment runs" in err and "1 failed" in err
    assert "1 without experiment=" in err
    assert not (tmp_path / ex.MD_NAME).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert results.main([str(empty)]) == 1
    assert "0 jobs" in capsys.readouterr().err
    assert results.main([str(tmp_path / "nope")]) == 2


def test_several_sweep_dirs_are_merged(tmp_path: Path) -> None:
    a, b = tmp_path / "cpu", tmp_path / "gpu"
    make_job(a, "0", "best_row", done(0.994), seed=0)
    make_job(a, "1", "tutorial_lstm", done(0.986), seed=0)
    make_job(b, "0", "best_row", done(0.996), seed=1)
    make_job(b, "1", "smnist_lstm", done(0.98, machine="Linux x86_64, NVIDIA H100"), seed=0)
    make_job(b, "2", "psmnist_lstm", done(0.90, machine="Linux x86_64, NVIDIA H100"), seed=0)

    assert results.main([str(a), str(b)]) == 0
    md = (a / ex.MD_NAME).read_text()  # written into the first dir only
    assert not (b / ex.MD_NAME).exists()
    assert cell(md, "best_row", "seeds") == "2 (0, 1)"
    assert cell(md, "best_row", "test acc %") == "99.50 +- 0.14"
    assert cell(md, "best_row", "target") == ">= 99.4%: met"
    assert cell(md, "smnist_lstm", "machine") == "Linux x86_64, NVIDIA H100"
    assert "Cooijmans" in cell(md, "smnist_lstm", "reference")
    assert "90.2%" in cell(md, "psmnist_lstm", "reference")
    assert cell(md, "smnist_lstm", "target") == ""  # no target set for it
    assert f"python -m seqmnist.results {a} {b}" in md
    jobs = read_csv(a / ex.CSV_NAME)["best_row"]["jobs"]
    assert str(a / "0") in jobs and str(b / "0") in jobs


def test_missing_machine_and_partial_test_set_are_marked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(results, "machine_description", lambda: "TESTBOX, 2 CPUs")
    make_job(tmp_path, "0", "tutorial_lstm", done(0.98, machine=None), seed=0)
    make_job(tmp_path, "1", "best_row", done(0.99), seed=0, limit_test_batches=2)
    make_job(tmp_path, "2", "fashion_row", done(0.9), seed=0, limit_test_batches=1.0)
    assert results.main([str(tmp_path)]) == 0
    md = (tmp_path / ex.MD_NAME).read_text()
    assert cell(md, "tutorial_lstm", "machine") == "TESTBOX, 2 CPUs *"
    assert "did not record their machine" in md
    assert cell(md, "best_row", "machine") == MACHINE
    assert cell(md, "best_row", "test acc %") == "99.00 (part of the test set)"
    assert cell(md, "fashion_row", "test acc %") == "90.00"  # 1.0 is the whole set
    assert "`trainer.limit_test_batches` set" in md
    by_name = read_csv(tmp_path / ex.CSV_NAME)
    assert by_name["tutorial_lstm"]["machine"] == "TESTBOX, 2 CPUs"
    assert by_name["tutorial_lstm"]["machine_recorded"] == "False"


def test_machine_description_names_this_machine() -> None:
    text = results.machine_description()
    assert "CPUs" in text and "torch " in text


README = """# project

Intro text | with a pipe.

## Results

Text before the table, between the `<!-- results:start -->` and `<!-- results:end -->` lines.

<!-- results:start -->
| old | table |
| --- | --- |
| typed | by hand |
<!-- results:end -->

Text after the table.

## Next section
"""


def test_readme_block_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    make_job(sweep, "0", "tutorial_lstm", done(0.986), seed=0)
    readme = tmp_path / "README.md"
    readme.write_text(README)

    assert results.main([str(sweep), "--readme", str(readme)]) == 0
    text = readme.read_text()
    # Only the marker lines count: the prose quoting them is kept as it was.
    head, rest = text.split(ex.RESULTS_MARKERS[0] + "\n")
    block, tail = rest.split(ex.RESULTS_MARKERS[1] + "\n")
    assert head == README.split(ex.RESULTS_MARKERS[0] + "\n")[0]
    assert tail == README.split(ex.RESULTS_MARKERS[1] + "\n")[1]
    assert "typed" not in text
    assert block == (sweep / ex.MD_NAME).read_text().removeprefix("# Experiment results\n\n")
    assert cell(block, "tutorial_lstm", "test acc %") == "98.60"
    # Running again gives the same file: one pair of markers, nothing piling up.
    assert results.main([str(sweep), "--readme", str(readme)]) == 0
    assert readme.read_text() == text


@pytest.mark.parametrize(
    "broken",
    [
        README.replace("<!-- results:start -->\n", "").replace("<!-- results:end -->\n", ""),
        README.replace("<!-- results:end -->\n", ""),
        README + "\n<!-- results:start -->\n<!-- results:end -->\n",
        README.replace(ex.RESULTS_MARKERS[0], "@")
        .replace(ex.RESULTS_MARKERS[1], ex.RESULTS_MARKERS[0])
        .replace("@", ex.RESULTS_MARKERS[1]),
    ],
    ids=["no markers", "no end marker", "two pairs", "end before start"],
)
def test_readme_without_proper_markers_is_an_error(tmp_path: Path, capsys, broken: str) -> None:
    sweep = tmp_path / "sweep"
    make_job(sweep, "0", "tutorial_lstm", done(0.986), seed=0)
    readme = tmp_path / "README.md"
    readme.write_text(broken)
    assert results.main([str(sweep), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert "<!-- results:start -->" in err and "docs/results.md" in err
    assert readme.read_text() == broken  # untouched
    assert not (sweep / ex.MD_NAME).exists()  # stopped before any work


def test_the_results_page_has_the_markers() -> None:
    text = (PROJECT_ROOT / "docs" / "results.md").read_text()
    ex.replace_block(text, "")  # raises without exactly one pair in order
    assert text.index("## Experiment table") < text.index(ex.RESULTS_MARKERS[0])


def test_every_experiment_says_what_it_is(tmp_path: Path) -> None:
    names = sorted(p.stem for p in ex.EXPERIMENT_DIR.glob("*.yaml"))
    assert {e.name for e in ex.catalogue()} <= set(names)
    for name in names:
        what = ex.describe_experiment(name)
        assert what and not what.startswith("@package") and not what.startswith("python"), name
    conf = tmp_path / "x.yaml"
    conf.write_text("# @package _global_\n\n#\n# What it is.\n# More.\nkey: 1\n# not this\n")
    assert ex.describe_experiment("x", tmp_path) == "What it is."
    (tmp_path / "y.yaml").write_text("# @package _global_\nkey: 1\n# too late\n")
    assert ex.describe_experiment("y", tmp_path) == ""
    assert ex.describe_experiment("absent", tmp_path) == ""


def test_experiment_name_from_hydra_yaml(tmp_path: Path) -> None:
    assert RunDir(make_job(tmp_path, "0", "best_row", None)).experiment() == "best_row"
    assert RunDir(make_job(tmp_path, "1", None, None)).experiment() is None
    assert RunDir(tmp_path).experiment() is None  # no .hydra at all


def hand_answers(steps: int, images: list[tuple[int | None, int | None]]):
    """A test set's per-step answers written down by hand: every image is of class 0; image
    ``(sure, right)`` has a top probability of 0.55 before row ``sure`` and 0.96 from it on
    (None: never 0.96), and answers class 1 before row ``right`` and class 0 from it on
    (None: never right); its final answer is its last step's."""
    import torch

    from seqmnist.reports.evaluation import StepAnswers

    rows = torch.arange(1, steps + 1)
    never = steps + 1
    confidence = torch.stack(
        [torch.where(rows >= (sure or never), 0.96, 0.55) for sure, _ in images]
    )
    predictions = torch.stack(
        [(rows < (right or never)).long() for _, right in images]
    )  # class 1 (wrong) before row `right`, class 0 (right) from it on
    logits = 5.0 * torch.nn.functional.one_hot(predictions[:, -1], 10).float()
    return StepAnswers(logits, torch.zeros(len(images), dtype=torch.long), confidence, predictions)


# Each job's test set, by job dir: (image's first row at 0.96, its first right row). Against
# evaluate's grid of thresholds (0.1 ... 1): 0.1, 0.3 and 0.5 answer every image at row 1
# (0.55 reaches them); 0.6 ... 0.95 answer at the row of 0.96 (the end for an image never
# there); 0.97 ... 1 read every row.
HAND_SETS = {
    # lstm, seed 0. Row 1: only the first image is right, 1/4. 0.6 ... 0.95 answer at rows
    # 4, 8, 28, 12, mean 52/4 = 13 (p90, torch.quantile of 4 8 12 28: 12 + 0.7 * 16 = 23.2),
    # the last one wrong there (right from row 20 only): 3/4. The rest: 4/4 at 28 rows.
    # After 7 rows 1/4 right, after 14: 2/4, after 21: 4/4; finally 4/4.
    "0": (28, [(4, 1), (8, 8), (None, 21), (12, 20)]),
    # gru, seed 1: the same but the last image is right from row 1. Row 1: 2/4; 0.6 ... 0.95:
    # 4/4 at a mean of 13 rows (p90 23.2); 28 rows: 4/4. After 7, 14, 21 rows: 2/4, 3/4, 4/4.
    "1": (28, [(4, 1), (8, 8), (None, 21), (12, 1)]),
    # fast99 (14 steps of two rows). Step 1: 1/2; 0.6 ... 0.95: steps 1 and 14, mean 7.5
    # (p90 1 + 0.9 * 13 = 12.7), 2/2; 14 steps: 2/2. After round(14/4) = 4, 7 and
    # round(10.5) = 10 steps: 1/2 each; finally 2/2.
    "3": (14, [(1, 1), (None, 14)]),
    # best_row, bidirectional: evaluated, but it has no early answer and no row.
    "4": (28, [(None, 1)]),
}


def test_the_answering_early_table_reads_each_runs_checkpoint(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Each run's checkpoint is loaded and evaluated as `evaluate` does; only its pass over
    the test set gives answers written down by hand (HAND_SETS), so that every cell of the
    table can be worked out by hand."""
    from seqmnist.reports import evaluation
    from tests.helpers import make_checkpoint

    def hand_pass(loaded, loader, device):
        steps, images = HAND_SETS[loaded.path.parents[1].name]
        assert loaded.data.seq_len == steps  # the checkpoint of that job was read
        return hand_answers(steps, images)

    monkeypatch.setattr(evaluation, "predict_test_set", hand_pass)
    monkeypatch.setenv("SEQMNIST_DATA_ROOT", str(synthetic_root))
    sweep = tmp_path / "sweep"
    for seed, net in ((0, "lstm"), (1, "gru")):
        job = make_job(sweep, str(seed), "anytime_row", done(0.5), seed=seed)
        make_checkpoint(job / "checkpoints" / "m.ckpt", synthetic_root, cell=net)
    # Another experiment in the sweep reads 14 steps of two rows: its own row, same columns.
    job = make_job(sweep, "3", "fast99", done(0.5), seed=0)
    make_checkpoint(
        job / "checkpoints" / "m.ckpt", synthetic_root, sequence="patch", step_pixels=56
    )
    # A bidirectional run has no early answer, a failed one no checkpoint: skipped, noted.
    job = make_job(sweep, "4", "best_row", done(0.5), seed=0)
    make_checkpoint(job / "checkpoints" / "m.ckpt", synthetic_root, bidirectional=True)
    make_job(sweep, "2", "anytime_row", {"status": "failed", "error": "boom"}, seed=2)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- anytime:start -->\nold\n<!-- anytime:end -->\nrest\n")
    assert results.main([str(sweep), "--anytime", "--readme", str(readme)]) == 0
    assert "bidirectional, no early answer" in capsys.readouterr().err
    text = readme.read_text()
    assert "\nold\n" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    lines = text.splitlines()
    head = next(ln for ln in lines if ln.startswith("| experiment"))
    header = [c.strip() for c in head.strip("|").split("|")]

    def row(experiment: str) -> dict[str, str]:
        (line,) = [ln for ln in lines if ln.startswith(f"| `{experiment}` |")]
        return dict(zip(header, [c.strip() for c in line.strip("|").split("|")], strict=True))

    # Mean +- sample std of two runs a, b: std = |a - b| / sqrt(2); 0.25 / sqrt(2) = 0.1768.
    # Frontier area: the upper hull of (0, 1/10 chance) and each point's (mean rows / 28,
    # accuracy), flat to 1 after its last point (trapezoids, in 56ths):
    #   seed 0: (1/28, .25) (13/28, .75) (1, 1):
    #           (.1 + .25) + 12 * (.25 + .75) + 15 * (.75 + 1) = 38.6 -> 38.6 / 56 = 0.6893
    #   seed 1: (1/28, .5) (13/28, 1), then flat at 1:
    #           (.1 + .5) + 12 * (.5 + 1) + 15 * 2 = 48.6 -> 48.6 / 56 = 0.8679
    #   mean 87.2 / 112 = 0.7786, std (10 / 56) / sqrt(2) = 0.1263.
    # Early exit within 20 of 28 rows: the most accurate point at a mean of 13 rows, whose
    # first threshold is 0.6 (3/4 and 4/4: 87.50 +- 17.68).
    assert row("anytime_row") == {
        "experiment": "`anytime_row`",
        "seeds": "0, 1",
        "steps": "28",
        "all steps %": "100.00 +- 0.00",
        "after 1/4 %": "37.50 +- 17.68",  # 1/4 and 2/4 right after 7 rows
        "after 1/2 %": "62.50 +- 17.68",  # 2/4 and 3/4 after 14
        "after 3/4 %": "100.00 +- 0.00",  # 4/4 and 4/4 after 21
        "early exit %": "87.50 +- 17.68",
        "mean (p90) steps read": "13.0 (23.2)",
        "threshold": "0.6",
        "frontier area": "0.7786 +- 0.1263",
    }
    # One run: no std. Within 14 * 5/7 = 10 steps: 2/2 at a mean of 7.5 (threshold 0.6).
    # Area, in 28ths: hull (1/14, .5) (7.5/14, 1), then flat at 1:
    #   (.1 + .5) + 6.5 * (.5 + 1) + 6.5 * 2 = 23.35 -> 23.35 / 28 = 0.8339.
    assert row("fast99") == {
        "experiment": "`fast99`",
        "seeds": "0",
        "steps": "14",
        "all steps %": "100.00",
        "after 1/4 %": "50.00",
        "after 1/2 %": "50.00",
        "after 3/4 %": "50.00",
        "early exit %": "100.00",
        "mean (p90) steps read": "7.5 (12.7)",
        "threshold": "0.6",
        "frontier area": "0.8339",
    }
    assert not any(ln.startswith("| `best_row`") for ln in lines)
    assert "Skipped 1 runs" in text
    with (sweep / "results_anytime.csv").open() as f:
        runs = {(r["experiment"], r["seed"]): r for r in csv.DictReader(f)}
    assert sorted(runs) == [("anytime_row", "0"), ("anytime_row", "1"), ("fast99", "0")]
    seed0 = runs["anytime_row", "0"]
    assert float(seed0["accuracy"]) == 1.0 and float(seed0["exit_accuracy"]) == 0.75
    assert float(seed0["exit_mean_steps"]) == 13.0 and float(seed0["exit_threshold"]) == 0.6
    assert float(seed0["area"]) == pytest.approx(38.6 / 56)
    assert float(seed0["budget"]) == pytest.approx(20.0)
    assert float(runs["fast99", "0"]["budget"]) == pytest.approx(10.0)
