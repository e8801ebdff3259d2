"""`python -m seqmnist.predict` and the MNIST-style preprocessing behind it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seqmnist.checkpoint import load_model
from seqmnist.data import DATASETS, load_split
from seqmnist.preprocess import BlankImageError, load_image, mnist_like

from . import eval_helpers
from .conftest import PROJECT_ROOT, run_module
from .eval_helpers import ONE_THREAD, best_ckpt, drawn_digit, make_checkpoint

trained_run = eval_helpers.trained_run  # the session's tiny trained run (a fixture)
one_thread = eval_helpers.one_thread  # autouse


def predict(*args: str):
    return run_module("seqmnist.predict", *args, cwd=PROJECT_ROOT, env=ONE_THREAD)


def ink_stats(img: np.ndarray) -> tuple[int, float, float]:
    """(longer side of the ink's bounding box, centre-of-mass row, column)."""
    a = img.astype(float)
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    ys, xs = np.indices(a.shape)
    side = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    return side, (ys * a).sum() / a.sum(), (xs * a).sum() / a.sum()


@pytest.fixture
def pictures(tmp_path: Path) -> dict[str, Path]:
    """A digit as MNIST stores it, the same digit dark-on-light 200x200 RGB, and bad inputs."""
    d = tmp_path / "in"
    d.mkdir()
    digit = drawn_digit()
    Image.fromarray(digit).save(d / "digit.png")
    big = Image.fromarray(255 - digit).resize((200, 200), Image.Resampling.BICUBIC)
    big.convert("RGB").save(d / "big_inverted.png")
    Image.new("RGB", (64, 48), (250, 250, 250)).save(d / "blank.png")
    (d / "notes.txt").write_text("not a picture\n")
    data = (d / "big_inverted.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty").mkdir()
    return {
        "digit": d / "digit.png",
        "big": d / "big_inverted.png",
        "blank": d / "blank.png",
        "text": d / "notes.txt",
        "truncated": d / "truncated.png",
        "empty": tmp_path / "empty",
    }


# -- preprocessing -----------------------------------------------------------------------
def test_mnist_like_crops_scales_and_centres() -> None:
    # A small off-centre stroke in a large dark-on-light canvas.
    canvas = np.full((120, 90), 230.0)
    canvas[10:50, 60:70] = 20.0  # a tall bar, 40x10
    out = mnist_like(canvas)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    side, cy, cx = ink_stats(out)
    assert side in (20, 21)  # longer side scaled to 20 px (anti-aliasing may touch one more)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    assert out[0].max() == 0 and out[:, 0].max() == 0  # background is black
    assert out.max() == 255  # the stroke is full-strength ink


def test_inverted_and_resized_digit_preprocesses_alike(pictures: dict[str, Path]) -> None:
    a = mnist_like(load_image(pictures["digit"])).astype(float)
    b = mnist_like(load_image(pictures["big"])).astype(float)
    assert ink_stats(a)[0] == ink_stats(b)[0] == 20
    # Equal up to blur and a whole-pixel shift (centring rounds to whole pixels, as MNIST's).
    best = max(
        np.corrcoef(a.ravel(), np.roll(b, (dy, dx), axis=(0, 1)).ravel())[0, 1]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )
    assert best > 0.9
    # A different digit is not that similar: the check can fail.
    other = np.zeros((28, 28))
    other[4:24, 12:16] = 255.0  # a '1'
    assert np.corrcoef(a.ravel(), mnist_like(other).ravel().astype(float))[0, 1] < 0.5


def test_transparent_background_keeps_the_digit(tmp_path: Path) -> None:
    digit = drawn_digit(56)
    rgba = np.zeros((56, 56, 4), dtype=np.uint8)  # black ink, alpha = ink, transparent elsewhere
    rgba[..., 3] = digit
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    out = mnist_like(load_image(tmp_path / "t.png"))
    ref = mnist_like(digit.astype(float))
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("value", [0, 128, 255])
def test_blank_images_are_refused(value: int) -> None:
    noisy = np.random.default_rng(0).normal(value, 5, (40, 40)).clip(0, 255)
    with pytest.raises(BlankImageError, match="no ink"):
        mnist_like(noisy)


@pytest.mark.realdata
def test_real_mnist_digits_come_back_unchanged(real_root: Path) -> None:
    # MNIST digits were made this way, so redoing it must give (almost) the same picture.
    images = load_split(real_root, "mnist", "test")[0][:200].numpy()
    corr = [np.corrcoef(mnist_like(x.astype(float)).ravel(), x.ravel())[0, 1] for x in images]
    assert np.median(corr) > 0.99 and np.mean(np.array(corr) > 0.9) > 0.95


# -- the command -----------------------------------------------------------------------
def test_predict_prints_top3_and_saves_what_the_model_saw(
    trained_run: Path, pictures: dict[str, Path], tmp_path: Path
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
    trained_run: Path, pictures: dict[str, Path]
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
    synthetic_root: Path, pictures: dict[str, Path], tmp_path: Path
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


@pytest.mark.parametrize("kind", ["missing", "text", "random_dict"])
def test_bad_checkpoint_is_one_clear_error(
    tmp_path: Path, pictures: dict[str, Path], kind: str
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


def test_help_documents_usage() -> None:
    proc = predict("--help")
    assert proc.returncode == 0
    for needle in ("--ckpt", "--json", "--save-preprocessed", "IMAGE_OR_DIR", "centre of mass"):
        assert needle in proc.stdout, needle
