"""RecurrentClassifier: shapes for every cell and layout, dropout, forget bias, final step."""

from __future__ import annotations

import itertools

import pytest
import torch

from seqmnist.core.errors import ConfigError
from seqmnist.models.nets import RecurrentClassifier, count_parameters


@pytest.mark.parametrize(
    ("cell", "layers", "bidirectional"),
    list(itertools.product(["rnn", "lstm", "gru"], [1, 2, 3], [False, True])),
)
def test_logits_shape(cell: str, layers: int, bidirectional: bool) -> None:
    net = RecurrentClassifier(
        28,
        10,
        cell=cell,
        hidden_size=8,
        num_layers=layers,
        dropout=0.1,
        bidirectional=bidirectional,
    )
    out = net(torch.randn(5, 28, 28))
    assert out.shape == (5, 10)
    assert net.step_logits(torch.randn(5, 28, 28)).shape == (5, 28, 10)


def test_other_input_sizes() -> None:
    net = RecurrentClassifier(input_size=1, num_classes=10, hidden_size=8)
    assert net(torch.randn(2, 784, 1)).shape == (2, 10)


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    net = RecurrentClassifier(28, 10, cell="gru", hidden_size=16, num_layers=2, dropout=0.5)
    x = torch.randn(4, 28, 28)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_lstm_forget_bias() -> None:
    net = RecurrentClassifier(28, 10, cell="lstm", hidden_size=6, num_layers=2, forget_bias=1.0)
    for layer in range(2):
        total = getattr(net.rnn, f"bias_ih_l{layer}") + getattr(net.rnn, f"bias_hh_l{layer}")
        assert torch.allclose(total[6:12], torch.ones(6))
        assert not torch.allclose(total[:6], torch.ones(6))


def test_bidirectional_head_reads_both_final_states() -> None:
    torch.manual_seed(0)
    net = RecurrentClassifier(
        28, 10, cell="gru", hidden_size=8, num_layers=2, bidirectional=True
    ).eval()
    x = torch.randn(3, 28, 28)
    _, h_n = net.rnn(x)
    expected = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # last layer: forward, backward
    assert torch.allclose(net.final_features(net.sequence_features(x)), expected, atol=1e-6)


def test_unidirectional_last_step_is_forward_output() -> None:
    net = RecurrentClassifier(28, 10, cell="lstm", hidden_size=8).eval()
    x = torch.randn(3, 28, 28)
    assert torch.allclose(net.step_logits(x)[:, -1], net(x), atol=1e-6)
    # Step k only depends on the first k+1 rows.
    y = x.clone()
    y[:, 10:] = 0
    assert torch.allclose(net.step_logits(x)[:, :10], net.step_logits(y)[:, :10], atol=1e-6)


def test_rnn_is_tanh_and_counts_params() -> None:
    net = RecurrentClassifier(28, 10, cell="rnn", hidden_size=128)
    assert net.rnn.nonlinearity == "tanh"
    # W_ih + W_hh + 2 biases, then the head.
    assert count_parameters(net) == 128 * 28 + 128 * 128 + 2 * 128 + 128 * 10 + 10


def test_unknown_cell() -> None:
    # The same error type and rule as the config check (a user error, not a bug).
    with pytest.raises(ConfigError, match=r"cell='transformer' is not allowed.*cell=NAME"):
        RecurrentClassifier(cell="transformer")


def test_compiled_net_matches_eager_and_keeps_its_state_dict_keys() -> None:
    torch.manual_seed(0)
    net = RecurrentClassifier(28, 10, cell="lstm", hidden_size=16).eval()
    x = torch.randn(4, 28, 28)
    keys, eager = list(net.state_dict()), net(x)
    net.compile()  # what `compile=true` does
    assert torch.allclose(net(x), eager, atol=1e-5)
    assert list(net.state_dict()) == keys


@pytest.mark.parametrize(
    ("device", "dtype", "cell", "units", "float32"),
    [
        ("cuda", torch.bfloat16, "lstm", None, True),  # cuDNN would run fp16, no GradScaler
        ("cuda", torch.float16, "lstm", None, False),  # 16-mixed: cuDNN's fp16, its GradScaler
        ("cpu", torch.bfloat16, "lstm", "AVX512-BF16", False),  # oneDNN's bf16 LSTM
        ("cpu", torch.bfloat16, "lstm", "AMX", False),
        ("cpu", torch.bfloat16, "lstm", None, True),  # no bf16 units: oneDNN has no kernel
        ("cpu", torch.bfloat16, "gru", "AVX512-BF16", True),  # no bf16 GRU/RNN kernel
        ("cpu", torch.bfloat16, "rnn", "AMX", True),
        ("cpu", torch.float16, "lstm", "AMX", True),
    ],
)
def test_which_autocast_keeps_the_recurrence_in_float32(
    monkeypatch, device: str, dtype: torch.dtype, cell: str, units, float32: bool
) -> None:
    from seqmnist.models import nets

    monkeypatch.setattr(nets, "cpu_bf16_units", lambda: units)
    assert nets.recurrence_in_float32(device, cell) is False  # no autocast at all
    # The CUDA rule is checked on CPU machines too: autocast's state is what it reads.
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda d: d == device)
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda d: dtype)
    assert nets.recurrence_in_float32(device, cell) is float32


def test_the_fused_gru_trains_in_float32_under_cpu_bf16_autocast() -> None:
    """bf16-mixed (trainer.precision=auto on a CPU with bf16 units) keeps cell=gru's fused
    float32 pass: the same features as without autocast, from the fused pass."""
    torch.manual_seed(0)
    net = RecurrentClassifier(28, 10, cell="gru", hidden_size=16, cpu_kernel="fused").train()
    x = torch.randn(4, 28, 28)
    plain = net.sequence_features(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = net.sequence_features(x)
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, plain)
    native = RecurrentClassifier(28, 10, cell="gru", hidden_size=16).train()
    native.load_state_dict(net.state_dict())
    assert torch.allclose(native.sequence_features(x), plain, atol=1e-5)


@pytest.mark.parametrize(
    ("cell", "layers", "bidirectional"), [("gru", 3, False), ("lstm", 2, True), ("rnn", 1, False)]
)
def test_tf1_initialisation(cell: str, layers: int, bidirectional: bool) -> None:
    torch.manual_seed(0)
    h = 200
    net = RecurrentClassifier(
        28, 10, cell=cell, hidden_size=h, num_layers=layers, bidirectional=bidirectional, init="tf1"
    )
    rnn = net.rnn
    blocks = {"gru": [2, 1], "lstm": [4], "rnn": [1]}[cell]
    for name, w in rnn.named_parameters():
        if not name.startswith("weight"):
            continue
        fan_in = getattr(rnn, name.replace("weight_hh", "weight_ih")).shape[1] + h
        start = 0
        for b in blocks:
            # Glorot-uniform over TF1's kernel (input + hidden, b * hidden): uniform in
            # +-limit, so its largest draw is close to the limit and none beyond it.
            limit = (6 / (fan_in + b * h)) ** 0.5
            part = w[start : start + b * h].abs()
            assert part.max() <= limit and part.max() > 0.95 * limit, (name, b)
            start += b * h
    for name, bias in rnn.named_parameters():
        if not name.startswith("bias"):
            continue
        expected = torch.zeros_like(bias)
        if cell == "gru" and name.startswith("bias_ih"):
            expected[: 2 * h] = 1.0  # TF1 GRUCell's gate bias (reset and update)
        if cell == "lstm" and name.startswith("bias_ih"):
            expected[h : 2 * h] = 1.0  # forget_bias
        assert torch.equal(bias.detach(), expected), name
    assert torch.equal(net.head.bias.detach(), torch.zeros(10))
    limit = (6 / (net.head.in_features + 10)) ** 0.5
    assert net.head.weight.abs().max() <= limit


def test_unknown_init_names_the_key() -> None:
    with pytest.raises(ConfigError, match="init"):
        RecurrentClassifier(28, 10, init="keras")
