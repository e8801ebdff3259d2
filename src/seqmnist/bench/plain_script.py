"""The yardstick of ``make bench``'s whole-run row: the default recipe as a plain PyTorch script.

``python -m seqmnist.bench.plain_script --epochs N --root DIR`` trains LSTM-128 with
fused Adam 1e-3 on batches of 128 from in-memory data, shuffled each epoch, and runs the
5,000-image validation pass after every epoch, as ``python -m seqmnist.train`` does by
default. It prints one JSON line: the seconds from reading the files to the last
validation (``train_seconds``, the same span as ``seqmnist.train``'s) and the accuracy.

The recipe switches give ``experiment=fast99``'s counterpart (``make bench-accuracy``
times both): ``--step-pixels 56`` (patch mode: 14 steps of two rows), ``--lr``,
``--onecycle`` (one-cycle peaking at ``--lr``, stepped every batch, as
conf/scheduler/onecycle.yaml), ``--clip`` (gradient norm) and ``--test`` (the best
validation epoch's weights scored on the test set, after the clock stops);
``--experiment fast99`` takes them from conf/experiment/fast99.yaml. ``epochs``
in the JSON line lists each epoch's validation accuracy and the seconds so far.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from seqmnist.core.errors import ConfigError, DataError
from seqmnist.core.project import CONF_DIR
from seqmnist.data.idx import load_split
from seqmnist.data.sequences import to_inputs

BATCH = 128


class Net(nn.Module):
    def __init__(self, input_size: int = 28) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, 128, batch_first=True)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--root", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--val-size", type=int, default=5000, help="as data.val_size")
    parser.add_argument("--step-pixels", type=int, default=28, help="pixels per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's (peak) learning rate")
    parser.add_argument("--onecycle", action="store_true", help="one-cycle schedule")
    parser.add_argument("--clip", type=float, default=0.0, help="gradient norm clip (0: none)")
    parser.add_argument("--test", action="store_true", help="score the best epoch on test")
    parser.add_argument("--experiment", help="take the switches above from conf/experiment/")
    args = parser.parse_args(argv)
    if args.experiment:
        parser.set_defaults(**experiment_recipe(args.experiment))
        args = parser.parse_args(argv)  # flags given on the command line still win
    torch.manual_seed(args.seed)

    start = time.perf_counter()
    images, labels = load_split(args.root, "mnist", "train")
    x = to_inputs(images, "patch", args.step_pixels)  # (N, 784/s, s): 28 = row by row
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(42))
    n_val = args.val_size
    val_x, val_y = x[order[:n_val]], labels[order[:n_val]]
    train_x, train_y = x[order[n_val:]], labels[order[n_val:]]
    net = Net(args.step_pixels)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, fused=True)
    steps = args.epochs * -(-len(train_y) // BATCH)
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.25)
        if args.onecycle
        else None
    )
    history, best, best_state = [], -1.0, None
    for _ in range(args.epochs):
        net.train()
        for idx in torch.randperm(len(train_y)).split(BATCH):
            loss = F.cross_entropy(net(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip:
                nn.utils.clip_grad_norm_(net.parameters(), args.clip)
            opt.step()
            if sched is not None:
                sched.step()
        correct = _correct(net, val_x, val_y)
        history.append([round(correct / len(val_y), 4), round(time.perf_counter() - start, 3)])
        if args.test and correct > best:  # kept as the best checkpoint is
            best, best_state = correct, {k: v.clone() for k, v in net.state_dict().items()}
    seconds = time.perf_counter() - start
    result = {
        "train_seconds": round(seconds, 3),
        "val_acc": correct / len(val_y),
        "samples": args.epochs * len(train_y),
        "epochs": history,
    }
    if args.test:
        net.load_state_dict(best_state)
        test_images, test_labels = load_split(args.root, "mnist", "test")
        test_x = to_inputs(test_images, "patch", args.step_pixels)
        result["test_acc"] = _correct(net, test_x, test_labels) / len(test_labels)
    print(json.dumps(result))


def experiment_recipe(name: str) -> dict:
    """The switches of this script that follow ``conf/experiment/<name>.yaml``, the recipe's
    one home; a recipe this script cannot follow is refused with a ConfigError."""
    from hydra import compose, initialize_config_dir

    from seqmnist.jobs.resolvers import register_resolvers  # here: the timed loop needs none

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"])
    sched = (cfg.get("scheduler") or {}).get("scheduler") or {}
    onecycle = sched.get("_target_", "").endswith("OneCycleLR")
    follows = (
        (cfg.model.net.cell, cfg.layers, cfg.hidden, cfg.dropout, cfg.bidirectional)
        == ("lstm", 1, 128, 0.0, False)
        and cfg.data.batch_size == BATCH
        and cfg.data.sequence in ("row", "patch")
        and cfg.optimizer._target_ == "torch.optim.Adam"
        and (not sched or (onecycle and sched.get("pct_start") == 0.25))
        # No augmentation, label smoothing or weight averaging: this loop has none of them.
        and not any(v for k, v in cfg.data.augment.items() if k != "elastic_sigma")
        and not cfg.model.get("label_smoothing")
        and cfg.model.get("anytime_loss", "none") == "none"
        and not (cfg.get("callbacks") or {}).get("weight_averaging")
    )
    if not follows:
        raise ConfigError(
            f"experiment={name} is not a recipe plain_script can follow (it trains LSTM-128, "
            f"one layer, batch {BATCH}, Adam, rows or patches, optionally one-cycle; no "
            "augmentation, label smoothing, anytime loss or weight averaging). Fix: "
            "give the switches by hand (--step-pixels, --lr, --onecycle, --clip, --epochs)."
        )
    return {
        "epochs": cfg.trainer.max_epochs,
        "step_pixels": cfg.data.step_pixels if cfg.data.sequence == "patch" else 28,
        "lr": cfg.optimizer.lr,
        "onecycle": onecycle,
        "clip": cfg.trainer.gradient_clip_val or 0.0,
    }


def _correct(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    net.eval()
    with torch.no_grad():
        batches = zip(x.split(1000), y.split(1000), strict=True)
        return sum(int((net(xb).argmax(1) == yb).sum()) for xb, yb in batches)


if __name__ == "__main__":
    try:
        main()
    except (DataError, ConfigError) as e:  # the same one message as seqmnist.train's, no traceback
        print(f"plain_script: {e}", file=sys.stderr)
        sys.exit(2)
