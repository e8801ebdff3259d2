"""Evaluate a checkpoint on the full test set: ``python -m seqmnist.evaluate ckpt_path=PATH``.

``PATH`` is a ``.ckpt`` file or a training run's directory (its best checkpoint is used).
The model and the way it reads images (dataset, sequence mode, pixel order) come from the
checkpoint; only the data location (``data.root``) is taken from this command's config.
``compare=RUN`` puts another model's early-exit frontier beside this one's (e.g. a
last-step-trained ``best_row`` run beside an ``anytime_row`` run).
Reports go to this run's own directory (``outputs/evaluate/runs/<timestamp>``): see
:mod:`seqmnist.reports.evaluation` for the files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seqmnist.inference.checkpoints import CheckpointError
from seqmnist.reports.evaluation import early_exit_models, evaluate_checkpoint, within_budget
from seqmnist.shell import exit_on_error, hydra_command

log = logging.getLogger("seqmnist.evaluate")


def summary_lines(result: dict[str, Any], out_dir: Path) -> list[str]:
    m, a = result["metrics"], result["anytime"]
    quarters = ", ".join(f"k={k}: {100 * v:.2f}%" for k, v in a["quarters"].items())
    lines = [
        f"{result['model']['description']} | test acc {100 * m['accuracy']:.2f}% "
        f"({m['correct']:,}/{result['data']['test_size']:,}) | loss {m['loss']:.4f}",
        f"anytime accuracy (first k of {a['steps']} {a['step_name']}): {quarters}",
    ]
    if a["note"]:
        lines.append(a["note"])
    for m in early_exit_models(result):
        best = within_budget(m, a["step_name"])
        lines.append(f"early exit, {m['model']}: frontier area {m['area']:.4f}; {best}")
    lines.append(f"reports written to {out_dir}")
    return lines


def plain(value: Any) -> Any:
    """A config list as a Python list (anything else as it is)."""
    return OmegaConf.to_container(value) if OmegaConf.is_list(value) else value


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` into ``cfg.paths.output_dir``; raises our errors."""
    if not cfg.get("ckpt_path"):
        raise CheckpointError(
            "no checkpoint given. Fix: python -m seqmnist.evaluate ckpt_path=PATH, where "
            "PATH is a .ckpt file or a training run's directory (outputs/train/runs/<run>)."
        )
    out_dir = Path(cfg.paths.output_dir)
    result = evaluate_checkpoint(
        ckpt_path=str(cfg.ckpt_path),
        out_dir=out_dir,
        data_root=cfg.data.get("root"),
        batch_size=cfg.data.get("eval_batch_size", 1000),
        device=str(cfg.get("device", "auto")),
        num_errors=cfg.get("num_errors", 25),
        download=bool(cfg.data.get("download", True)),
        thresholds=plain(cfg.early_exit.get("thresholds")),
        budget=cfg.early_exit.get("budget"),
        compare=cfg.get("compare"),
    )
    log.info(f"evaluated {result['checkpoint']}")
    for line in summary_lines(result, out_dir):
        log.info(line)
    return result


@hydra_command("evaluate")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the test accuracy. A user error: one message, exit 2."""
    with exit_on_error(log, multirun_goes_on=True):
        result = run(cfg)
    return result["metrics"]["accuracy"]


if __name__ == "__main__":
    main()
