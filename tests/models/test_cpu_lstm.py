"""The CPU LSTM training pass: same outputs and gradients as nn.LSTM, used only where it applies;
its bf16 matrix products keep the cell state and the element-wise maths in float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seqmnist.models import cpu_lstm
from seqmnist.models.cpu_lstm import _LSTMLayer, lstm_train_forward, usable
from seqmnist.models.nets import RecurrentClassifier
from tests.models.stacks import assert_trains_like_native, dropout_between_layers


def _grads(out: torch.Tensor, wrt: list[torch.Tensor], grad_out: torch.Tensor):
    return torch.autograd.grad(out, wrt, grad_out)


@pytest.mark.parametrize(
    ("layers", "hidden", "bidirectional"),
    [(1, 7, False), (2, 7, False), (1, 16, True), (2, 16, True)],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_outputs_and_gradients_match_nn_lstm(
    layers: int, hidden: int, bidirectional: bool, dtype
) -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(5, hidden, layers, batch_first=True, bidirectional=bidirectional).to(dtype)
    x = torch.randn(3, 6, 5, dtype=dtype, requires_grad=True)
    ref = lstm(x)[0]
    out = lstm_train_forward(lstm, x)
    grad_out = torch.randn_like(ref)
    wrt = [x, *lstm.parameters()]
    expected = _grads(ref, wrt, grad_out)
    got = _grads(out, wrt, grad_out)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.allclose(out, ref, atol=tol)
    names = ["input", *(name for name, _ in lstm.named_parameters())]
    for name, e, g in zip(names, expected, got, strict=True):
        assert g.shape == e.shape and torch.allclose(e, g, atol=tol * 10), name


def test_gradcheck_in_double() -> None:
    """The layer's own gradients, the weights' included, against finite differences."""
    torch.manual_seed(0)
    T, B, n_in, H = 4, 2, 3, 4
    args = [
        torch.randn(T, B, n_in),
        torch.randn(4 * H, n_in),
        torch.randn(4 * H, H),
        torch.randn(4 * H),
        torch.randn(4 * H),
    ]
    args = [a.double().requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: _LSTMLayer.apply(*a, None), args)


def test_gradcheck_of_a_stack_in_double() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, 2, batch_first=True, bidirectional=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: lstm_train_forward(lstm, inp), (x,))


def test_used_only_to_train_float32_on_cpu() -> None:
    lstm = nn.LSTM(4, 4, batch_first=True)
    x = torch.randn(2, 3, 4)
    assert usable(lstm, x)
    with torch.no_grad():
        assert not usable(lstm, x)  # evaluation keeps nn.LSTM
    assert not usable(lstm, x.double())
    assert not usable(lstm, x[0])  # unbatched
    assert not usable(nn.LSTM(4, 4), x)  # time-major
    assert not usable(nn.LSTM(4, 4, batch_first=True, bias=False), x)
    assert not usable(nn.LSTM(4, 4, batch_first=True, proj_size=2), x)
    assert not usable(nn.GRU(4, 4, batch_first=True), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert usable(lstm, x)  # bf16-mixed: bf16 matrix products
    with torch.autocast("cpu", dtype=torch.float16):
        assert not usable(lstm, x)


def test_dropout_between_layers_matches_two_single_layer_lstms_with_the_same_mask() -> None:
    lstm, layers, x, out, ref = dropout_between_layers(nn.LSTM, lstm_train_forward)
    assert torch.allclose(out, ref, atol=1e-12)
    lstm.dropout = 0.0
    assert not torch.allclose(lstm_train_forward(lstm, x), ref, atol=1e-3)  # the mask acted

    grad_out = torch.randn_like(ref)
    got = _grads(out, [x, lstm.weight_ih_l1, lstm.weight_hh_l0], grad_out)
    want = _grads(ref, [x, layers[1].weight_ih_l0, layers[0].weight_hh_l0], grad_out)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-12)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("how", ["argument", "autocast"])
def test_bf16_matrix_products_stay_close_to_float32(how: str) -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(28, 32, 2, batch_first=True, bidirectional=True)
    x = torch.randn(8, 12, 28, requires_grad=True)
    ref = lstm(x)[0]
    if how == "argument":
        out = lstm_train_forward(lstm, x, torch.bfloat16)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lstm_train_forward(lstm, x)
    grad_out = torch.randn_like(ref)
    wrt = [x, *lstm.parameters()]
    expected = _grads(ref, wrt, grad_out)
    got = _grads(out, wrt, grad_out)
    assert out.dtype == torch.float32
    # bf16 is really used (float32 agrees to ~1e-6), and only in the matrix products.
    assert 1e-5 < _relative_error(out, ref) < 2e-2
    names = ["input", *(name for name, _ in lstm.named_parameters())]
    for name, e, g in zip(names, expected, got, strict=True):
        assert g.dtype == torch.float32, name
        assert _relative_error(g, e) < 2e-2, name


def test_autocast_does_not_recast_the_pass() -> None:
    """An explicit ``gemm_dtype`` wins over autocast, and autocast recasts nothing inside the
    pass: float32 products under bf16 autocast, backward included, are float32 nn.LSTM's."""
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 8, 2, batch_first=True)
    x = torch.randn(3, 6, 5, requires_grad=True)
    ref = lstm(x)[0]
    grad_out = torch.randn_like(ref)
    wrt = [x, *lstm.parameters()]
    expected = _grads(ref, wrt, grad_out)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lstm_train_forward(lstm, x, torch.float32)
        got = _grads(out, wrt, grad_out)
    assert torch.allclose(out, ref, atol=1e-5)
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(e, g, atol=1e-4)


def test_bf16_keeps_the_cell_state_and_gate_maths_in_float32() -> None:
    """With a zero recurrent weight and inputs and input weights that bf16 holds exactly, the
    matrix products are exact in bf16: all that is left to round is element-wise maths and the
    cell state, which must then agree with float32 nn.LSTM to float32 precision."""
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 8, batch_first=True)
    with torch.no_grad():
        lstm.weight_hh_l0.zero_()
        lstm.weight_ih_l0.copy_(torch.randint(-4, 5, lstm.weight_ih_l0.shape) / 8)
        lstm.bias_ih_l0.normal_()  # the bias is added in float32: any value
        lstm.bias_hh_l0.normal_()
    x = torch.randint(-4, 5, (4, 20, 6)) / 4
    ref = lstm(x)[0]
    out = lstm_train_forward(lstm, x.requires_grad_(), torch.bfloat16)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=2e-6)


def test_classifier_with_fused_kernel_trains_like_native() -> None:
    assert_trains_like_native("lstm")


@pytest.mark.parametrize(
    ("grad", "autocast_dtype", "fused_pass"),
    [
        (True, None, True),
        (False, None, False),  # evaluation: nn.LSTM
        (True, torch.bfloat16, True),  # bf16-mixed: the fused pass, bf16 matrix products
        (False, torch.bfloat16, False),
        (True, torch.float16, False),  # nn.LSTM in float32, as before
    ],
)
def test_classifier_uses_the_fused_lstm_only_to_train(
    monkeypatch, grad: bool, autocast_dtype, fused_pass: bool
) -> None:
    calls = []
    real = cpu_lstm.lstm_train_forward

    def spy(lstm, x):
        calls.append(cpu_lstm.gemm_dtype_for_autocast())
        return real(lstm, x)

    monkeypatch.setattr(cpu_lstm, "lstm_train_forward", spy)
    torch.manual_seed(0)
    net = RecurrentClassifier(28, 10, cell="lstm", hidden_size=8, cpu_kernel="fused")
    x = torch.randn(4, 28, 28)
    with (
        torch.set_grad_enabled(grad),
        torch.autocast(
            "cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ),
    ):
        logits = net.train(grad)(x)
    assert calls == ([autocast_dtype] if fused_pass else [])
    assert logits.shape == (4, 10)
    if grad:
        logits.float().sum().backward()
        assert net.rnn.weight_hh_l0.grad.dtype == torch.float32
