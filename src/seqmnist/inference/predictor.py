"""One way to run a trained model on images, whatever file holds it: a Lightning checkpoint
(``.ckpt`` or a run directory) or an exported network (``.onnx``, or TorchScript ``.pt``,
with the JSON that ``seqmnist.export`` writes beside it). ``predict`` and the demo use it."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from seqmnist.core.errors import ConfigError
from seqmnist.data import DATASETS, PIXELS, SEQUENCE_MODES
from seqmnist.inference.checkpoints import CheckpointError, DataSettings, load_checkpoint
from seqmnist.inference.early_exit import CHUNK, check_threshold, exit_steps, read_until_sure
from seqmnist.models.exportable import AnytimeOutputs

EXPORTED_SUFFIXES = (".onnx", ".pt")
_FIX = (
    "Fix: pass a .ckpt or run directory written by `python -m seqmnist.train`, or a .onnx / "
    ".pt written by `python -m seqmnist.export` with its .json beside it."
)


@dataclass(frozen=True)
class Answer:
    """A model's answer for one batch of images: final probabilities ``(N, C)`` and the
    probabilities after each step ``(N, T, C)``."""

    probabilities: np.ndarray
    step_probabilities: np.ndarray


@dataclass(frozen=True)
class EarlyAnswer:
    """Answers under early exit: the probabilities each image answered with ``(N, C)`` and
    the 1-based step at which it answered ``(N,)``."""

    probabilities: np.ndarray
    steps: np.ndarray


def refuse_early_exit(predictor: Predictor, threshold: Any) -> float:
    """The threshold checked, for a model that has early answers (else a ConfigError)."""
    value = check_threshold(threshold, "--threshold")
    if not predictor.anytime:
        raise ConfigError(
            f"{predictor.path}: early exit needs a unidirectional model; this one is "
            "bidirectional, so its answer after each step has read the whole image. Fix: "
            "drop --threshold, or use a model trained with bidirectional=false."
        )
    return value


def early_from_steps(answer: Answer, threshold: float) -> EarlyAnswer:
    """Early exit read off a full pass's per-step probabilities (no compute saved)."""
    steps_p = torch.from_numpy(answer.step_probabilities)
    steps = exit_steps(steps_p.max(-1).values, threshold)
    probs = steps_p[torch.arange(len(steps)), steps - 1]
    return EarlyAnswer(probs.numpy(), steps.numpy())


class Predictor(Protocol):
    data: DataSettings
    path: Path
    anytime: bool  # step k's answer has read only k steps (False for bidirectional nets)

    def describe(self) -> str: ...

    def answer(self, images: np.ndarray) -> Answer:
        """uint8 ``(N, 28, 28)`` MNIST-like images -> :class:`Answer`."""
        ...

    def answer_early(self, images: np.ndarray, threshold: float, chunk: int = CHUNK) -> EarlyAnswer:
        """uint8 ``(N, 28, 28)`` images -> each one's answer once its top probability
        reaches ``threshold`` (:mod:`seqmnist.inference.early_exit`; ``chunk``: steps read
        a call where the model is read step by step)."""
        ...


class CheckpointPredictor:
    """A checkpoint's model, in eval mode on the CPU."""

    def __init__(self, path: str | Path) -> None:
        self.loaded = load_checkpoint(path)
        self.data, self.path = self.loaded.data, self.loaded.path
        self.anytime = not self.loaded.bidirectional
        self._outputs = AnytimeOutputs(self.loaded.model.net)

    def describe(self) -> str:
        return self.loaded.describe()

    @torch.inference_mode()
    def answer(self, images: np.ndarray) -> Answer:
        x = self.data.to_inputs(torch.as_tensor(images))
        probs, steps = self._outputs(x)
        return Answer(probs.numpy(), steps.softmax(-1).numpy())

    def answer_early(self, images: np.ndarray, threshold: float, chunk: int = CHUNK) -> EarlyAnswer:
        """Batched: an image that has answered leaves the batch, so the saving is real."""
        threshold = refuse_early_exit(self, threshold)
        x = self.data.to_inputs(torch.as_tensor(images))
        probs, steps = read_until_sure(self.loaded.model.net, x, threshold, chunk)
        return EarlyAnswer(probs.numpy(), steps.numpy())


def read_sidecar(model_file: Path) -> tuple[dict[str, Any], DataSettings]:
    """The JSON ``seqmnist.export`` wrote beside ``model_file`` (same name, ``.json``), and
    the layout it describes."""
    sidecar = model_file.with_suffix(".json")
    if not sidecar.is_file():
        hint = " (a Lightning checkpoint must be named .ckpt)" if model_file.suffix == ".pt" else ""
        raise CheckpointError(
            f"{model_file}: its {sidecar.name} is missing, so how to lay out an image for "
            f"it is unknown{hint}. Export again, or copy the .json with the model. {_FIX}"
        )
    try:
        meta = json.loads(sidecar.read_text())
        pre = meta["preprocessing"]
        assert pre["sequence"] in SEQUENCE_MODES and meta["dataset"] in DATASETS
        perm = pre.get("permutation")
        assert perm is None or sorted(perm) == list(range(PIXELS))
        settings = DataSettings(
            dataset=meta["dataset"],
            sequence=pre["sequence"],
            step_pixels=int(pre["step_pixels"]),
            permutation=torch.tensor(perm, dtype=torch.long) if perm is not None else None,
            class_names=[str(c) for c in meta["class_names"]],
            source=str(sidecar),
        )
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise CheckpointError(
            f"{sidecar} is not the JSON that seqmnist.export writes, or it was edited "
            f"({type(e).__name__}: {e}). Export again. {_FIX}"
        ) from None
    return meta, settings


class ExportedPredictor:
    """An exported network: ONNX through onnxruntime, TorchScript through ``torch.jit``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"model not found: {self.path} does not exist. {_FIX}")
        self.meta, self.data = read_sidecar(self.path)
        self.anytime = bool(self.meta.get("anytime", True))
        # float32 (N, T, F) array -> (probabilities, step_logits) arrays, as the file gives them
        self.outputs = _onnx_runner(self.path) if self.path.suffix == ".onnx" else _jit(self.path)

    def describe(self) -> str:
        return f"{self.meta.get('model', '?')}, {self.data.dataset} {self.data.sequence}"

    def answer(self, images: np.ndarray) -> Answer:
        x = self.data.to_inputs(torch.as_tensor(images)).numpy()
        probs, steps = self.outputs(x)
        return Answer(probs, torch.from_numpy(steps).softmax(-1).numpy())

    def answer_early(self, images: np.ndarray, threshold: float, chunk: int = CHUNK) -> EarlyAnswer:
        """From the exported file's per-step outputs: the same answers as a checkpoint's,
        but every step is computed (an exported graph reads the whole sequence; ``chunk``
        does not apply)."""
        return early_from_steps(self.answer(images), refuse_early_exit(self, threshold))


def _onnx_runner(path: Path) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError(
            f"{path}: running an ONNX model needs onnxruntime, an optional extra. Fix: make "
            "install-extras (or pip install -e '.[export]')."
        ) from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise CheckpointError(
            f"{path} is not an ONNX model onnxruntime can load, or it is damaged "
            f"({' '.join(str(e).split())[:200]}). {_FIX}"
        ) from None
    name = session.get_inputs()[0].name
    return lambda x: tuple(session.run(None, {name: x}))


def _jit(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a TorchScript model torch.jit.load can read, or it is damaged "
            f"({' '.join(str(e).split())[:200]}). {_FIX}"
        ) from None

    @torch.inference_mode()
    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, steps = module(torch.from_numpy(x))
        return probs.numpy(), steps.numpy()

    return run


def load_predictor(path: str | Path) -> Predictor:
    """The predictor for ``path``: an exported model by its suffix, else a checkpoint."""
    p = Path(path)
    if p.suffix in EXPORTED_SUFFIXES:
        return ExportedPredictor(p)
    return CheckpointPredictor(p)
