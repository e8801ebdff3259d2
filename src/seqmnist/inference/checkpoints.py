"""Load a trained model back from a Lightning checkpoint, safely and with clear errors.

Shared by ``seqmnist.evaluate`` and ``seqmnist.predict``. A checkpoint is read with
``torch.load(weights_only=True)``: our hyper-parameters are plain containers, so nothing
in a checkpoint written by ``seqmnist.train`` needs unpickling of arbitrary objects, and a
file that does is refused instead of being run.

Where things live:

* the network's settings: ``hyper_parameters`` (``SeqClassifier``'s plain dicts);
* the weights: ``state_dict`` (keys ``net.*``);
* the data settings (dataset, sequence mode, ...): ``datamodule_hyper_parameters``, which
  Lightning saves with the checkpoint;
* the permuted mode's pixel order: the data module's state, saved by Lightning under its
  class name (``SeqMNISTDataModule``).
"""

from __future__ import annotations

import inspect
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from seqmnist.core.errors import SeqMNISTError
from seqmnist.core.rundir import LAST_CKPT, RunDir
from seqmnist.data import DATASETS, PIXELS, SEQUENCE_MODES, SeqMNISTDataModule
from seqmnist.data.sequences import Layout
from seqmnist.models import SeqClassifier, describe


class CheckpointError(SeqMNISTError):
    """A checkpoint path is missing, unreadable, unsafe or not a seqmnist model."""


_FIX = (
    "Fix: pass ckpt_path / --ckpt a .ckpt file written by `python -m seqmnist.train` "
    "(outputs/train/runs/<run>/checkpoints/*.ckpt) or that run's directory."
)
# ModelCheckpoint's file name (conf/callbacks/model_checkpoint.yaml) carries the score.
_SCORE = re.compile(r"val_acc_(\d+(?:\.\d+)?)\.ckpt$")


@dataclass(frozen=True, kw_only=True)
class DataSettings(Layout):
    """How the checkpoint's model reads images: its layout (sequence mode, step size, pixel
    order: ``input_size``, ``seq_len``, ``to_inputs`` as in training), dataset and classes."""

    dataset: str
    class_names: list[str]
    # Every SeqMNISTDataModule argument known for the run (batch sizes, split, root, ...).
    datamodule_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where the settings were read from, for messages

    def datamodule(self, **overrides: Any) -> SeqMNISTDataModule:
        """A data module laid out like the training run's, with this checkpoint's pixel order."""
        accepted = inspect.signature(SeqMNISTDataModule.__init__).parameters
        kwargs = {k: v for k, v in self.datamodule_kwargs.items() if k in accepted}
        kwargs.update(
            dataset=self.dataset, sequence=self.sequence, step_pixels=self.step_pixels, **overrides
        )
        dm = SeqMNISTDataModule(**kwargs)
        if self.permutation is not None:
            dm.load_state_dict({"permutation": self.permutation})
        return dm


@dataclass
class LoadedCheckpoint:
    """A checkpoint's model (eval mode) with everything needed to feed and describe it."""

    model: SeqClassifier
    data: DataSettings
    path: Path  # the .ckpt actually loaded
    run_dir: Path | None  # the training run's directory, when the checkpoint sits in one
    hparams: dict[str, Any]

    @property
    def net(self) -> dict[str, Any]:
        return dict(self.hparams.get("net") or {})

    @property
    def bidirectional(self) -> bool:
        return bool(self.net.get("bidirectional", False))

    def describe(self) -> str:
        """E.g. ``lstm 1x128, mnist row``."""
        return f"{describe(self.net)}, {self.data.dataset} {self.data.sequence}"

    def label(self) -> str:
        """Which model this is, to tell two apart in one report: the run's experiment (else
        its directory, else the file), the net, and the steps it was trained on; e.g.
        ``anytime_row: lstm 1x128, trained on every step (linear)``."""
        run = RunDir(self.run_dir) if self.run_dir else None
        name = (run.experiment() or run.path.name) if run else self.path.stem
        loss = self.hparams.get("anytime_loss", "none")
        trained = "its last step" if loss == "none" else f"every step ({loss})"
        return f"{name}: {describe(self.net)}, trained on {trained}"


# -- locating the checkpoint ------------------------------------------------------------
def _score(path: Path) -> float:
    m = _SCORE.search(path.name)
    return float(m.group(1)) if m else float("-inf")


def resolve_checkpoint(path: str | Path) -> Path:
    """The ``.ckpt`` file meant by ``path``: the file itself, or a run directory's best one.

    For a run directory (or its ``checkpoints/``) the best checkpoint is ``best_ckpt``
    from ``metrics.json`` (looked up by name under ``checkpoints/`` if the run was moved),
    else the ``epoch_*-val_acc_*.ckpt`` with the highest score, else ``last.ckpt``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p} does not exist. {_FIX}")
    if p.is_file():
        return p
    run = RunDir.given(p)
    if run.metrics_file.is_file():
        try:
            best = (run.read_metrics() or {}).get("best_ckpt")
        except (ValueError, UnicodeDecodeError):
            best = None  # a damaged metrics.json: fall back to the file names
        if best:
            # Looked up by name: best_ckpt is absolute and the run may have been moved or
            # copied, and the file in this directory is the one meant.
            candidate = run.checkpoints / Path(str(best)).name
            if candidate.is_file():
                return candidate
    ckpts = run.checkpoint_files()
    if not ckpts:
        ckpts = sorted(p.glob("*.ckpt"))
    if not ckpts:
        jobs = sorted(q.parent.name for q in p.glob("*/checkpoints"))
        hint = (
            f" It looks like a multirun sweep: pass one job's directory, e.g. {p / jobs[0]}."
            if jobs
            else ""
        )
        raise CheckpointError(
            f"no checkpoint in directory {p}: expected checkpoints/*.ckpt there.{hint} {_FIX}"
        )
    scored = [c for c in ckpts if _score(c) > float("-inf")]
    if scored:
        return max(scored, key=_score)
    last = [c for c in ckpts if c.name == LAST_CKPT]
    return last[0] if last else ckpts[-1]


# -- reading it -------------------------------------------------------------------------
def read_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``, every failure turned into one clear message."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint. {_FIX}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load fails on garbage with many types (KeyError, ...)
        text = " ".join(str(e).split())
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if isinstance(e, pickle.UnpicklingError) and found:
            # A real pickle that references a class or function. Never retried with
            # weights_only=False: unpickling it would run code named by the file.
            raise CheckpointError(
                f"{path} stores Python objects other than tensors and plain containers "
                f"(it references {found.group(1)}), so it was not loaded: unpickling them "
                "could run arbitrary code. Checkpoints written by `python -m seqmnist.train` "
                f"hold only plain values; this file was written by something else. {_FIX}"
            ) from None
        # Leave out torch's advice to retry with weights_only=False: not for unknown files.
        operand = re.search(r"Unsupported operand \S+", text)
        detail = operand.group(0) if operand else f"{type(e).__name__}: {text[:160]}"
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint, or is truncated or corrupt "
            f"(torch.load: {detail}). {_FIX}"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path} holds a {type(ckpt).__name__}, not a Lightning checkpoint dict. {_FIX}"
        )
    hparams = ckpt.get("hyper_parameters")
    if (
        not isinstance(ckpt.get("state_dict"), dict)
        or not isinstance(hparams, dict)
        or not isinstance(hparams.get("net"), dict)
    ):
        raise CheckpointError(
            f"{path} is a PyTorch file but not a seqmnist checkpoint: it has no SeqClassifier "
            f"hyper-parameters ('hyper_parameters' with a 'net' dict) and 'state_dict' "
            f"(top-level keys: {sorted(map(str, ckpt))[:8]}). {_FIX}"
        )
    return ckpt


def build_model(path: Path, ckpt: dict[str, Any]) -> SeqClassifier:
    """``SeqClassifier(**hyper_parameters)`` with the checkpoint's network weights, in eval mode."""
    hparams = dict(ckpt["hyper_parameters"])
    accepted = inspect.signature(SeqClassifier.__init__).parameters
    try:
        model = SeqClassifier(**{k: v for k, v in hparams.items() if k in accepted})
    except Exception as e:  # bad values inside hparams surface as many exception types
        raise CheckpointError(
            f"{path}: its SeqClassifier hyper-parameters do not build a model "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}). {_FIX}"
        ) from None
    # Only the network's weights matter here; metric states (val_acc_best) may come and go.
    weights = {k[4:]: v for k, v in ckpt["state_dict"].items() if str(k).startswith("net.")}
    expected = model.net.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and (not torch.is_tensor(weights[k]) or weights[k].shape != v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing weights {missing[:4]}")
        if unexpected:
            parts.append(f"unexpected weights {unexpected[:4]}")
        if shapes:
            parts.append(f"shape mismatch (file vs model) {shapes[:3]}")
        raise CheckpointError(
            f"{path}: its weights do not fit the model its hyper-parameters describe "
            f"({model_summary(hparams)}): {'; '.join(parts)}. The file belongs to another model "
            f"or was edited. {_FIX}"
        )
    model.net.load_state_dict(weights)
    model.eval()
    return model


def model_summary(hparams: dict[str, Any]) -> str:
    return (
        f"{describe(hparams.get('net') or {})}, input_size {hparams.get('input_size', 28)}, "
        f"{hparams.get('num_classes', 10)} classes"
    )


# -- data settings ----------------------------------------------------------------------
def data_settings(path: Path, ckpt: dict[str, Any]) -> DataSettings:
    """How the checkpoint's model was fed: the data module's settings and state, which
    Lightning saves in every checkpoint that ``seqmnist.train`` writes."""
    dm_hparams = ckpt.get("datamodule_hyper_parameters")
    if not (isinstance(dm_hparams, dict) and "sequence" in dm_hparams):
        raise CheckpointError(
            f"{path} does not say how its model reads images (no data module settings, "
            f"'datamodule_hyper_parameters', in the checkpoint). {_FIX}"
        )
    kwargs, source = dict(dm_hparams), f"{path} (datamodule_hyper_parameters)"
    kwargs.pop("_target_", None)
    dataset = kwargs.get("dataset", "mnist")
    sequence = kwargs.get("sequence", "row")
    step_pixels = int(kwargs.get("step_pixels", 28))
    if dataset not in DATASETS or sequence not in SEQUENCE_MODES:
        raise CheckpointError(
            f"{path}: unknown data settings in {source}: dataset={dataset!r}, "
            f"sequence={sequence!r} (known: {sorted(DATASETS)}, {list(SEQUENCE_MODES)})."
        )

    permutation = None
    if sequence == "permuted":
        state = ckpt.get(SeqMNISTDataModule.__qualname__)
        permutation = state.get("permutation") if isinstance(state, dict) else None
        if not (
            torch.is_tensor(permutation)
            and permutation.shape == (PIXELS,)
            and torch.equal(permutation.sort().values, torch.arange(PIXELS))
        ):
            raise CheckpointError(
                f"{path}: the saved pixel order of permuted mode is not a permutation of "
                f"0..{PIXELS - 1}; the checkpoint is damaged. {_FIX}"
            )
        permutation = permutation.long()

    hp = ckpt["hyper_parameters"]
    class_names = hp.get("class_names") or DATASETS[dataset][1]
    settings = DataSettings(
        dataset=dataset,
        sequence=sequence,
        step_pixels=step_pixels,
        permutation=permutation,
        class_names=[str(c) for c in class_names],
        datamodule_kwargs=kwargs,
        source=source,
    )
    # The model's input width must match the layout, else its answers would be garbage.
    if int(hp.get("input_size", 28)) != settings.input_size:
        raise CheckpointError(
            f"{path}: the model reads {hp.get('input_size')} values per step but the data "
            f"settings from {source} ({sequence!r} mode) give {settings.input_size}. "
            "The checkpoint and its run directory do not belong together."
        )
    if int(hp.get("num_classes", 10)) != len(settings.class_names):
        raise CheckpointError(
            f"{path}: the model has {hp.get('num_classes')} outputs but "
            f"{len(settings.class_names)} class names. {_FIX}"
        )
    return settings


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Load ``path`` (a ``.ckpt`` or a run directory) with its data settings.

    Raises :class:`CheckpointError` with a message naming the file and the fix.
    """
    ckpt_path = resolve_checkpoint(path)
    ckpt = read_checkpoint(ckpt_path)
    run = RunDir.of_checkpoint(ckpt_path)
    model = build_model(ckpt_path, ckpt)
    settings = data_settings(ckpt_path, ckpt)
    return LoadedCheckpoint(
        model=model,
        data=settings,
        path=ckpt_path,
        run_dir=run.path if run else None,
        hparams=dict(ckpt["hyper_parameters"]),
    )


def load_model(path: str | Path) -> tuple[SeqClassifier, DataSettings]:
    """``(SeqClassifier in eval mode, data settings)`` of a checkpoint or run directory."""
    loaded = load_checkpoint(path)
    return loaded.model, loaded.data
