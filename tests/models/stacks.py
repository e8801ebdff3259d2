"""What the fused CPU passes' tests share: a 2-layer net with dropout between the layers,
against the two single-layer nets it stacks, with the same dropout mask."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def dropout_between_layers(
    cls: type[nn.RNNBase], forward: Callable[[nn.RNNBase, Tensor], Tensor]
) -> tuple[nn.RNNBase, list[nn.RNNBase], Tensor, Tensor, Tensor]:
    """(the 2-layer net, its layers as single-layer nets sharing its weights, the input,
    ``forward``'s output in training, the reference): the reference runs those single-layer
    nets with the mask the pass drew."""
    torch.manual_seed(0)
    B, T, n_in, H, p = 3, 6, 7, 5, 0.5
    net = cls(n_in, H, 2, batch_first=True, dropout=p).double().train()
    layers = [cls(n_in, H, batch_first=True).double(), cls(H, H, batch_first=True).double()]
    for k, layer in enumerate(layers):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(layer, f"{name}_l0").data = getattr(net, f"{name}_l{k}").data
    x = torch.randn(B, T, n_in, dtype=torch.float64, requires_grad=True)

    torch.manual_seed(1)
    out = forward(net, x)
    torch.manual_seed(1)  # the only random draw in the pass: layer 1's input mask, time-major
    mask = nn.functional.dropout(torch.ones(T, B, H, dtype=torch.float64), p).transpose(0, 1)
    ref = layers[1](layers[0](x)[0] * mask)[0]
    assert 0 < (mask == 0).sum() < mask.numel()
    return net, layers, x, out, ref


def assert_trains_like_native(cell: str) -> None:
    """One training step of a 2-layer classifier with ``cpu_kernel=fused`` gives native's
    loss and gradients, from the same parameters (the same checkpoint keys)."""
    from seqmnist.models import RecurrentClassifier

    torch.manual_seed(0)
    native = RecurrentClassifier(28, 10, cell=cell, hidden_size=16, num_layers=2)
    fused = RecurrentClassifier(28, 10, cell=cell, hidden_size=16, num_layers=2, cpu_kernel="fused")
    fused.load_state_dict(native.state_dict())
    x, y = torch.randn(8, 28, 28), torch.randint(0, 10, (8,))
    steps = []
    for net in (native, fused):
        loss = nn.functional.cross_entropy(net.train()(x), y)
        loss.backward()
        steps.append((loss, net.rnn.weight_hh_l1.grad, net.rnn.bias_ih_l0.grad))
    for want, got in zip(*steps, strict=True):
        assert torch.allclose(want, got, atol=1e-5)
