"""Speed of early exit: ``python -m seqmnist.bench.early_exit --ckpt RUN`` (``make
bench-early-exit CKPT=RUN``).

Times ``predict``'s answering on the full test set (already 28x28, so no picture
preprocessing), in batches, three ways, alternated for a few rounds so machine drift hits
all alike:

* **all rows**: ``predict`` without a threshold: one pass of the recurrent layers over
  every step (oneDNN's whole-sequence kernel);
* **early exit**: ``predict --threshold P``: a few rows a call (``--chunk``, 4), images that
  have answered leave the batch (:func:`seqmnist.inference.early_exit.read_until_sure`);
* **early exit, one row a call**: the same, one step per call of the recurrent layers;
* **stepping, all rows**: ``--chunk`` rows a call with a threshold of 1 (nobody leaves):
  what reading in pieces costs before anything is saved.

Prints a Markdown table (median images/s, mean rows read, accuracy) and the line
``bench: early_exit/all_rows = R``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from seqmnist.core.errors import SeqMNISTError
from seqmnist.core.internals import quiet_console
from seqmnist.data import default_data_root, load_split
from seqmnist.data.sequences import STEP_NAMES
from seqmnist.inference.early_exit import CHUNK, check_threshold
from seqmnist.inference.predictor import CheckpointPredictor, refuse_early_exit


def answer_set(
    answer: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], images: np.ndarray, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes and steps read for every image, ``batch`` images a call."""
    preds, steps = [], []
    for start in range(0, len(images), batch):
        probs, read = answer(images[start : start + batch])
        preds.append(probs.argmax(-1))
        steps.append(read)
    return np.concatenate(preds), np.concatenate(steps)


def main(argv: list[str] | None = None) -> int:
    """The bench; a bad checkpoint, threshold or model is one ``error:`` line, status 2."""
    try:
        return bench(argv)
    except SeqMNISTError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.EXIT_CODE


def bench(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seqmnist.bench.early_exit", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--ckpt", required=True, help="a .ckpt or a training run's directory")
    parser.add_argument("--threshold", type=float, default=0.99, help="early exit's (0.99)")
    parser.add_argument("--root", default=default_data_root(), help="data root (%(default)s)")
    parser.add_argument("--batch", type=int, default=512, help="images a call (as predict)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    parser.add_argument("--chunk", type=int, default=CHUNK, help=f"rows a call ({CHUNK})")
    parser.add_argument("--out", default="outputs/bench/early_exit.json")
    args = parser.parse_args(argv)
    if min(args.batch, args.rounds, args.chunk) < 1:
        parser.error("--batch, --rounds and --chunk must be at least 1")
    threshold = check_threshold(args.threshold, "--threshold")
    quiet_console()
    predictor = CheckpointPredictor(args.ckpt)
    refuse_early_exit(predictor, threshold)  # a bidirectional model: one message, exit 2
    step_name = STEP_NAMES.get(predictor.data.sequence, "steps")
    images, labels = load_split(args.root, predictor.data.dataset, "test")
    images, targets = images.numpy(), labels.numpy()
    t = predictor.data.seq_len

    def all_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return predictor.answer(x).probabilities, np.full(len(x), t)

    def stepping(p: float, chunk: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            early = predictor.answer_early(x, p, chunk)
            return early.probabilities, early.steps

        return run

    ways = {
        "all rows": all_rows,
        f"early exit, p >= {threshold:g}": stepping(threshold, args.chunk),
        f"early exit, p >= {threshold:g}, one row a call": stepping(threshold, 1),
        f"stepping {args.chunk} rows a call, all rows": stepping(1.0, args.chunk),
    }
    speeds: dict[str, list[float]] = {name: [] for name in ways}
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for way in ways.values():  # warm-up
        answer_set(way, images[: args.batch], args.batch)
    for _ in range(args.rounds):
        for name, way in ways.items():
            started = time.perf_counter()
            found[name] = answer_set(way, images, args.batch)
            speeds[name].append(len(images) / (time.perf_counter() - started))
    base = statistics.median(speeds["all rows"])
    rows = []
    for name in ways:
        preds, steps = found[name]
        rows.append(
            {
                "way": name,
                "images_per_s": statistics.median(speeds[name]),
                "images_per_s_rounds": speeds[name],
                "vs_all_rows": statistics.median(speeds[name]) / base,
                "mean_steps": float(steps.mean()),
                "p90_steps": float(np.percentile(steps, 90)),
                "accuracy": float((preds == targets).mean()),
            }
        )
    print(f"{predictor.describe()} on {len(images):,} test images, batch {args.batch}, "
          f"{args.chunk} rows a call, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds")  # fmt: skip
    print(
        f"| way | images/s (median) | vs all rows | mean {step_name} | p90 {step_name} | accuracy |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['way']} | {r['images_per_s']:,.0f} | {r['vs_all_rows']:.2f} | "
            f"{r['mean_steps']:.2f} | {r['p90_steps']:g} | {100 * r['accuracy']:.2f}% |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"checkpoint": str(predictor.path), "threshold": threshold, "rows": rows}, indent=2
        )
        + "\n"
    )
    print(f"bench: early_exit/all_rows = {rows[1]['vs_all_rows']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
