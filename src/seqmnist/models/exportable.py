"""The network as an exported file runs it: sequences in, class probabilities and the
per-step logits of the anytime curve out, on the standard ``nn.RNN``/``nn.LSTM``/``nn.GRU``
path (never the fused CPU GRU training pass, which ONNX and TorchScript cannot follow)."""

from __future__ import annotations

import torch
from torch import nn

from seqmnist.models.nets import RecurrentClassifier

OUTPUT_NAMES = ("probabilities", "step_logits")
INPUT_NAME = "sequences"


class AnytimeOutputs(nn.Module):
    """``(B, T, F)`` float sequences -> ``(B, C)`` softmax probabilities after the whole
    sequence, and ``(B, T, C)`` logits the head gives after each step (for a unidirectional
    net, step k's logits have read only the first k+1 steps)."""

    def __init__(self, net: RecurrentClassifier) -> None:
        super().__init__()
        self.net = net.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.net.rnn(x)  # nn.RNNBase itself: the exporters know it
        final = self.net.head(self.net.final_features(out))
        return final.softmax(-1), self.net.head(out)
