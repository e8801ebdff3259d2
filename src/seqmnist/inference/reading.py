"""What a sequence model makes of one picture as it reads it: the answer after every step
(the anytime view), and pictures of the reading for the demo page.

:func:`read` preprocesses exactly as ``predict`` does (:func:`seqmnist.data.images.preprocess`)
and asks any :class:`~seqmnist.inference.predictor.Predictor` (checkpoint or exported file).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from seqmnist.data.images import preprocess
from seqmnist.data.sequences import STEP_NAMES, Layout
from seqmnist.inference.early_exit import exit_steps
from seqmnist.inference.predictor import Predictor

SCALE = 10  # screen pixels per image pixel in the pictures of the reading
READ = np.array([255, 170, 0], dtype=np.float64)  # the step being read: amber
# Pixels not read yet are dimmed to this share of their brightness.
UNREAD = 0.25


@dataclass(frozen=True)
class Reading:
    """One picture read by a model: the 28x28 it saw, the final probabilities ``(C,)``, the
    probabilities after each step ``(T, C)``, and how long reading took."""

    image: np.ndarray
    probabilities: np.ndarray
    step_probabilities: np.ndarray
    class_names: list[str]
    layout: Layout
    anytime: bool  # False for a bidirectional net: its per-step answers have read everything
    seconds: float

    @property
    def steps(self) -> int:
        return len(self.step_probabilities)

    @property
    def step_name(self) -> str:
        return STEP_NAMES.get(self.layout.sequence, "steps")

    def top(self, k: int = 3, step: int | None = None) -> dict[str, float]:
        """The ``k`` most likely classes (name -> probability), finally or after ``step``
        steps (1-based)."""
        probs = self.probabilities if step is None else self.step_probabilities[step - 1]
        order = np.argsort(-probs)[:k]
        return {self.class_names[i]: float(probs[i]) for i in order}

    def answer_step(self, threshold: float) -> int:
        """The 1-based step at which early exit at ``threshold`` answers
        (:mod:`seqmnist.inference.early_exit`): the first whose top probability reaches it."""
        top = torch.from_numpy(self.step_probabilities).max(-1).values
        return int(exit_steps(top[None], threshold)[0])


def read(predictor: Predictor, picture: Any) -> Reading:
    """Preprocess ``picture`` (path, PIL image or array) as ``predict`` does and read it.

    Raises :class:`~seqmnist.data.images.ImageInputError` for a blank or unreadable picture.
    """
    started = time.perf_counter()
    image = preprocess(picture)
    answer = predictor.answer(image[None])
    return Reading(
        image=image,
        probabilities=answer.probabilities[0],
        step_probabilities=answer.step_probabilities[0],
        class_names=list(predictor.data.class_names),
        layout=predictor.data,
        anytime=predictor.anytime,
        seconds=time.perf_counter() - started,
    )


def pixels_read(layout: Layout, steps: int) -> np.ndarray:
    """Which pixels the first ``steps`` time steps have read: int ``(28, 28)``, 0 unread,
    1 read before, 2 read in the last of those steps."""
    order = torch.zeros(1, layout.seq_len, layout.input_size)
    order[0, :steps] = 1.0
    if steps > 0:
        order[0, steps - 1] = 2.0
    return layout.to_images(order)[0].numpy().astype(np.int64)


def frame(reading: Reading, steps: int, scale: int = SCALE) -> Image.Image:
    """The 28x28 as the model sees it after ``steps`` steps: pixels read so far as they are,
    the step just read in amber, the rest dimmed."""
    state = pixels_read(reading.layout, steps)
    gray = reading.image.astype(np.float64)[..., None].repeat(3, axis=-1)
    rgb = np.where(state[..., None] == 0, gray * UNREAD, gray)
    current = state == 2
    rgb[current] = 0.45 * rgb[current] + 0.55 * READ
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return img.resize((28 * scale, 28 * scale), Image.Resampling.NEAREST)


def enlarged(image: np.ndarray, scale: int = SCALE) -> Image.Image:
    """The 28x28 the model reads, enlarged without smoothing."""
    size = (image.shape[1] * scale, image.shape[0] * scale)
    return Image.fromarray(image).resize(size, Image.Resampling.NEAREST)


def write_gif(reading: Reading, path: Path, max_frames: int = 28, ms: int = 120) -> Path:
    """An animated GIF of the reading: the step being read moves through the image."""
    t = reading.steps
    marks = sorted({max(1, round(t * (i + 1) / max_frames)) for i in range(min(t, max_frames))})
    frames = [frame(reading, k) for k in marks]
    frames.append(enlarged(reading.image).convert("RGB"))  # the whole digit, read
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=ms, loop=0, optimize=False
    )
    return path


def curve(
    reading: Reading, step: int | None = None, classes: int = 3, threshold: float | None = None
) -> Figure:
    """The anytime curve: each likely class's probability after every step (the best other
    class dashed), with a marker at ``step``, and with ``threshold`` the step at which early
    exit answers (green) and the threshold itself (dotted).

    Made without pyplot, so a long-running page that draws one per request keeps no
    figures alive.
    """
    probs, names = reading.step_probabilities, list(reading.class_names)
    shown = list(reading.top(classes))
    t = len(probs)
    fig = Figure(figsize=(6.4, 3.4), dpi=100)
    ax = fig.subplots()
    x = np.arange(1, t + 1)
    for name in shown:
        ax.plot(x, probs[:, names.index(name)], label=name, linewidth=2)
    others = [i for i, n in enumerate(names) if n not in shown]
    if others:
        ax.plot(
            x,
            probs[:, others].max(axis=1),
            color="0.7",
            linestyle="--",
            linewidth=1,
            label="best other",
        )
    if step is not None:
        ax.axvline(step, color="#ffaa00", linewidth=2)
    if threshold is not None and reading.anytime:
        at = reading.answer_step(threshold)
        ax.axhline(threshold, color="0.4", linestyle=":", linewidth=1)
        ax.axvline(
            at,
            color="tab:green",
            linestyle="--",
            linewidth=2,
            label=f"answers (p >= {threshold:g})",
        )
    ax.set_xlim(1, t)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"{reading.step_name} read (of {t})")
    ax.set_ylabel("probability")
    if reading.anytime:
        title = "the answer after each step"
    else:
        title = "per-step answers (bidirectional: every step has seen the whole image)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    fig.tight_layout()
    return fig
