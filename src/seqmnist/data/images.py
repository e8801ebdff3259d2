"""Turn an arbitrary digit picture into a 28x28 image the way MNIST's were made.

MNIST's digits are white on black, cropped to their bounding box, scaled (keeping the
aspect ratio) so the longer side is 20 pixels, anti-aliased, and placed in a 28x28 field
with their centre of mass at the centre. :func:`mnist_like` does the same to a grayscale
array of any size; :func:`load_image` reads PNG/JPEG/BMP (anything PIL reads) of any
size or colour mode into such an array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from seqmnist.core.errors import SeqMNISTError

SIDE = 28
BOX = 20  # the longer side of the digit inside the 28x28 field, as in MNIST
# The strongest stroke must differ from the background by this much (of 255), else the
# image is taken as blank: JPEG noise and paper texture stay well below it.
MIN_CONTRAST = 40.0
# Ink below this share of the strongest stroke is background texture and is dropped.
NOISE_FLOOR = 0.1
# Pixels at least this dark (share of the strongest stroke) define the bounding box.
BOX_THRESHOLD = 0.25

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageInputError(SeqMNISTError):
    """An input image is missing, unreadable or not an image."""


class BlankImageError(ImageInputError):
    """The image has no ink: nothing to classify."""


# Far above any digit worth reading (a phone photo is ~12 MP), far below what would cost
# gigabytes as the float arrays of preprocessing (PIL alone refuses only past ~179 MP).
MAX_FILE_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 25_000_000


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as float grayscale ``(H, W)`` in 0..255.

    Transparent areas are filled with the colour opposite to the strokes, so both a dark
    and a light digit on a transparent background stay visible.
    """
    p = Path(path)
    fix = "Fix: pass a PNG, JPEG or BMP picture of one digit."
    if not p.exists():
        raise ImageInputError(f"{p}: no such file or directory.")
    if p.is_dir():
        raise ImageInputError(f"{p} is a directory, not an image.")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ImageInputError(
            f"{p} is {size / 2**20:.0f} MB; pictures up to {MAX_FILE_BYTES // 2**20} MB are "
            "read. Fix: scale the picture down (a digit needs a few hundred pixels a side)."
        )
    try:
        with Image.open(p) as im:
            w, h = im.size  # from the header: nothing decoded yet
            if w * h > MAX_PIXELS:
                raise ImageInputError(
                    f"{p} is {w}x{h} pixels ({w * h / 1e6:.0f} MP); pictures up to "
                    f"{MAX_PIXELS / 1e6:.0f} MP are read. Fix: scale the picture down (a digit "
                    "needs a few hundred pixels a side)."
                )
            im.load()  # decode now: a truncated file fails here, not later
            img = ImageOps.exif_transpose(im)  # phone photos store their rotation in EXIF
    except UnidentifiedImageError:
        raise ImageInputError(f"{p} is not an image file that can be read. {fix}") from None
    except Image.DecompressionBombError as e:
        raise ImageInputError(f"{p} is too large to read safely ({e}). {fix}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageInputError(
            f"{p} could not be decoded; the file is truncated or corrupt "
            f"({' '.join(str(e).split())[:160]}). {fix}"
        ) from None
    return to_gray(img)


def to_gray(img: Image.Image) -> np.ndarray:
    """Any PIL image -> float grayscale ``(H, W)`` in 0..255."""
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max()
        return arr * (255.0 / top) if top > 255 else arr
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255.0
        lum = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float64)
        if alpha.min() < 1.0:
            weight = alpha.sum()
            ink = (alpha * lum).sum() / weight if weight > 0 else 0.0
            background = 255.0 if ink < 128 else 0.0
            return alpha * lum + (1.0 - alpha) * background
        return lum
    return np.asarray(img.convert("L"), dtype=np.float64)


def mnist_like(gray: np.ndarray) -> np.ndarray:
    """A grayscale digit of any size -> uint8 ``(28, 28)``, white digit on black, as MNIST.

    Raises :class:`BlankImageError` when there is no ink to classify.
    """
    g = np.asarray(gray, dtype=np.float64)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"expected a 2-D grayscale array, got shape {g.shape}")
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    background = float(np.median(border))
    # MNIST is light ink on a dark background: invert dark-on-light pictures.
    if background > 127.5:
        g, background = 255.0 - g, 255.0 - background
    ink = np.clip(g - background, 0.0, None)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise BlankImageError(
            f"blank image: no ink found (the darkest/lightest mark differs from the "
            f"background by {peak:.0f} of 255, under {MIN_CONTRAST:.0f})"
        )
    ink /= peak  # strongest stroke -> 1, so faint pencil and bold marker look alike
    ink[ink < NOISE_FLOOR] = 0.0
    rows = np.flatnonzero((ink >= BOX_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink >= BOX_THRESHOLD).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    h, w = crop.shape
    scale = BOX / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    # LANCZOS on the float image: anti-aliased like MNIST's, for both shrinking and growing.
    small = Image.fromarray(crop.astype(np.float32)).resize(
        (new_w, new_h), Image.Resampling.LANCZOS
    )
    box = np.clip(np.asarray(small, dtype=np.float64), 0.0, 1.0)

    # Place the box so its centre of mass lands on pixel index 14 = 28 / 2, where MNIST's
    # own digits have theirs (their mean centre of mass is ~(14.0, 14.0) in pixel indices).
    # Whole-pixel shifts, as MNIST's: a sub-pixel shift would blur the strokes (re-making
    # real MNIST digits then matches them with median correlation 0.97 instead of 0.9997).
    mass = box.sum()
    ys, xs = np.indices(box.shape)
    cy = (ys * box).sum() / mass if mass > 0 else (new_h - 1) / 2
    cx = (xs * box).sum() / mass if mass > 0 else (new_w - 1) / 2
    # Clamped so no ink is pushed out of the field.
    top = int(np.clip(round(SIDE / 2 - cy), 0, SIDE - new_h))
    left = int(np.clip(round(SIDE / 2 - cx), 0, SIDE - new_w))
    field = np.zeros((SIDE, SIDE), dtype=np.float64)
    field[top : top + new_h, left : left + new_w] = box
    return np.round(field * 255.0).astype(np.uint8)


def preprocess(source: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    """Any digit picture -> the uint8 ``(28, 28)`` a model reads: a file path, a PIL image,
    or an array (``(H, W)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, as a drawing
    canvas gives it). The one preprocessing of ``predict`` and the demo.

    Raises :class:`ImageInputError` (:class:`BlankImageError` when there is no ink).
    """
    if isinstance(source, str | Path):
        return mnist_like(load_image(source))
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3) or source.size == 0:
            raise ImageInputError(
                f"expected an 8-bit picture (H, W[, 3 or 4]), got an array of shape "
                f"{source.shape} and type {source.dtype}."
            )
        source = Image.fromarray(source)
    if not isinstance(source, Image.Image):
        raise ImageInputError(f"expected a picture, got {type(source).__name__}.")
    return mnist_like(to_gray(source))


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
