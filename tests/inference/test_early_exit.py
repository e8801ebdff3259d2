"""Early exit: where each image stops, the points, frontier and area, and the batched reader
that drops finished images (the same answers as a full pass)."""

from __future__ import annotations

import pytest
import torch

from seqmnist.core.errors import ConfigError
from seqmnist.inference.early_exit import (
    ExitPoint,
    check_threshold,
    check_thresholds,
    exit_points,
    exit_steps,
    frontier,
    frontier_area,
    point_within,
    read_until_sure,
)
from seqmnist.models.nets import RecurrentClassifier

CONF = torch.tensor([[0.2, 0.95, 0.99], [0.5, 0.6, 0.7], [0.99, 0.2, 0.3]])


def test_each_image_stops_at_the_first_step_sure_enough() -> None:
    assert exit_steps(CONF, 0.9).tolist() == [2, 3, 1]
    assert exit_steps(CONF, 0.96).tolist() == [3, 3, 1]
    assert exit_steps(CONF, 0.1).tolist() == [1, 1, 1]
    # 1 reads everything, even where the probability rounds to exactly 1.0, and so does a
    # threshold that is 1 in float32, where the probabilities are compared.
    assert exit_steps(torch.ones(2, 4), 1.0).tolist() == [4, 4]
    assert exit_steps(torch.ones(2, 4), 1 - 1e-9).tolist() == [4, 4]
    # A probability equal to the threshold reaches it.
    assert exit_steps(torch.tensor([[0.2, 0.7, 0.9]]), float(torch.tensor(0.7))).tolist() == [2]


def test_points_read_fewer_steps_at_lower_thresholds() -> None:
    torch.manual_seed(0)
    conf = torch.rand(500, 10).cummax(dim=1).values  # sureness grows as steps are read
    preds = torch.randint(0, 3, (500, 10))
    targets = preds[:, -1].clone()
    targets[:100] = (targets[:100] + 1) % 3  # the last step is right for 80%
    points = exit_points(conf, preds, targets, [0.3, 0.6, 0.9, 0.99, 1.0])
    means = [q.mean_steps for q in points]
    assert means == sorted(means) and means[0] < means[-1]
    last = points[-1]
    assert (last.mean_steps, last.p90_steps, last.early_share) == (10.0, 10.0, 0.0)
    assert last.accuracy == pytest.approx(0.8)
    # By hand for one threshold.
    steps = exit_steps(conf, 0.6)
    answer = preds[torch.arange(500), steps - 1]
    assert points[1].accuracy == pytest.approx(float((answer == targets).float().mean()))
    assert points[1].mean_steps == pytest.approx(float(steps.float().mean()))


def point(mean: float, acc: float, thr: float = 0.5) -> ExitPoint:
    return ExitPoint(threshold=thr, accuracy=acc, mean_steps=mean, p90_steps=mean, early_share=0)


def test_frontier_and_its_area_by_hand() -> None:
    a, b, c, dominated = point(2, 0.5), point(5, 0.9), point(10, 0.95), point(6, 0.8)
    assert frontier([c, dominated, b, a]) == [a, b, c]
    # From chance (0, 0.1) straight to (0.2, 0.5), (0.5, 0.9), (1, 0.95): trapezoids.
    expected = 0.2 * (0.1 + 0.5) / 2 + 0.3 * (0.5 + 0.9) / 2 + 0.5 * (0.9 + 0.95) / 2
    assert frontier_area([a, b, c, dominated], 10, 10) == pytest.approx(expected)
    # Flat after the last point; a point no better than chance counts for nothing.
    assert frontier_area([point(5, 0.9)], 10, 10) == pytest.approx(0.5 * 0.5 + 0.5 * 0.9)
    assert frontier_area([point(3, 0.05)], 10, 10) == pytest.approx(0.1)
    assert point_within([a, b, c], 6) == b and point_within([b, c], 4) is None


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "high", None, True])
def test_a_threshold_outside_0_1_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"must be a number in \(0, 1\].*Fix"):
        check_threshold(value, "--threshold")


def test_thresholds_are_a_sorted_list() -> None:
    assert check_thresholds([1, 0.9, 0.5, 0.9]) == [0.5, 0.9, 1.0]
    assert check_thresholds(0.99) == [0.99]
    with pytest.raises(ConfigError, match="must be a list"):
        check_thresholds([])


@pytest.mark.parametrize(("cell", "layers"), [("lstm", 2), ("gru", 1), ("rnn", 2)])
def test_the_batched_reader_answers_as_a_full_pass(cell: str, layers: int) -> None:
    torch.manual_seed(0)
    net = RecurrentClassifier(cell=cell, hidden_size=16, num_layers=layers).double().eval()
    with torch.no_grad():
        net.head.weight.mul_(20)  # spread the probabilities so that thresholds bite
    x = torch.rand(64, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        full = net.step_logits(x).softmax(-1)
    conf = full.max(-1).values
    # Thresholds midway between two neighbouring confidences: no image sits on one.
    values = conf.flatten().unique().sort().values
    mids = (values[1:] + values[:-1]) / 2
    for threshold in (float(mids[len(mids) // 2]), float(mids[9 * len(mids) // 10]), 1.0):
        for chunk in (1, 3, 4, 28):  # rows read a call: where each image stops is the same
            probs, steps = read_until_sure(net, x, threshold, chunk)
            assert torch.equal(steps, exit_steps(conf, threshold)), chunk
            expected = full[torch.arange(64), steps - 1].float()
            assert torch.allclose(probs, expected, atol=1e-6)
    # Images did leave early at the lower thresholds.
    assert read_until_sure(net, x, float(mids[len(mids) // 2]))[1].float().mean() < 28


def test_the_batched_reader_refuses_a_bidirectional_net() -> None:
    net = RecurrentClassifier(cell="gru", hidden_size=8, bidirectional=True).eval()
    with pytest.raises(ConfigError, match="unidirectional"):
        read_until_sure(net, torch.rand(2, 28, 28), 0.9)
    one_way = RecurrentClassifier(cell="gru", hidden_size=8).eval()
    with pytest.raises(ConfigError, match="chunk=0"):
        read_until_sure(one_way, torch.rand(2, 28, 28), 0.9, chunk=0)
