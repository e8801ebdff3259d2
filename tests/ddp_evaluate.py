"""``python -m tests.ddp_evaluate CKPT DATA_ROOT DEVICES``: validate and test a checkpoint
with the training path's data module and Trainer on DEVICES CPU processes (gloo), and
print rank 0's metrics as JSON. Lightning starts the other ranks by running this again."""

from __future__ import annotations

import json
import sys

import lightning as L

from seqmnist.data import SeqMNISTDataModule
from seqmnist.models import SeqClassifier


def evaluate(ckpt: str, root: str, devices: int) -> dict[str, float]:
    """Validation and test metrics of ``ckpt`` (rank 0's; every rank returns them)."""
    model = SeqClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    # 100 validation and 200 test images in batches of 33: uneven splits over 2 and 3 ranks.
    dm = SeqMNISTDataModule(root=root, val_size=100, eval_batch_size=33, download=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        use_distributed_sampler=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    val = trainer.validate(model, datamodule=dm, verbose=False)[0]
    test = trainer.test(model, datamodule=dm, verbose=False)[0]
    if trainer.is_global_zero:
        print("RESULT " + json.dumps({**val, **test}))
    return {**val, **test}


if __name__ == "__main__":
    evaluate(sys.argv[1], sys.argv[2], int(sys.argv[3]))
