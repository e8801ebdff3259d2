"""Write a checkpoint's network as ONNX or TorchScript, with the JSON that says how to feed
it, and check the file against the checkpoint on real test images.

``<name>.onnx`` / ``<name>.pt`` take ``sequences`` (float32 ``(batch, T, F)``, pixels / 255
laid out as in training) and give ``probabilities`` ``(batch, classes)`` and
``step_logits`` ``(batch, T, classes)``; the batch axis is dynamic. ``<name>.json`` holds
the layout (sequence mode, step size, pixel order), the class names and the check's result.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqmnist.core.errors import SeqMNISTError
from seqmnist.inference.checkpoints import LoadedCheckpoint
from seqmnist.inference.predictor import ExportedPredictor
from seqmnist.models import describe
from seqmnist.models.exportable import INPUT_NAME, OUTPUT_NAMES, AnytimeOutputs

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # max abs difference of any probability, exported vs checkpoint
ONNX_OPSET = 18


class ExportError(SeqMNISTError):
    """The export could not be written, or it does not match the checkpoint."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(
            f"format={fmt!r} is not an export format. Fix: format=onnx or format=torchscript."
        )
    return fmt


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """The ONNX exporter logs each graph pass at INFO; a user needs only the outcome."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def write_model(loaded: LoadedCheckpoint, fmt: str, path: Path) -> None:
    """Trace the network (float32, CPU) into ``path``."""
    wrapper = AnytimeOutputs(loaded.model.net.float().cpu())
    example = torch.zeros(2, loaded.data.seq_len, loaded.data.input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        if _version("onnxscript") is None or _version("onnx") is None:
            raise ExportError(
                "format=onnx needs the onnx and onnxscript packages, an optional extra. Fix: "
                "make install-extras (or pip install -e '.[export]')."
            )
        with warnings.catch_warnings(), quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):
            warnings.simplefilter("ignore")  # torch.export's notes on the traced graph
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                opset_version=ONNX_OPSET,
                dynamo=True,
                external_data=False,  # one file: these networks are kilobytes to megabytes
                verbose=False,
            )
    else:
        with warnings.catch_warnings():
            # torch.jit is deprecated in favour of torch.export, but it is still what C++
            # (libtorch) and many serving stacks load; trace follows the standard RNN path.
            warnings.simplefilter("ignore", FutureWarning)
            # nn.RNNBase's own input checks read tensors as Python bools; they don't shape
            # the graph (the tests run the traced file at other batch sizes).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        traced.save(str(path))


def sidecar(loaded: LoadedCheckpoint, fmt: str, path: Path) -> dict[str, Any]:
    """What a user of the file needs to turn an image into its input."""
    data = loaded.data
    perm = data.permutation
    return {
        "format": fmt,
        "file": path.name,
        "model": describe(loaded.net),
        "dataset": data.dataset,
        "class_names": list(data.class_names),
        "checkpoint": str(loaded.path),
        "inputs": {
            INPUT_NAME: {"dtype": "float32", "shape": ["batch", data.seq_len, data.input_size]}
        },
        "outputs": {
            "probabilities": {
                "shape": ["batch", len(data.class_names)],
                "meaning": "softmax after the whole sequence",
            },
            "step_logits": {
                "shape": ["batch", data.seq_len, len(data.class_names)],
                "meaning": "the head's logits after each step (anytime curve)",
            },
        },
        "anytime": not loaded.bidirectional,
        "preprocessing": {
            "image": "28x28 uint8, white digit on black as in MNIST (any other picture: "
            "seqmnist.data.images.preprocess makes it so)",
            "scale": "float32 pixel / 255",
            "sequence": data.sequence,
            "step_pixels": data.step_pixels,
            "seq_len": data.seq_len,
            "input_size": data.input_size,
            "layout": data.describe(),
            "permutation": perm.tolist() if perm is not None else None,
        },
        "opset": ONNX_OPSET if fmt == "onnx" else None,
        "torch": torch.__version__,
    }


@torch.inference_mode()
def parity(loaded: LoadedCheckpoint, path: Path, images: np.ndarray) -> dict[str, Any]:
    """Run ``images`` through the exported file and through the checkpoint's network as
    training and evaluation run it (``forward``, ``step_logits``); the largest differences."""
    exported = ExportedPredictor(path)
    net = loaded.model.net.eval()
    x = loaded.data.to_inputs(torch.as_tensor(images))
    probs, steps = net(x).softmax(-1).numpy(), net.step_logits(x).numpy()
    got_probs, got_steps = exported.outputs(x.numpy())
    return {
        "images": int(len(images)),
        "max_abs_diff_probabilities": float(np.abs(got_probs - probs).max()),
        "max_abs_diff_step_logits": float(np.abs(got_steps - steps).max()),
        "same_top_class": float((got_probs.argmax(-1) == probs.argmax(-1)).mean()),
        "tolerance": TOLERANCE,
        "runtime": f"onnxruntime {_version('onnxruntime')}"
        if path.suffix == ".onnx"
        else f"torch.jit {torch.__version__}",
    }


def export(
    loaded: LoadedCheckpoint, fmt: str, path: Path, images: np.ndarray | None
) -> dict[str, Any]:
    """Write ``path`` and its JSON; check them on ``images`` (uint8 ``(N, 28, 28)``).

    Raises :class:`ExportError` when the exported probabilities or step logits differ by
    more than :data:`TOLERANCE` (the files stay, their JSON says ``"passed": false``).
    """
    check_format(fmt)
    started = time.perf_counter()
    write_model(loaded, fmt, path)
    meta = sidecar(loaded, fmt, path)
    meta["export_seconds"] = round(time.perf_counter() - started, 2)
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(meta, indent=2) + "\n")  # the check reads it back
    if images is None:
        meta["verified"] = None
    else:
        check = parity(loaded, path, images)
        worst = max(check["max_abs_diff_probabilities"], check["max_abs_diff_step_logits"])
        check["passed"] = worst <= TOLERANCE
        meta["verified"] = check
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    if meta["verified"] and not meta["verified"]["passed"]:
        check = meta["verified"]
        raise ExportError(
            f"{path}: the exported model differs from the checkpoint on {len(images)} test "
            f"images by up to {check['max_abs_diff_probabilities']:.2e} in probability and "
            f"{check['max_abs_diff_step_logits']:.2e} in step logits (tolerance {TOLERANCE:g}); "
            "do not use it. Please report this with the JSON beside it."
        )
    return meta
