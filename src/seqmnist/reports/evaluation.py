"""A checkpoint's test-set evaluation: computed as data by :func:`compute`, then written by
one writer per format (:func:`write_all` calls them all).

Written to the evaluation's directory:

* ``eval.json`` / ``eval.md``: accuracy, loss, per-class precision/recall/F1/accuracy;
* ``confusion_matrix{,_normalized}.{csv,png}``: rows are true classes, columns predictions;
* ``confident_errors.{png,csv}``: the most confidently wrong test images;
* ``anytime.{csv,png}``: accuracy when the model answers after only the first k of T steps,
  from the per-step outputs of one forward pass;
* ``early_exit.{csv,png}``: early exit (:mod:`seqmnist.inference.early_exit`) at each
  threshold of a grid: accuracy, mean and 90th-percentile steps read, the frontier and the
  area under it; beside another model's (``compare=RUN``) when given;
* ``tensorboard/``: the same numbers and figures for TensorBoard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassStatScores,
)

from seqmnist.core.errors import ConfigError
from seqmnist.data import default_data_root, load_split
from seqmnist.data.sequences import STEP_NAMES
from seqmnist.inference import early_exit
from seqmnist.inference.checkpoints import LoadedCheckpoint, load_checkpoint
from seqmnist.reports import plots
from seqmnist.reports.tables import write_csv

BIDIRECTIONAL_NOTE = (
    "Bidirectional model: this curve is NOT an early answer. At step k the backward "
    "direction has already read steps k..T, so every point has seen the whole image."
)
FILES = {
    "json": "eval.json",
    "markdown": "eval.md",
    "confusion_csv": "confusion_matrix.csv",
    "confusion_normalized_csv": "confusion_matrix_normalized.csv",
    "confusion_png": "confusion_matrix.png",
    "confusion_normalized_png": "confusion_matrix_normalized.png",
    "errors_png": "confident_errors.png",
    "errors_csv": "confident_errors.csv",
    "anytime_csv": "anytime.csv",
    "anytime_png": "anytime.png",
    "early_exit_csv": "early_exit.csv",
    "early_exit_png": "early_exit.png",
    "tensorboard": "tensorboard",
}


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given (``cpu``, ``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a torch device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA GPU is available; use device=cpu")
    return device


# -- compute ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepAnswers:
    """A model's answers on a test set from one pass: final logits ``(N, C)``, targets
    ``(N,)``, and after every step the top probability ``(N, T)`` and class ``(N, T)``."""

    logits: torch.Tensor
    targets: torch.Tensor
    confidence: torch.Tensor
    predictions: torch.Tensor

    @property
    def step_correct(self) -> torch.Tensor:
        """How many images each step's answer classifies right, ``(T,)``."""
        return (self.predictions == self.targets[:, None]).sum(0)


@torch.inference_mode()
def predict_test_set(loaded: LoadedCheckpoint, loader: Any, device: torch.device) -> StepAnswers:
    """One pass over ``loader``: the final answers and the answer after every step."""
    net = loaded.model.net.to(device).eval()
    logits_all, targets_all, conf_all, pred_all = [], [], [], []
    for x, y in loader:
        x = x.to(device)
        steps = net.step_logits(x)  # (B, T, C): the anytime answers, one forward pass
        # Unidirectional: the last step's logits are the model's answer (same pass).
        # Bidirectional: the answer also reads the backward direction's final state.
        logits = net(x) if loaded.bidirectional else steps[:, -1]
        conf, pred = steps.float().softmax(-1).max(-1)
        conf_all.append(conf.cpu())
        pred_all.append(pred.to(torch.int16).cpu())  # (N, T): small even for 784 pixels
        logits_all.append(logits.float().cpu())
        targets_all.append(y)
    if not logits_all:
        raise ConfigError("the test set is empty; nothing to evaluate")
    return StepAnswers(
        torch.cat(logits_all),
        torch.cat(targets_all),
        torch.cat(conf_all),
        torch.cat(pred_all).long(),
    )


def early_exit_report(
    answers: StepAnswers, thresholds: list[float], budget: float, num_classes: int
) -> dict[str, Any]:
    """Early exit over ``thresholds``: each point, the frontier, its area, and the most
    accurate point reading at most ``budget`` steps on average."""
    points = early_exit.exit_points(
        answers.confidence, answers.predictions, answers.targets, thresholds
    )
    steps = int(answers.confidence.shape[1])
    within = early_exit.point_within(points, budget)
    front = early_exit.frontier(points)
    return {
        "steps": steps,
        "points": [
            {**row, "on_frontier": point in front}
            for row, point in zip(early_exit.as_rows(points), points, strict=True)
        ],
        "frontier": early_exit.as_rows(front),
        "area": early_exit.frontier_area(points, steps, num_classes),
        "budget": budget,
        "within_budget": early_exit.as_rows([within])[0] if within else None,
    }


def class_metrics(
    logits: torch.Tensor, targets: torch.Tensor, class_names: list[str]
) -> dict[str, Any]:
    """Overall and per-class metrics and the confusion matrices (torchmetrics)."""
    c = len(class_names)
    preds = logits.argmax(-1)
    stats = MulticlassStatScores(c, average=None)(preds, targets)  # (C, 5): tp fp tn fn support
    tp, fp, tn, fn, support = (stats[:, i] for i in range(5))
    precision = MulticlassPrecision(c, average=None)(preds, targets)
    recall = MulticlassRecall(c, average=None)(preds, targets)
    f1 = MulticlassF1Score(c, average=None)(preds, targets)
    per_class = [
        {
            "class": name,
            "index": i,
            "support": int(support[i]),
            "correct": int(tp[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            # One-vs-rest: (TP + TN) / N. The share of the class's own images read right
            # (torchmetrics' per-class MulticlassAccuracy) is the recall.
            "accuracy": float((tp[i] + tn[i]) / (tp[i] + fp[i] + tn[i] + fn[i])),
        }
        for i, name in enumerate(class_names)
    ]
    return {
        # Exact ratio (torchmetrics computes in float32: 0.105 would read 0.10499999672).
        "accuracy": int((preds == targets).sum()) / max(1, targets.numel()),
        "loss": float(F.cross_entropy(logits, targets)),
        "correct": int((preds == targets).sum()),
        "precision_macro": float(MulticlassPrecision(c, average="macro")(preds, targets)),
        "recall_macro": float(MulticlassRecall(c, average="macro")(preds, targets)),
        "f1_macro": float(MulticlassF1Score(c, average="macro")(preds, targets)),
        "per_class": per_class,
        "confusion_matrix": MulticlassConfusionMatrix(c)(preds, targets).tolist(),
        # Rows divided by their totals: recall on the diagonal (a class with no images: 0).
        "confusion_matrix_normalized": MulticlassConfusionMatrix(c, normalize="true")(
            preds, targets
        ).tolist(),
    }


def confident_errors(
    logits: torch.Tensor, targets: torch.Tensor, names: list[str], count: int
) -> list[dict[str, Any]]:
    """The ``count`` most confidently wrong predictions, most confident first."""
    probs = logits.softmax(-1)
    conf, preds = probs.max(-1)
    wrong = (preds != targets).nonzero().flatten()
    worst = wrong[conf[wrong].argsort(descending=True)][:count].tolist()
    return [
        {
            "index": i,
            "true": names[int(targets[i])],
            "predicted": names[int(preds[i])],
            "probability": float(conf[i]),
            "probability_true": float(probs[i, targets[i]]),
        }
        for i in worst
    ]


def compute(
    loaded: LoadedCheckpoint,
    root: str | Path,
    batch_size: int = 1000,
    device: str = "auto",
    num_errors: int = 25,
    download: bool = True,
    thresholds: Any = None,
    budget: float | None = None,
    compare: LoadedCheckpoint | None = None,
) -> dict[str, Any]:
    """Evaluate a loaded checkpoint on the full test set under ``root``; returns what
    ``eval.json`` holds (plus nothing else: the writers take everything from it).

    ``thresholds``: early exit's grid (None: ``early_exit.DEFAULT_THRESHOLDS``); ``budget``:
    the mean steps read allowed for the headline early-exit point (None: 5/7 of the steps,
    20 of 28 rows); ``compare``: another model whose frontier is reported beside.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"data.eval_batch_size={batch_size!r} must be an integer >= 1")
    if not isinstance(num_errors, int) or num_errors < 0:
        raise ConfigError(f"num_errors={num_errors!r} must be an integer >= 0")
    grid = early_exit.check_thresholds(thresholds)
    number = isinstance(budget, (int, float)) and not isinstance(budget, bool)
    if budget is not None and not (number and budget > 0):
        raise ConfigError(
            f"early_exit.budget={budget!r} must be a number of steps > 0, or null (5/7 of "
            "the steps: 20 of 28 rows)"
        )
    dev = pick_device(device)
    data = loaded.data
    if compare is not None:  # before any pass: a mismatch costs nothing
        check_comparable(loaded, compare)
    if budget is None:
        budget = early_exit.default_budget(data.seq_len)

    def answers_of(model: LoadedCheckpoint) -> tuple[StepAnswers, Any]:
        dm = model.data.datamodule(root=str(root), eval_batch_size=batch_size, download=download)
        dm.prepare_data()
        dm.setup("test")
        return predict_test_set(model, dm.test_dataloader(), dev), dm

    answers, dm = answers_of(loaded)
    logits, targets, step_correct = answers.logits, answers.targets, answers.step_correct
    names = data.class_names
    n, t = int(targets.numel()), int(step_correct.numel())
    anytime_acc = (step_correct.double() / n).tolist()
    quarters = sorted({max(1, round(t * q / 4)) for q in range(1, 5)})
    early = not loaded.bidirectional
    exits = None
    if early:
        exits = {
            "model": loaded.label(),
            **early_exit_report(answers, grid, budget, len(names)),
            "compare": None,
        }
        if compare is not None:
            other, _ = answers_of(compare)
            label = compare.label()
            exits["compare"] = {
                "model": label if label != exits["model"] else f"{label} (compared)",
                "checkpoint": str(compare.path.resolve()),
                **early_exit_report(other, grid, budget, len(names)),
            }
    return {
        "checkpoint": str(loaded.path.resolve()),
        "run_dir": str(loaded.run_dir) if loaded.run_dir else None,
        "model": {
            "description": loaded.describe(),
            **loaded.net,
            "input_size": data.input_size,
            "num_classes": len(names),
            "params": sum(p.numel() for p in loaded.model.net.parameters()),
        },
        "data": {
            "dataset": data.dataset,
            "sequence": data.sequence,
            "step_pixels": data.step_pixels,
            "input_size": data.input_size,
            "seq_len": t,
            "root": str(Path(dm.root).expanduser().resolve()),
            "test_size": n,
            "class_names": names,
            "settings_from": data.source,
        },
        "metrics": class_metrics(logits, targets, names),
        "anytime": {
            "steps": t,
            "step_name": STEP_NAMES.get(data.sequence, "steps"),
            "early_answer": early,
            "note": None if early else BIDIRECTIONAL_NOTE,
            "accuracy": anytime_acc,
            "quarters": {str(k): anytime_acc[k - 1] for k in quarters},
        },
        # None for a bidirectional model: it has no early answer to stop at.
        "early_exit": exits,
        "confident_errors": confident_errors(logits, targets, names, num_errors),
        "files": {k: v for k, v in FILES.items() if early or not k.startswith("early_exit")},
    }


def check_comparable(loaded: LoadedCheckpoint, compare: LoadedCheckpoint) -> None:
    """``compare=`` needs two unidirectional models reading the same test set in as many
    steps."""
    other, steps = compare.data, loaded.data.seq_len
    problem = None
    if loaded.bidirectional:
        problem = "the model evaluated is bidirectional: it has no early-exit frontier"
    elif other.dataset != loaded.data.dataset:
        problem = f"it was trained on {other.dataset}, this on {loaded.data.dataset}"
    elif compare.bidirectional:
        problem = "it is bidirectional: it has no early answer to stop at"
    elif other.seq_len != steps:
        problem = f"it reads {other.seq_len} steps, this {steps}: frontiers need the same steps"
    if problem:
        raise ConfigError(
            f"compare={compare.path}: cannot put its early-exit frontier beside this one's: "
            f"{problem}. Fix: compare two unidirectional models of the same dataset and "
            "number of steps (e.g. a best_row run beside an anytime_row run)."
        )


# -- write --------------------------------------------------------------------------------
def markdown_report(result: dict[str, Any]) -> str:
    """``eval.md``: the headline numbers and the per-class table."""
    d, m = result["data"], result["metrics"]
    any_ = result["anytime"]
    lines = [
        f"# Evaluation: {result['model']['description']}",
        "",
        f"- checkpoint: `{result['checkpoint']}`",
        f"- test set: {d['dataset']} test split, {d['test_size']:,} images from `{d['root']}`, "
        f"read as {d['seq_len']} steps of {d['input_size']} pixels ({d['sequence']} mode)",
        f"- **accuracy {100 * m['accuracy']:.2f}%** ({m['correct']:,} / {d['test_size']:,}), "
        f"loss {m['loss']:.4f}",
        f"- macro precision {m['precision_macro']:.4f}, recall {m['recall_macro']:.4f}, "
        f"F1 {m['f1_macro']:.4f}",
        "",
        "## Per class",
        "",
        "| class | support | precision | recall | F1 | accuracy |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in m["per_class"]:
        lines.append(
            f"| {row['class']} | {row['support']} | {row['precision']:.4f} | "
            f"{row['recall']:.4f} | {row['f1']:.4f} | {row['accuracy']:.4f} |"
        )
    lines += [
        "",
        "Recall is the share of the class's test images classified correctly; accuracy is "
        "one-vs-rest, (TP + TN) / N. Confusion matrix: `confusion_matrix.csv` (rows: true "
        "class, columns: predicted) and `confusion_matrix.png`.",
        "",
        "## Anytime accuracy",
        "",
        f"Test accuracy when the model must answer after reading only the first k of "
        f"T = {any_['steps']} {any_['step_name']} (per-step outputs of one forward pass).",
        "",
    ]
    if not any_["early_answer"]:
        lines += [f"> **{BIDIRECTIONAL_NOTE}**", ""]
    lines += ["| k | accuracy |", "| ---: | ---: |"]
    for k, acc in any_["quarters"].items():
        lines.append(f"| {k} | {100 * acc:.2f}% |")
    lines += ["", "The whole curve: `anytime.csv`, `anytime.png`.", ""]
    lines += early_exit_markdown(result)
    lines += [
        f"## Most confidently wrong ({len(result['confident_errors'])} shown)",
        "",
        "`confident_errors.png`, titled `true -> predicted (probability)`; the list with test "
        "indices is in `confident_errors.csv`.",
        "",
    ]
    return "\n".join(lines)


def early_exit_models(result: dict[str, Any]) -> list[dict[str, Any]]:
    """This model's early-exit report, and the compared model's when there is one."""
    exits = result.get("early_exit")
    if not exits:
        return []
    return [exits] + ([exits["compare"]] if exits.get("compare") else [])


def within_budget(model: dict[str, Any], step_name: str) -> str:
    """The headline early-exit point of one model's report, in words."""
    q = model["within_budget"]
    if not q:
        return f"no threshold reads a mean of {model['budget']:g} {step_name} or fewer"
    return (
        f"{100 * q['accuracy']:.2f}% at a mean of {q['mean_steps']:.1f} {step_name} "
        f"(threshold {q['threshold']:g})"
    )


def early_exit_markdown(result: dict[str, Any]) -> list[str]:
    """``eval.md``'s early-exit section (none for a bidirectional model)."""
    models = early_exit_models(result)
    if not models:
        return []
    name = result["anytime"]["step_name"]
    lines = [
        "## Early exit",
        "",
        "Reading stops at the first step whose top probability reaches the threshold "
        f"(1 reads everything). Mean and 90th-percentile {name} read, test accuracy; "
        "`*`: on the frontier (no other threshold is as accurate with fewer steps). The "
        "area under the frontier (accuracy against the share of steps read, from chance "
        "at 0) sums the whole trade-off in one number, 1 at best.",
        "",
    ]
    for m in models:
        lines += [
            f"### {m['model']}: frontier area {m['area']:.4f}",
            "",
            f"Most accurate within a mean of {m['budget']:g} {name}: {within_budget(m, name)}.",
            "",
            f"| threshold | accuracy | mean {name} | p90 {name} | answered early |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for q in m["points"]:
            star = "*" if q["on_frontier"] else ""
            lines.append(
                f"| {q['threshold']:g}{star} | {100 * q['accuracy']:.2f}% | "
                f"{q['mean_steps']:.2f} | {q['p90_steps']:g} | {100 * q['early_share']:.1f}% |"
            )
        lines.append("")
    lines += ["All points: `early_exit.csv`; the frontiers: `early_exit.png`.", ""]
    return lines


def write_json(result: dict[str, Any], out: Path) -> None:
    (out / FILES["json"]).write_text(json.dumps(result, indent=2) + "\n")


def write_markdown(result: dict[str, Any], out: Path) -> None:
    (out / FILES["markdown"]).write_text(markdown_report(result))


def write_csvs(result: dict[str, Any], out: Path) -> None:
    names = result["data"]["class_names"]
    m, errors = result["metrics"], result["confident_errors"]
    header = ["true\\predicted", *names]
    write_csv(
        out / FILES["confusion_csv"],
        [[c, *r] for c, r in zip(names, m["confusion_matrix"], strict=True)],
        header,
    )
    write_csv(
        out / FILES["confusion_normalized_csv"],
        [
            [c, *(f"{v:.6f}" for v in r)]
            for c, r in zip(names, m["confusion_matrix_normalized"], strict=True)
        ],
        header,
    )
    write_csv(
        out / FILES["errors_csv"],
        [
            [
                r + 1,
                e["index"],
                e["true"],
                e["predicted"],
                f"{e['probability']:.6f}",
                f"{e['probability_true']:.6f}",
            ]
            for r, e in enumerate(errors)
        ],
        ["rank", "test_index", "true", "predicted", "probability", "probability_true"],
    )
    models = early_exit_models(result)
    if models:
        rows = []
        for m in models:
            rows += [
                [
                    m["model"],
                    f"{q['threshold']:g}",
                    f"{q['accuracy']:.6f}",
                    f"{q['mean_steps']:.4f}",
                    f"{q['p90_steps']:g}",
                    f"{q['early_share']:.6f}",
                    int(q["on_frontier"]),
                    f"{m['area']:.6f}",
                ]
                for q in m["points"]
            ]
        header = ["model", "threshold", "accuracy", "mean_steps", "p90_steps", "early_share"]
        write_csv(out / FILES["early_exit_csv"], rows, [*header, "on_frontier", "frontier_area"])
    step = result["data"]["input_size"]
    write_csv(
        out / FILES["anytime_csv"],
        [[k + 1, (k + 1) * step, f"{a:.6f}"] for k, a in enumerate(result["anytime"]["accuracy"])],
        ["k", "pixels_read", "accuracy"],
    )


def figures(result: dict[str, Any], root: str | Path) -> dict[str, Any]:
    """The evaluation's figures by their :data:`FILES` key (the error grid reads the test
    images under ``root``)."""
    m, any_ = result["metrics"], result["anytime"]
    names = result["data"]["class_names"]
    desc = result["model"]["description"]
    errors = result["confident_errors"]
    images, _ = load_split(root, result["data"]["dataset"], "test")
    wrong = m["correct"]
    title = f"{desc} | test acc {100 * m['accuracy']:.2f}%"
    figs = {
        "confusion_png": plots.confusion_figure(
            np.asarray(m["confusion_matrix"]), names, False, f"Confusion matrix: {title}"
        ),
        "confusion_normalized_png": plots.confusion_figure(
            np.asarray(m["confusion_matrix_normalized"]),
            names,
            True,
            "Confusion matrix, rows normalised (recall on the diagonal)",
        ),
        "errors_png": plots.errors_figure(
            images[[e["index"] for e in errors]].numpy(),
            [f"{e['true']} -> {e['predicted']} ({e['probability']:.2f})" for e in errors],
            f"Most confidently wrong of {result['data']['test_size'] - wrong:,} errors: "
            "true -> predicted (p)",
        ),
        "anytime_png": plots.anytime_figure(
            any_["accuracy"],
            m["accuracy"],
            len(names),
            f"Anytime accuracy: {desc}",
            note=any_["note"],
            step_name=any_["step_name"],
        ),
    }
    models = early_exit_models(result)
    if models:
        figs["early_exit_png"] = plots.early_exit_figure(
            models, len(names), f"Early exit: {desc}", step_name=any_["step_name"]
        )
    return figs


def write_tensorboard(result: dict[str, Any], out: Path, figs: dict[str, Any]) -> None:
    """Scalars, the Markdown report and the figures as TensorBoard events (closes ``figs``)."""
    # Imported here: only evaluation needs it, and it is slow to import.
    from torch.utils.tensorboard import SummaryWriter

    m = result["metrics"]
    with SummaryWriter(log_dir=str(out / FILES["tensorboard"])) as writer:
        writer.add_scalar("eval/acc", m["accuracy"])
        writer.add_scalar("eval/loss", m["loss"])
        for key in ("precision_macro", "recall_macro", "f1_macro"):
            writer.add_scalar(f"eval/{key}", m[key])
        for row in m["per_class"]:
            for key in ("precision", "recall", "f1", "accuracy"):
                writer.add_scalar(f"eval_class_{key}/{row['class']}", row[key])
        for k, acc in enumerate(result["anytime"]["accuracy"], start=1):
            writer.add_scalar("eval/anytime_acc", acc, global_step=k)
        for m, tag in zip(early_exit_models(result), ("", "_compare"), strict=False):
            writer.add_scalar(f"eval/early_exit_area{tag}", m["area"])
        writer.add_text("eval/report", markdown_report(result))
        for key, fig in figs.items():
            writer.add_figure(f"eval/{Path(FILES[key]).stem}", fig)  # closes the figure


def write_all(
    result: dict[str, Any], out: Path, root: str | Path, tensorboard: bool = True
) -> None:
    """Every file of :data:`FILES` for ``result`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out)
    write_markdown(result, out)
    write_csvs(result, out)
    figs = figures(result, root)
    for key, fig in figs.items():
        plots.save(fig, str(out / FILES[key]), close=not tensorboard)
    if tensorboard:
        write_tensorboard(result, out, figs)


def evaluate_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    data_root: str | Path | None = None,
    batch_size: int = 1000,
    device: str = "auto",
    num_errors: int = 25,
    download: bool = True,
    tensorboard: bool = True,
    thresholds: Any = None,
    budget: float | None = None,
    compare: str | Path | None = None,
) -> dict[str, Any]:
    """Load ``ckpt_path`` (a .ckpt or a run dir), evaluate it on the test set, write every
    report to ``out_dir``; returns what ``eval.json`` holds. ``compare``: another checkpoint
    or run whose early-exit frontier is reported beside this one's."""
    loaded = load_checkpoint(ckpt_path)
    other = load_checkpoint(compare) if compare else None
    root = str(data_root) if data_root else default_data_root()
    result = compute(
        loaded, root, batch_size, device, num_errors, download, thresholds, budget, other
    )
    write_all(result, Path(out_dir), root, tensorboard)
    return result
