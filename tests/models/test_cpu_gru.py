"""The CPU GRU training pass: same outputs and gradients as nn.GRU, used only where it applies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seqmnist.core.errors import ConfigError
from seqmnist.models.cpu_gru import gru_train_forward, usable
from seqmnist.models.nets import RecurrentClassifier
from tests.models.stacks import assert_trains_like_native, dropout_between_layers


@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (2, False), (2, True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_outputs_and_gradients_match_nn_gru(layers: int, bidirectional: bool, dtype) -> None:
    torch.manual_seed(0)
    gru = nn.GRU(7, 5, layers, batch_first=True, bidirectional=bidirectional).to(dtype)
    x = torch.randn(3, 6, 7, dtype=dtype, requires_grad=True)
    ref = gru(x)[0]
    out = gru_train_forward(gru, x)
    grad_out = torch.randn_like(ref)
    wrt = [x, *gru.parameters()]
    expected = torch.autograd.grad(ref, wrt, grad_out)
    got = torch.autograd.grad(out, wrt, grad_out)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=tol)
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(e, g, atol=tol * 10)


def test_gradcheck_in_double() -> None:
    torch.manual_seed(0)
    gru = nn.GRU(3, 4, 1, batch_first=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: gru_train_forward(gru, inp), (x,))


def test_used_only_to_train_float32_on_cpu() -> None:
    gru = nn.GRU(4, 4, batch_first=True)
    x = torch.randn(2, 3, 4)
    assert usable(gru, x)
    with torch.no_grad():
        assert not usable(gru, x)  # evaluation keeps nn.GRU
    assert not usable(gru, x.double())
    assert not usable(nn.LSTM(4, 4, batch_first=True), x)


def test_classifier_with_fused_kernel_trains_like_native() -> None:
    assert_trains_like_native("gru")


def test_fused_kernel_is_for_gru_and_lstm_only() -> None:
    with pytest.raises(ConfigError, match="cell=gru or cell=lstm only"):
        RecurrentClassifier(28, 10, cell="rnn", cpu_kernel="fused")


def test_dropout_between_layers_matches_two_single_layer_grus_with_the_same_mask() -> None:
    gru, layers, x, out, ref = dropout_between_layers(nn.GRU, gru_train_forward)
    assert torch.allclose(out, ref, atol=1e-12)

    grad_out = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, gru.weight_ih_l1, gru.weight_hh_l0], grad_out)
    want = torch.autograd.grad(ref, [x, layers[1].weight_ih_l0, layers[0].weight_hh_l0], grad_out)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-12)
