"""`seqmnist.predict`: top classes per picture, what the model saw, bad inputs and bad
checkpoints (in-process through the command's `main`, which returns the exit status)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seqmnist.data import DATASETS
from seqmnist.inference.checkpoints import load_model
from seqmnist.inference.predictor import load_predictor
from seqmnist.predict import main
from tests.helpers import best_ckpt, make_checkpoint


@pytest.fixture
def predict(capsys: pytest.CaptureFixture):
    """``python -m seqmnist.predict args`` in this process: status, stdout and stderr."""

    def call(*args: str) -> subprocess.CompletedProcess:
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse: --help, usage errors
            code = e.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)

    return call


def test_predict_prints_top3_and_saves_what_the_model_saw(
    trained_run: Path, pictures: dict[str, Path], tmp_path: Path, predict
) -> None:
    seen = tmp_path / "seen"
    proc = predict(
        "--ckpt",
        str(best_ckpt(trained_run)),
        "--save-preprocessed",
        str(seen),
        str(pictures["digit"]),
        str(pictures["big"]),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {ln.split(": ")[0]: ln for ln in proc.stdout.splitlines() if ": " in ln}
    tops = []
    for key in ("digit", "big"):
        line = lines[str(pictures[key])]
        ranked = line.split(": ", 1)[1].split("  ")
        assert len(ranked) == 3
        probs = [float(r.split("(")[1].rstrip(")")) for r in ranked]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3
        tops.append(ranked[0].split(" ")[0])
    assert tops[0] == tops[1]  # same digit, inverted and 200x200 RGB: same answer
    # The saved 28x28 images are what the model classified: re-running them agrees.
    model, data = load_model(best_ckpt(trained_run))
    for key in ("digit", "big"):
        img = np.asarray(Image.open(seen / f"{pictures[key].stem}.png"))
        assert img.shape == (28, 28)
        probs = model(data.to_inputs(torch.from_numpy(img.copy())[None])).softmax(-1)[0]
        assert str(int(probs.argmax())) == tops[0]


def test_bad_inputs_are_reported_and_good_ones_still_classified(
    trained_run: Path, pictures: dict[str, Path], predict
) -> None:
    bad = ["blank", "text", "truncated", "empty"]
    missing = pictures["digit"].parent / "missing.png"
    args = [str(pictures["digit"]), *(str(pictures[k]) for k in bad), str(missing)]
    proc = predict("--ckpt", str(trained_run), *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"{pictures['digit']}: " in proc.stdout  # the good one is classified
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 5
    expected = {
        "blank": "blank image: no ink found",
        "text": "is not an image file",
        "truncated": "truncated or corrupt",
        "empty": "is a directory with no image files",
    }
    for key, needle in expected.items():
        assert any(str(pictures[key]) in e and needle in e for e in errors), (key, errors)
    assert any(str(missing) in e and "no such file" in e for e in errors)
    assert "5 of 6 inputs failed" in proc.stderr

    proc = predict("--ckpt", str(trained_run), "--json", *args)
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["failed"] == 5 and doc["sequence"] == "row"
    by_input = {r["input"]: r for r in doc["results"]}
    good = by_input[str(pictures["digit"])]
    assert good["ok"] is True and len(good["top"]) == 3
    assert {t["class"] for t in good["top"]} <= {str(d) for d in range(10)}
    assert by_input[str(pictures["blank"])]["blank"] is True
    assert all(not by_input[str(pictures[k])]["ok"] for k in bad)


def test_directory_input_and_fashion_class_names(
    synthetic_root: Path, pictures: dict[str, Path], tmp_path: Path, predict
) -> None:
    ckpt = make_checkpoint(tmp_path / "f.ckpt", synthetic_root, dataset="fashion_mnist")
    folder = tmp_path / "only_good"
    folder.mkdir()
    for key in ("digit", "big"):
        (folder / pictures[key].name).write_bytes(pictures[key].read_bytes())
    proc = predict("--ckpt", str(ckpt), "--json", "--top", "5", str(folder))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["dataset"] == "fashion_mnist" and len(doc["results"]) == 2
    names = DATASETS["fashion_mnist"][1]
    for r in doc["results"]:
        assert len(r["top"]) == 5
        assert all(t["class"] == names[t["index"]] for t in r["top"])


def test_a_threshold_answers_early_and_says_after_which_row(
    synthetic_root: Path, pictures: dict[str, Path], tmp_path: Path, predict
) -> None:
    ckpt = make_checkpoint(tmp_path / "m.ckpt", synthetic_root, hidden=16)
    inputs = [str(pictures["digit"]), str(pictures["big"])]
    full = json.loads(predict("--ckpt", str(ckpt), "--json", *inputs).stdout)["results"]
    everything = json.loads(
        predict("--ckpt", str(ckpt), "--json", "--threshold", "1", *inputs).stdout
    )["results"]
    for a, b in zip(full, everything, strict=True):
        # A threshold of 1 reads every row: the answer of the whole image.
        assert b["early_exit"] == {"threshold": 1.0, "step": 28, "steps": 28}
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert a["top"][0]["probability"] == pytest.approx(b["top"][0]["probability"], abs=1e-5)
    # A threshold between two of the image's per-step confidences: the row said is the
    # first whose top probability reaches it, as a full pass sees it.
    seen = tmp_path / "seen"
    predict("--ckpt", str(ckpt), "--save-preprocessed", str(seen), inputs[0])
    image = np.array(Image.open(seen / "digit.png"))
    conf = load_predictor(ckpt).answer(image[None]).step_probabilities[0].max(-1)
    values = np.unique(conf)
    threshold = float((values[len(values) // 2] + values[len(values) // 2 - 1]) / 2)
    expected = int(np.argmax(conf >= threshold)) + 1
    proc = predict("--ckpt", str(ckpt), "--threshold", str(threshold), inputs[0])
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(inputs[0]))
    assert f"[answered after row {expected} of 28 at p >= {threshold:g}]" in line


@pytest.mark.parametrize(("value", "says"), [("1.5", "--threshold=1.5"), ("0", "--threshold=0.0")])
def test_a_threshold_outside_0_1_is_one_error(
    trained_run: Path, pictures: dict[str, Path], predict, value: str, says: str
) -> None:
    proc = predict("--ckpt", str(trained_run), "--threshold", value, str(pictures["digit"]))
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "(0, 1]" in lines[0]


def test_a_threshold_for_a_bidirectional_model_is_refused(
    synthetic_root: Path, pictures: dict[str, Path], tmp_path: Path, predict
) -> None:
    ckpt = make_checkpoint(tmp_path / "bi.ckpt", synthetic_root, bidirectional=True)
    proc = predict("--ckpt", str(ckpt), "--threshold", "0.9", str(pictures["digit"]))
    assert proc.returncode == 2
    assert "bidirectional" in proc.stderr and "Fix: drop --threshold" in proc.stderr


@pytest.mark.parametrize("kind", ["missing", "text", "random_dict"])
def test_bad_checkpoint_is_one_clear_error(
    tmp_path: Path, pictures: dict[str, Path], kind: str, predict
) -> None:
    path = tmp_path / "model.ckpt"
    if kind == "text":
        path.write_text("hello")
    elif kind == "random_dict":
        torch.save({"a": torch.zeros(2), "b": [1, 2]}, path)
    proc = predict("--ckpt", str(path), str(pictures["digit"]))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(path) in lines[0] and "Fix:" in lines[0]


def test_help_documents_usage(predict) -> None:
    proc = predict("--help")
    assert proc.returncode == 0
    for needle in ("--ckpt", "--json", "--save-preprocessed", "IMAGE_OR_DIR", "centre of mass"):
        assert needle in proc.stdout, needle
