"""The yardstick of ``make bench``'s whole-run row: the default recipe as a plain PyTorch script.

``python -m seqmnist.training.plain_script --epochs N --root DIR`` trains LSTM-128 with
fused Adam 1e-3 on batches of 128 from in-memory data, shuffled each epoch, and runs the
5,000-image validation pass after every epoch, as ``python -m seqmnist.train`` does by
default. It prints one JSON line: the seconds from reading the files to the last
validation (``train_seconds``, the same span as ``seqmnist.train``'s) and the accuracy.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from seqmnist.data.idx import load_split


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(28, 128, batch_first=True)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--root", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--val-size", type=int, default=5000, help="as data.val_size")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    start = time.perf_counter()
    images, labels = load_split(args.root, "mnist", "train")
    x = images.float().div(255)  # (N, 28, 28): 28 rows of 28 pixels
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(42))
    n_val = args.val_size
    val_x, val_y = x[order[:n_val]], labels[order[:n_val]]
    train_x, train_y = x[order[n_val:]], labels[order[n_val:]]
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    for _ in range(args.epochs):
        net.train()
        for idx in torch.randperm(len(train_y)).split(128):
            loss = F.cross_entropy(net(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            batches = zip(val_x.split(1000), val_y.split(1000), strict=True)
            correct = sum(int((net(xb).argmax(1) == yb).sum()) for xb, yb in batches)
    seconds = time.perf_counter() - start
    print(json.dumps({"train_seconds": round(seconds, 3), "val_acc": correct / len(val_y),
                      "samples": args.epochs * len(train_y)}))  # fmt: skip


if __name__ == "__main__":
    main()
