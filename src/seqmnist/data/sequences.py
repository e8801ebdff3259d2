"""How a 28x28 image becomes a sequence: rows, columns, pixels, permuted pixels or patches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seqmnist.core.checks import Rule
from seqmnist.core.errors import ConfigError
from seqmnist.data.idx import IMAGE_SIDE, PIXELS

SEQUENCE_MODES = ("row", "column", "pixel", "permuted", "patch")
# What one time step reads, in words (reports and the demo): "after 14 rows".
STEP_NAMES = {
    "row": "rows",
    "column": "columns",
    "pixel": "pixels",
    "permuted": "pixels",
    "patch": "steps",
}
_DIVISORS = [d for d in range(1, PIXELS + 1) if PIXELS % d == 0]
STEP_PIXELS = Rule(
    lambda v: isinstance(v, int) and not isinstance(v, bool) and v in _DIVISORS,
    "an integer that divides 784 (" + ", ".join(map(str, _DIVISORS)) + ")",
)


def check_step_pixels(sequence: str, step_pixels: object) -> None:
    """``data.step_pixels`` matters (and must divide 784) only in patch mode."""
    if sequence == "patch" and not STEP_PIXELS.ok(step_pixels):
        raise ConfigError(
            f"data.step_pixels={step_pixels!r} is not allowed with data.sequence=patch; "
            f"data.step_pixels must be {STEP_PIXELS.allowed}."
        )


def step_size(sequence: str, step_pixels: int = IMAGE_SIDE) -> int:
    """Pixels read per time step in a sequence mode (the network's ``input_size``)."""
    return {"row": IMAGE_SIDE, "column": IMAGE_SIDE, "patch": step_pixels}.get(sequence, 1)


def permutation(seed: int) -> torch.Tensor:
    """The fixed pixel order of permuted mode for ``seed``."""
    return torch.randperm(PIXELS, generator=torch.Generator().manual_seed(seed))


def sequence_view(
    images: torch.Tensor,
    mode: str = "row",
    step_pixels: int = 28,
    permutation: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lay out ``(N, 28, 28)`` images as ``(N, T, F)`` sequences (a contiguous copy).

    row: 28 steps of a row; column: 28 steps of a column; pixel: 784 steps of 1 pixel in
    raster order; permuted: the pixel sequence reordered by ``permutation``; patch: the
    raster order cut into ``784 / step_pixels`` steps of ``step_pixels`` pixels.
    """
    n = images.shape[0]
    if mode == "row":
        seq = images
    elif mode == "column":
        seq = images.transpose(1, 2)
    elif mode == "pixel":
        seq = images.reshape(n, PIXELS, 1)
    elif mode == "permuted":
        if permutation is None:
            raise ValueError("permuted mode needs a permutation")
        seq = images.reshape(n, PIXELS)[:, permutation].unsqueeze(-1)
    elif mode == "patch":
        seq = images.reshape(n, PIXELS // step_pixels, step_pixels)
    else:
        raise ValueError(f"unknown sequence mode {mode!r}")
    return seq.contiguous()


def image_view(
    seqs: torch.Tensor,
    mode: str = "row",
    permutation: torch.Tensor | None = None,
) -> torch.Tensor:
    """The inverse of :func:`sequence_view`: ``(N, T, F)`` sequences -> ``(N, 28, 28)``."""
    n = seqs.shape[0]
    if mode == "column":
        return seqs.transpose(1, 2).contiguous()
    if mode == "permuted":
        if permutation is None:
            raise ValueError("permuted mode needs a permutation")
        flat = torch.empty_like(seqs.reshape(n, PIXELS))
        flat[:, permutation.to(seqs.device)] = seqs.reshape(n, PIXELS)
        return flat.reshape(n, IMAGE_SIDE, IMAGE_SIDE)
    if mode in ("row", "pixel", "patch"):  # raster order, cut into steps
        return seqs.reshape(n, IMAGE_SIDE, IMAGE_SIDE)
    raise ValueError(f"unknown sequence mode {mode!r}")


def to_inputs(
    images: torch.Tensor,
    mode: str = "row",
    step_pixels: int = 28,
    permutation: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 images ``(N, 28, 28)`` -> float sequences in [0, 1] laid out in ``mode``.

    The one conversion used for training, evaluation and prediction alike.
    """
    scaled = images.to(torch.float32).div_(255.0)
    return sequence_view(scaled, mode, step_pixels, permutation)


@dataclass(frozen=True)
class Layout:
    """How images become a model's input: the sequence mode, the pixels per step (patch
    mode), the pixel order (permuted mode). Training, evaluation and prediction share it."""

    sequence: str = "row"
    step_pixels: int = IMAGE_SIDE
    permutation: torch.Tensor | None = None

    @property
    def input_size(self) -> int:
        """Features per time step."""
        return step_size(self.sequence, self.step_pixels)

    @property
    def seq_len(self) -> int:
        return PIXELS // self.input_size

    def describe(self) -> str:
        """How one image becomes the input, in words (export's JSON, the demo)."""
        return {
            "row": "28 steps, one image row (28 pixels) a step, top to bottom",
            "column": "28 steps, one image column (28 pixels) a step, left to right",
            "pixel": "784 steps, one pixel a step in raster order",
            "permuted": "784 steps, one pixel a step in the order of 'permutation'",
            "patch": f"{self.seq_len} steps of {self.input_size} pixels in raster order",
        }[self.sequence]

    def to_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 28, 28)`` -> float ``(N, T, F)`` in [0, 1]."""
        return to_inputs(images, self.sequence, self.step_pixels, self.permutation)

    def to_images(self, inputs: torch.Tensor) -> torch.Tensor:
        """float ``(N, T, F)`` -> float ``(N, 28, 28)``: the images the inputs were made from."""
        return image_view(inputs, self.sequence, self.permutation)

    def from_images(self, images: torch.Tensor) -> torch.Tensor:
        """float ``(N, 28, 28)`` -> ``(N, T, F)`` (:meth:`to_inputs` without the scaling)."""
        return sequence_view(images, self.sequence, self.step_pixels, self.permutation)
