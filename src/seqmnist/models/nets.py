"""The recurrent classifier: a stacked RNN/LSTM/GRU reads the sequence, a linear head reads
its last step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from seqmnist.core.checks import BOOLEAN, Rule, check_all, int_at_least, number, one_of
from seqmnist.core.errors import ConfigError
from seqmnist.core.machine import cpu_bf16_units
from seqmnist.models import cpu_gru, cpu_lstm

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
CPU_KERNELS = ("native", "fused")
# The cells that have a hand-written CPU training pass (cpu_kernel=fused).
FUSED_CELLS = ("gru", "lstm")
# How weights start: PyTorch's defaults, or TensorFlow 1's cells (see init_tf1).
INITS = ("torch", "tf1")

# The network's arguments that a config may get wrong. The config check names them by the
# short keys users type (see seqmnist.training.config.SHORT_KEYS).
RULES: dict[str, Rule] = {
    "cell": one_of(CELLS, "choose with cell=NAME"),
    "num_layers": int_at_least(1),
    "hidden_size": int_at_least(1),
    "dropout": number(lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "bidirectional": BOOLEAN,
    "init": one_of(INITS, "choose with model.net.init=NAME", ordered=True),
}


def check_cpu_kernel(cell: str, cpu_kernel: str) -> None:
    """``fused`` exists for the GRU and the LSTM."""
    if cpu_kernel not in CPU_KERNELS or (cpu_kernel == "fused" and cell not in FUSED_CELLS):
        raise ConfigError(
            f"model.net.cpu_kernel={cpu_kernel!r} is not allowed with cell={cell}; it must be "
            "'native', or 'fused' (cell=gru or cell=lstm only: the CPU training passes of "
            "seqmnist.models.cpu_gru and cpu_lstm)"
        )


def describe(net: dict) -> str:
    """The one short description of a network's settings, e.g. ``lstm 1x128`` or
    ``gru 2x64 bidirectional`` (RecurrentClassifier keyword arguments; defaults as there)."""
    bi = " bidirectional" if net.get("bidirectional") else ""
    return f"{net.get('cell', 'lstm')} {net.get('num_layers', 1)}x{net.get('hidden_size', 128)}{bi}"


class RecurrentClassifier(nn.Module):
    """Stacked ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (cuDNN kernels on CUDA) + linear head.

    ``dropout`` acts between stacked layers (inside the cuDNN module) and on the features
    fed to the head, like the TF tutorials' output-dropout wrapper. For a bidirectional
    net the head sees the forward direction's last step and the backward direction's
    last step (which is time step 0), i.e. both directions after reading everything.
    """

    def __init__(
        self,
        input_size: int = 28,
        num_classes: int = 10,
        cell: str = "lstm",
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
        forget_bias: float = 1.0,
        nonlinearity: str = "tanh",
        cpu_kernel: str = "native",
        init: str = "torch",
    ) -> None:
        super().__init__()
        check_all(
            RULES,
            {
                "cell": cell,
                "num_layers": num_layers,
                "hidden_size": hidden_size,
                "dropout": dropout,
                "bidirectional": bidirectional,
                "init": init,
            },
        )
        check_cpu_kernel(cell, cpu_kernel)
        self.cpu_kernel = cpu_kernel
        kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.cell = cell
        self.bidirectional = bidirectional
        self.rnn = CELLS[cell](
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            batch_first=True,
            # nn.RNNBase warns when asked for inter-layer dropout with one layer.
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
            **kwargs,
        )
        self.head_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)
        if init == "tf1":
            init_tf1(self.rnn, self.head)
        if cell == "lstm":
            self._init_forget_bias(forget_bias)

    def _init_forget_bias(self, value: float) -> None:
        # PyTorch gate order is (input, forget, cell, output) and the cell adds two biases,
        # so the forget slice of b_ih carries the value and b_hh's is zeroed: b_ih + b_hh = value.
        h = self.rnn.hidden_size
        with torch.no_grad():
            for name, param in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    param[h : 2 * h].fill_(value)
                elif name.startswith("bias_hh"):
                    param[h : 2 * h].zero_()

    def sequence_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last layer's output at every step, ``(B, T, H * directions)``."""
        device = x.device.type
        # The fused CPU training passes first. Under CPU bf16 autocast the LSTM's runs its
        # matrix products in bf16 with a float32 cell state; the GRU's stays in float32.
        # Evaluation (no grad), CUDA and other autocast dtypes are not usable: nn.LSTM/GRU.
        if self.cpu_kernel == "fused" and cpu_lstm.usable(self.rnn, x):
            return cpu_lstm.lstm_train_forward(self.rnn, x)
        if self.cpu_kernel == "fused" and cpu_gru.usable(self.rnn, x):
            with torch.autocast(device, enabled=False):
                return cpu_gru.gru_train_forward(self.rnn, x.float())
        if recurrence_in_float32(device, self.cell):
            with torch.autocast(device, enabled=False):
                out, _ = self.rnn(x.float())
            return out
        out, _ = self.rnn(x)
        return out

    def final_features(self, out: torch.Tensor) -> torch.Tensor:
        """Features after the whole sequence, from :meth:`sequence_features`' output."""
        if not self.bidirectional:
            return out[:, -1]
        h = self.rnn.hidden_size
        return torch.cat([out[:, -1, :h], out[:, 0, h:]], dim=-1)

    def forward(
        self, x: torch.Tensor, steps: Sequence[int] = ()
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, F)`` sequences -> ``(B, num_classes)`` logits.

        With ``steps`` (1-based), also the head's logits after each of those steps,
        ``(B, len(steps), num_classes)``, from the same pass. Training and validation ask
        for them here, through ``forward``, so that ``compile=true`` covers them too.
        """
        out = self.sequence_features(x)
        final = self.head(self.head_dropout(self.final_features(out)))
        if not steps:
            return final
        index = [k - 1 for k in steps]
        picked = out if index == list(range(out.shape[1])) else out[:, index]
        return final, self.head(self.head_dropout(picked))

    def step_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits the head gives after each step, ``(B, T, num_classes)``.

        For a unidirectional net step k's logits use only the first k+1 steps of input
        (the 'anytime' answer). The bidirectional backward half has read the whole
        sequence at every step, so there it is not an early answer.
        """
        return self.head(self.head_dropout(self.sequence_features(x)))


# Gate blocks of PyTorch's stacked weights, and how many of them TF1 keeps in one kernel:
# GRUCell has a gates kernel (r, u) and a candidate kernel; LSTMCell one kernel of 4 blocks.
_TF1_KERNELS = {"gru": (2, 1), "lstm": (4,), "rnn": (1,)}


@torch.no_grad()
def init_tf1(rnn: nn.RNNBase, head: nn.Linear) -> None:
    """TensorFlow 1's initialisation (``tf.nn.rnn_cell`` cells and ``tf.layers.dense``).

    TF1 keeps one kernel of shape ``(input + hidden, blocks * hidden)`` per gate group and
    draws it Glorot-uniform; PyTorch's ``weight_ih``/``weight_hh`` rows of a group are the
    two halves of that kernel, so they share its limit ``sqrt(6 / (in + hidden + blocks *
    hidden))``. Biases start at 0, except GRUCell's gate bias at 1.0 (``b_ih``; ``b_hh`` 0).
    LSTM's forget bias of 1.0 is added by the caller, as TF1 adds ``forget_bias``. The head
    is a Glorot-uniform dense layer with a zero bias.
    """
    h = rnn.hidden_size
    kind = "gru" if isinstance(rnn, nn.GRU) else "lstm" if isinstance(rnn, nn.LSTM) else "rnn"
    for name, weight in rnn.named_parameters():
        if name.startswith("bias"):
            weight.zero_()
            if kind == "gru" and name.startswith("bias_ih"):
                weight[: 2 * h].fill_(1.0)
            continue
        if not name.startswith("weight_ih"):
            continue
        suffix = name[len("weight_ih") :]
        weight_hh = getattr(rnn, "weight_hh" + suffix)
        fan_in = weight.shape[1] + h
        start = 0
        for blocks in _TF1_KERNELS[kind]:
            limit = (6.0 / (fan_in + blocks * h)) ** 0.5
            rows = slice(start, start + blocks * h)
            weight[rows].uniform_(-limit, limit)
            weight_hh[rows].uniform_(-limit, limit)
            start += blocks * h
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)


def recurrence_in_float32(device: str, cell: str = "lstm") -> bool:
    """Whether autocast on ``device`` must be switched off around the recurrent layers.

    - CPU: only the LSTM under bf16 autocast on a CPU with bf16 units (AVX512-BF16, AMX)
      runs in bf16 (oneDNN's kernel; ``trainer.precision=auto`` picks it there). oneDNN has
      no reduced-precision LSTM kernel on other CPUs ("could not create a primitive
      descriptor"), and the GRU and tanh RNN have none at all.
    - CUDA, bf16 autocast: PyTorch runs the cuDNN RNN in float16 whatever autocast's dtype,
      so ``precision=bf16-mixed`` would train the recurrence in fp16 with no GradScaler
      (bf16 runs have none). fp16 autocast (``16-mixed``) keeps cuDNN's fp16 kernels: its
      GradScaler is there.

    The head still runs in low precision. (``cpu_kernel=fused`` is checked before this
    rule: :mod:`seqmnist.models.cpu_lstm` under CPU bf16 autocast trains with bf16 matrix
    products and a float32 cell state.)
    """
    if not torch.is_autocast_enabled(device):
        return False
    bf16 = torch.get_autocast_dtype(device) == torch.bfloat16
    if device == "cpu":
        return not (cell == "lstm" and bf16 and cpu_bf16_units() is not None)
    return device == "cuda" and bf16


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
