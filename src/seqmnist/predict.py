"""Classify digit pictures with a trained checkpoint.

Usage:
  python -m seqmnist.predict --ckpt PATH [--json] [--top K] [--threshold P]
                             [--save-preprocessed DIR] IMAGE_OR_DIR...

PATH is a .ckpt file or a training run's directory (its best checkpoint is used), or a
network exported by seqmnist.export (.onnx, or TorchScript .pt, with its .json). Each
input is a PNG, JPEG or BMP file of any size or colour, or a directory whose image files
are all classified. Every picture is converted the way MNIST's digits were made: grayscale,
inverted when the background is light, cropped to the digit, scaled so the longer side is
20 px inside 28x28 (aspect kept), centred by centre of mass; then laid out as a sequence
in the checkpoint's own mode (rows, columns, pixels, permuted pixels or patches).

Prints the top classes with probabilities per image (class names for Fashion-MNIST
checkpoints); --json prints one JSON document instead. With --threshold P (early exit)
each image is read step by step until its top probability reaches P, and the line says
after which row (column, pixel, ...) it answered; with a checkpoint, images read together
leave the batch as they answer, so fewer steps are computed (an exported .onnx/.pt computes
every step and answers the same). A blank picture, an unreadable or
non-image file, or an empty directory is reported as an error naming the file; the other
inputs are still classified, and the exit status is 2 if any input failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from seqmnist.core.errors import SeqMNISTError
from seqmnist.data.images import (
    IMAGE_SUFFIXES,
    BlankImageError,
    ImageInputError,
    image_files,
    preprocess,
)
from seqmnist.data.sequences import STEP_NAMES
from seqmnist.inference.early_exit import never_sure
from seqmnist.inference.predictor import Predictor, load_predictor, refuse_early_exit
from seqmnist.shell import command


def expand_inputs(args: list[str]) -> list[tuple[str, Path | ImageInputError]]:
    """Each argument -> the files to classify, or the error that stands in for it."""
    items: list[tuple[str, Path | ImageInputError]] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            files = image_files(p)
            if not files:
                items.append(
                    (
                        arg,
                        ImageInputError(
                            f"{p} is a directory with no image files in it (looked for "
                            f"{', '.join(IMAGE_SUFFIXES)}; subfolders are not searched). "
                            "Fix: pass the image files, or the folder that holds them."
                        ),
                    )
                )
            items.extend((str(f), f) for f in files)
        elif p.exists():
            items.append((arg, p))
        else:
            items.append((arg, ImageInputError(f"{p}: no such file or directory.")))
    return items


def preprocessed_name(path: Path, used: set[str]) -> str:
    """``<stem>.png``, numbered when two inputs share a stem."""
    name, n = f"{path.stem}.png", 1
    while name in used:
        name, n = f"{path.stem}_{n}.png", n + 1
    used.add(name)
    return name


def top_classes(predictor: Predictor, probs: np.ndarray, top: int) -> list[dict[str, Any]]:
    """Probabilities ``(C,)`` -> the ``top`` most likely classes, best first."""
    values, indices = torch.from_numpy(probs).topk(min(top, probs.size))
    names = predictor.data.class_names
    return [
        {"class": names[int(i)], "index": int(i), "probability": float(v)}
        for v, i in zip(values, indices, strict=True)
    ]


# Images answered together: large enough to amortise each step's call, small in memory.
BATCH = 512


def answer_all(
    predictor: Predictor, images: list[np.ndarray], top: int, threshold: float | None
) -> list[dict[str, Any]]:
    """Each image's top classes (and, under early exit, the step it answered at), in
    batches of :data:`BATCH`."""
    out: list[dict[str, Any]] = []
    steps_total = predictor.data.seq_len
    for start in range(0, len(images), BATCH):
        batch = np.stack(images[start : start + BATCH])
        if threshold is None:
            probs = predictor.answer(batch).probabilities
            out += [{"top": top_classes(predictor, p, top)} for p in probs]
            continue
        early = predictor.answer_early(batch, threshold)
        for p, k in zip(early.probabilities, early.steps, strict=True):
            out.append(
                {
                    "top": top_classes(predictor, p, top),
                    "early_exit": {"threshold": threshold, "step": int(k), "steps": steps_total},
                }
            )
    return out


def run(
    ckpt: str,
    inputs: list[str],
    top: int = 3,
    save_dir: str | None = None,
    threshold: float | None = None,
) -> tuple[Predictor, list[dict[str, Any]]]:
    """Classify every input; one result dict per image or failed input (never raises for
    a bad input, only for a bad model file, threshold or output folder)."""
    predictor = load_predictor(ckpt)
    if threshold is not None:
        threshold = refuse_early_exit(predictor, threshold)
    out = Path(save_dir) if save_dir else None
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ImageInputError(
                f"--save-preprocessed {out}: cannot create that folder ({e.strerror}). "
                "Fix: pass a writable folder."
            ) from None
    used: set[str] = set()
    results: list[dict[str, Any]] = []
    images: list[np.ndarray] = []
    answered: list[dict[str, Any]] = []  # the results that wait for their answer
    for label, item in expand_inputs(inputs):
        if isinstance(item, ImageInputError):
            results.append({"input": label, "ok": False, "error": str(item)})
            continue
        try:
            image = preprocess(item)
        except BlankImageError as e:
            results.append(
                {
                    "input": label,
                    "ok": False,
                    "blank": True,
                    "error": f"{item}: {e}. Nothing was classified. Fix: check that the "
                    "file shows a digit (dark on light or light on dark).",
                }
            )
            continue
        except ImageInputError as e:
            results.append({"input": label, "ok": False, "error": str(e)})
            continue
        result: dict[str, Any] = {"input": label, "ok": True}
        if out is not None:
            target = out / preprocessed_name(item, used)
            Image.fromarray(image).save(target)
            result["preprocessed"] = str(target)
        results.append(result)
        images.append(image)
        answered.append(result)
    for result, answer in zip(answered, answer_all(predictor, images, top, threshold), strict=True):
        result.update(answer)
    return predictor, results


def format_result(result: dict[str, Any], step_name: str = "rows") -> str:
    """One line: ``digit.png: 7 (0.971)  1 (0.012)  9 (0.008)``, and under early exit
    ``  [after row 12 of 28, p >= 0.99]``."""
    ranked = "  ".join(f"{t['class']} ({t['probability']:.3f})" for t in result["top"])
    early = result.get("early_exit")
    if early:
        one, thr = step_name.removesuffix("s"), early["threshold"]
        unsure = never_sure(early["step"], early["steps"], result["top"][0]["probability"], thr)
        ranked += (
            f"  [answered after {one} {early['step']} of {early['steps']} at p >= {thr:g}"
            f"{'; never that sure, so read to the end' if unsure else ''}]"
        )
    return f"{result['input']}: {ranked}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m seqmnist.predict",
        # The docstring minus its title and usage block (argparse prints its own usage).
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--ckpt",
        required=True,
        metavar="PATH",
        help="a .ckpt written by seqmnist.train, or its run directory (best checkpoint used), "
        "or a .onnx/.pt written by seqmnist.export",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of them"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--top", type=int, default=3, metavar="K", help="how many classes to list (default 3)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="P",
        help="early exit: stop reading an image once its top probability reaches P, in "
        "(0, 1] (1 reads everything), and say after which row it answered",
    )
    parser.add_argument(
        "--save-preprocessed",
        metavar="DIR",
        help="write the 28x28 image the model saw for each input to DIR/<name>.png",
    )
    return parser


@command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        build_parser().error("--top must be at least 1")
    try:
        predictor, results = run(
            args.ckpt, args.inputs, args.top, args.save_preprocessed, args.threshold
        )
    except SeqMNISTError as e:
        if args.json:  # the document a script reads, beside the error line
            print(json.dumps({"ok": False, "error": str(e)}, indent=2))
        raise
    failed = [r for r in results if not r["ok"]]
    if args.json:
        for r in failed:
            print(f"error: {r['error']}", file=sys.stderr)
        doc = {
            "ok": not failed,
            "checkpoint": str(predictor.path),
            "model": predictor.describe(),
            "dataset": predictor.data.dataset,
            "sequence": predictor.data.sequence,
            "results": results,
            "failed": len(failed),
        }
        print(json.dumps(doc, indent=2))
    else:
        print(f"checkpoint: {predictor.path} ({predictor.describe()})", flush=True)
        step_name = STEP_NAMES.get(predictor.data.sequence, "steps")
        # In input order; errors on stderr so a pipe of stdout holds only predictions.
        for r in results:
            if r["ok"]:
                print(format_result(r, step_name), flush=True)
            else:
                print(f"error: {r['error']}", file=sys.stderr, flush=True)
    if failed:
        print(f"{len(failed)} of {len(results)} inputs failed.", file=sys.stderr)
        return SeqMNISTError.EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
