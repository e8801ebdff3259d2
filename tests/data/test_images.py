"""Any digit picture -> an MNIST-like 28x28 image: crop, scale, centre, invert, refuse blanks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqmnist.data import load_split
from seqmnist.data.images import BlankImageError, ImageInputError, load_image, mnist_like
from tests.helpers import drawn_digit


def ink_stats(img: np.ndarray) -> tuple[int, float, float]:
    """(longer side of the ink's bounding box, centre-of-mass row, column)."""
    a = img.astype(float)
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    ys, xs = np.indices(a.shape)
    side = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    return side, (ys * a).sum() / a.sum(), (xs * a).sum() / a.sum()


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


def test_pictures_too_large_to_read_safely_are_refused(tmp_path: Path) -> None:
    """The size is checked on the file and on the header, before decoding."""
    from seqmnist.data.images import MAX_FILE_BYTES

    big = tmp_path / "big.png"
    Image.new("1", (6000, 5000)).save(big)
    with pytest.raises(ImageInputError, match=r"6000x5000 pixels \(30 MP\); pictures up to 25"):
        load_image(big)
    heavy = tmp_path / "heavy.png"
    with heavy.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(ImageInputError, match=r"heavy.png is 25 MB; pictures up to 25 MB"):
        load_image(heavy)
