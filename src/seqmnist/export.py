"""Export a checkpoint's network: ``python -m seqmnist.export ckpt_path=PATH format=onnx``.

Writes ``model.onnx`` (or TorchScript ``model.pt``) and ``model.json`` into this command's run
directory (``outputs/export/runs/<timestamp>``) or to ``out=FILE``, then checks the file
against the checkpoint on the first 256 test images: see :mod:`seqmnist.inference.export`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from seqmnist.data import SeqMNISTDataModule, load_split
from seqmnist.inference.checkpoints import CheckpointError, LoadedCheckpoint, load_checkpoint
from seqmnist.inference.export import FORMATS, check_format, export
from seqmnist.shell import exit_on_error, hydra_command

log = logging.getLogger("seqmnist.export")


def test_images(loaded: LoadedCheckpoint, cfg: DictConfig) -> np.ndarray | None:
    """The first ``verify_images`` test images of the checkpoint's dataset (uint8)."""
    n = int(cfg.get("verify_images", 256))
    if n <= 0:
        return None
    root = str(cfg.data.root)
    dm: SeqMNISTDataModule = loaded.data.datamodule(root=root, download=bool(cfg.data.download))
    dm.prepare_data()  # downloads when missing and allowed; else one clear message
    images, _ = load_split(root, loaded.data.dataset, "test")
    return images[:n].numpy()


def run(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.get("ckpt_path"):
        raise CheckpointError(
            "no checkpoint given. Fix: python -m seqmnist.export ckpt_path=PATH format=onnx, "
            "where PATH is a .ckpt file or a training run's directory."
        )
    fmt = check_format(str(cfg.format))
    loaded = load_checkpoint(str(cfg.ckpt_path))
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.paths.output_dir) / f"model{FORMATS[fmt]}"
    if out.suffix != FORMATS[fmt]:
        out = out.with_suffix(FORMATS[fmt])
    meta = export(loaded, fmt, out, test_images(loaded, cfg))
    log.info(f"exported {loaded.path} ({meta['model']}) as {fmt}: {out}")
    log.info(f"how to feed it: {out.with_suffix('.json')}")
    check = meta["verified"]
    if check:
        log.info(
            f"check on {check['images']} test images ({check['runtime']}): max abs diff "
            f"probabilities {check['max_abs_diff_probabilities']:.2e}, step logits "
            f"{check['max_abs_diff_step_logits']:.2e} (tolerance {check['tolerance']:g}); "
            f"same top class {100 * check['same_top_class']:.1f}%"
        )
    return meta


@hydra_command("export")
def main(cfg: DictConfig) -> None:
    with exit_on_error(log):
        run(cfg)


if __name__ == "__main__":
    main()
