"""TF1RMSprop: TensorFlow 1's RMSPropOptimizer update, step by step."""

from __future__ import annotations

import math

import pytest
import torch

from seqmnist.models.optimizers import TF1RMSprop


def test_updates_follow_tf1s_formula() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = TF1RMSprop([w], lr=0.1, decay=0.9, momentum=0.5, epsilon=1e-10)
    ms, mom, expected = [1.0, 1.0], [0.0, 0.0], [1.0, -2.0]
    for grad in ([0.5, -1.0], [0.2, 0.3], [-0.4, 0.0]):
        w.grad = torch.tensor(grad)
        opt.step()
        for i, g in enumerate(grad):
            ms[i] = 0.9 * ms[i] + 0.1 * g * g  # the mean square starts at 1, not 0
            mom[i] = 0.5 * mom[i] + 0.1 * g / math.sqrt(ms[i] + 1e-10)
            expected[i] -= mom[i]
        assert torch.allclose(w.detach(), torch.tensor(expected), atol=1e-6)


def test_first_step_is_small_unlike_pytorchs_rmsprop() -> None:
    a = torch.nn.Parameter(torch.zeros(1))
    b = torch.nn.Parameter(torch.zeros(1))
    tf1 = TF1RMSprop([a], lr=0.01)
    torch_rms = torch.optim.RMSprop([b], lr=0.01, alpha=0.9)
    for p, opt in ((a, tf1), (b, torch_rms)):
        p.grad = torch.tensor([0.01])
        opt.step()
    assert abs(a.item()) == pytest.approx(0.01 * 0.01 / math.sqrt(0.9 + 0.1 * 1e-4), rel=1e-5)
    assert abs(b.item()) > 100 * abs(a.item())  # PyTorch's starts at 0: lr / sqrt(0.1)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="decay"):
        TF1RMSprop([torch.nn.Parameter(torch.zeros(1))], decay=1.0)


def test_state_round_trips_through_a_state_dict() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    opt = TF1RMSprop([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    other = TF1RMSprop([torch.nn.Parameter(w.detach().clone())], lr=0.1)
    other.load_state_dict(opt.state_dict())
    assert torch.equal(other.state_dict()["state"][0]["ms"], opt.state_dict()["state"][0]["ms"])
