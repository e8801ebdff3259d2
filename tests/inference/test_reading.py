"""The anytime view of one picture (seqmnist.inference.reading): what the model read after each
step, and the pictures the demo page shows of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seqmnist.data.images import BlankImageError, preprocess
from seqmnist.data.sequences import Layout
from seqmnist.inference.predictor import load_predictor
from seqmnist.inference.reading import frame, pixels_read, read, write_gif
from tests.helpers import drawn_digit, make_checkpoint


@pytest.fixture(scope="module")
def predictor(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_predictor(make_checkpoint(tmp_path_factory.mktemp("r") / "m.ckpt", synthetic_root))


def test_reading_gives_the_answer_after_every_step(predictor, pictures: dict) -> None:
    reading = read(predictor, pictures["big"])
    assert np.array_equal(reading.image, preprocess(pictures["big"]))  # predict's preprocessing
    assert reading.step_probabilities.shape == (28, 10) and reading.steps == 28
    # Unidirectional: the last step's answer is the final answer.
    np.testing.assert_allclose(reading.step_probabilities[-1], reading.probabilities, atol=1e-6)
    np.testing.assert_allclose(reading.step_probabilities.sum(-1), 1.0, atol=1e-5)
    top = reading.top(3)
    assert len(top) == 3 and list(top.values()) == sorted(top.values(), reverse=True)
    assert reading.anytime and reading.step_name == "rows"


def test_a_canvas_array_reads_like_the_same_picture_from_a_file(predictor, tmp_path) -> None:
    digit = drawn_digit(280)
    # A sketchpad's RGBA: black strokes on a transparent background.
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)
    rgba[..., 3] = digit
    from_canvas = read(predictor, rgba)
    from PIL import Image

    Image.fromarray(255 - digit).save(tmp_path / "d.png")  # the same, dark on white
    np.testing.assert_array_equal(from_canvas.image, read(predictor, tmp_path / "d.png").image)
    with pytest.raises(BlankImageError):
        read(predictor, np.zeros((280, 280, 4), dtype=np.uint8))  # an empty canvas


@pytest.mark.parametrize(
    ("layout", "steps", "read_pixels"),
    [
        (Layout("row"), 3, [(0, 0), (2, 27)]),
        (Layout("column"), 2, [(27, 0), (5, 1)]),
        (Layout("patch", step_pixels=56), 1, [(0, 0), (1, 27)]),
        (Layout("permuted", 1, torch.arange(784).flip(0)), 1, [(27, 27)]),
    ],
)
def test_pixels_read_follow_the_layout(layout: Layout, steps: int, read_pixels: list) -> None:
    state = pixels_read(layout, steps)
    assert state.shape == (28, 28)
    assert int((state > 0).sum()) == steps * layout.input_size
    assert int((state == 2).sum()) == layout.input_size  # the step just read
    for y, x in read_pixels:
        assert state[y, x] > 0


def test_the_reading_pictures(predictor, pictures: dict, tmp_path: Path) -> None:
    reading = read(predictor, pictures["digit"])
    img = np.asarray(frame(reading, 5))
    assert img.shape == (280, 280, 3)
    amber = img[40:50].reshape(-1, 3)  # row 4 (0-based), the fifth read, 10 px per pixel
    assert (amber[:, 0] > amber[:, 2]).all()
    from PIL import Image

    gif = Image.open(write_gif(reading, tmp_path / "r.gif"))
    assert gif.n_frames == 29  # one per row, then the whole digit
