"""Figures: an evaluation's confusion matrices, confidently wrong digits and anytime curve;
a sweep's accuracy against size.

Matplotlib runs on the Agg backend (files only, no display needed on servers and in CI).
Each function returns the Figure so callers can both save it and send it to TensorBoard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no GUI toolkit on training machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def confusion_figure(
    matrix: np.ndarray, class_names: Sequence[str], normalized: bool, title: str
) -> Figure:
    """Heat map of a confusion matrix (rows: true class, columns: predicted), values written in."""
    n = len(class_names)
    size = max(5.0, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalized else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=list(class_names), rotation=45 if _long(class_names) else 0)
    ax.set_yticks(range(n), labels=list(class_names))
    if _long(class_names):
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = float(matrix.max()) if matrix.size else 0.0
    for i in range(n):
        for j in range(n):
            value = matrix[i, j]
            text = f"{value:.2f}" if normalized else f"{int(value)}"
            if normalized and value < 0.005:
                text = "0"
            # White text on dark cells, so every number stays readable.
            dark = value > (0.5 if normalized else top / 2)
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7 if n <= 10 else 5,
                color="white" if dark else "black",
            )
    fig.tight_layout()
    return fig


def errors_figure(
    images: np.ndarray,
    titles: Sequence[str],
    suptitle: str,
) -> Figure:
    """A grid of 28x28 digits, each with its title (``true -> predicted (p)``)."""
    n = len(titles)
    if n == 0:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
        ax.set_title(suptitle, fontsize=10)
        return fig
    cols = min(n, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    width = 2.0 if max(len(t) for t in titles) > 20 else 1.6
    fig, axes = plt.subplots(rows, cols, figsize=(cols * width, rows * 1.75 + 0.6), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(titles[k], fontsize=8)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def anytime_figure(
    accuracy: Sequence[float],
    final_accuracy: float,
    num_classes: int,
    title: str,
    note: str | None = None,
    step_name: str = "rows",
) -> Figure:
    """Accuracy when the answer is taken after the first k of T steps, k = 1..T."""
    t = len(accuracy)
    k = np.arange(1, t + 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(k, np.asarray(accuracy), marker="o" if t <= 60 else None, markersize=3, label="anytime")
    ax.axhline(final_accuracy, color="tab:green", ls="--", lw=1, label="model's answer")
    accuracy_axes(ax, num_classes, (0.5, t + 0.5), f"{step_name} read (k of T={t})", title)
    if note:
        # Bidirectional models: the curve must not be read as an early answer.
        ax.text(
            0.02,
            0.97,
            note,
            transform=ax.transAxes,
            fontsize=7.5,
            va="top",
            color="tab:red",
            wrap=True,
        )
    fig.tight_layout()
    return fig


def early_exit_figure(
    models: Sequence[dict[str, Any]], num_classes: int, title: str, step_name: str = "rows"
) -> Figure:
    """Early exit's accuracy against mean steps read, one frontier per model.

    Each entry of ``models``: ``model`` (its name), ``points`` and ``frontier`` (rows of
    threshold, accuracy, mean_steps) and ``area``, as ``evaluate`` reports them.
    """
    fig, ax = plt.subplots(figsize=(7, 4.4))
    steps = models[0]["steps"]
    for i, m in enumerate(models):
        color = f"C{i}"
        pts = m["points"]
        ax.scatter(
            [q["mean_steps"] for q in pts],
            [q["accuracy"] for q in pts],
            s=12,
            color=color,
            alpha=0.5,
        )
        front = m["frontier"]
        ax.plot(
            [q["mean_steps"] for q in front],
            [q["accuracy"] for q in front],
            color=color,
            lw=2,
            marker="o",
            markersize=4,
            label=f"{m['model']} (area {m['area']:.3f})",
        )
        for q in front:
            if q["threshold"] in (0.5, 0.9, 0.99, 0.999, 1.0):
                ax.annotate(
                    f"{q['threshold']:g}",
                    (q["mean_steps"], q["accuracy"]),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                    color=color,
                )
    xlabel = f"mean {step_name} read (of {steps}); labels: threshold"
    # Room on the right for the last threshold label.
    accuracy_axes(ax, num_classes, (0, steps * 1.05), xlabel, title, legend="lower right")
    fig.tight_layout()
    return fig


def accuracy_axes(
    ax: Any,
    num_classes: int,
    xlim: tuple[float, float],
    xlabel: str,
    title: str,
    legend: str = "best",
) -> None:
    """Test accuracy (0 to 1) against steps read, with the chance line, grid and legend."""
    ax.axhline(1.0 / num_classes, color="gray", ls=":", lw=1, label="chance")
    ax.set_xlim(*xlim)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=8)
    ax.set_title(title, fontsize=10)


def save(fig: Figure, path: str, close: bool = True) -> None:
    """Write ``fig`` as PNG; free it unless it is still needed (pyplot keeps figures alive)."""
    fig.savefig(path, dpi=120)
    if close:
        plt.close(fig)


def _long(names: Sequence[str]) -> bool:
    return max((len(n) for n in names), default=0) > 2


def sweep_figure(rows: Sequence[dict], keys: Sequence[str], path: str) -> None:
    """A sweep's test accuracy against parameters (a marker per cell), one panel per swept
    key; written to ``path``. ``rows`` are jobs with a ``test/acc``."""
    import matplotlib.ticker

    panels = ["params", *[k for k in keys if k not in ("params", "cell", "seed")]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    markers = {"rnn": "o", "lstm": "s", "gru": "^"}
    for ax, key in zip(axes[0], panels, strict=True):
        values = sorted({str(r.get(key)) for r in rows}, key=_natural)
        for cell in sorted({str(r.get("cell")) for r in rows}):
            pts = [r for r in rows if str(r.get("cell")) == cell]
            if key == "params":
                xs = [r.get("params") or 0 for r in pts]
            else:
                xs = [values.index(str(r.get(key))) for r in pts]
            ys = [100 * r["test/acc"] for r in pts]
            ax.scatter(xs, ys, marker=markers.get(cell, "x"), label=cell, alpha=0.8)
        if key == "params":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(key)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(title="cell")
    fig.suptitle(f"{len(rows)} completed jobs")
    fig.tight_layout()
    save(fig, path)


def _natural(s: str) -> tuple:
    try:
        return (0, float(s), "")
    except ValueError:
        return (1, 0.0, s)
