"""Early exit: where each image stops, the points, frontier and area, and the batched reader
that drops finished images (the same answers as a full pass)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from seqmnist.core.errors import ConfigError
from seqmnist.inference import early_exit
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


def test_the_area_is_under_the_concave_hull_of_the_points() -> None:
    # Steps 10, 10 classes: chance 0.1; shares of steps read 0.1, 0.3 (and 0.2).
    low, high, inside = point(1, 0.5), point(3, 0.95), point(2, 0.55)
    # From (0, 0.1) to (0.1, 0.5), to (0.3, 0.95), flat at 0.95 to 1:
    # 0.1 * (0.1 + 0.5) / 2 + 0.2 * (0.5 + 0.95) / 2 + 0.7 * 0.95 = 0.03 + 0.145 + 0.665.
    assert frontier_area([low, high], 10, 10) == pytest.approx(0.84)
    # (0.2, 0.55) is on the Pareto frontier but under the chord from (0.1, 0.5) to
    # (0.3, 0.95), which is at 0.725 there: drawing either threshold at random per image
    # already beats it, so it changes nothing (straight lines through it gave
    # 0.03 + 0.1 * (0.5 + 0.55) / 2 + 0.1 * (0.55 + 0.95) / 2 + 0.665 = 0.8225).
    assert frontier([low, high, inside]) == [low, inside, high]
    assert frontier_area([low, high, inside], 10, 10) == pytest.approx(0.84)
    # The hull starts at chance: (0.2, 0.3) is under the chord from (0, 0.1) to
    # (0.5, 0.9), at 0.1 + 0.2 * 1.6 = 0.42, so the area is that of (0.5, 0.9) alone:
    # 0.5 * (0.1 + 0.9) / 2 + 0.5 * 0.9 = 0.7 (straight lines: 0.04 + 0.18 + 0.45 = 0.67).
    assert frontier_area([point(2, 0.3), point(5, 0.9)], 10, 10) == pytest.approx(0.7)


def test_the_area_of_a_single_point_and_of_points_no_better_than_chance() -> None:
    # One point (0.5, 0.9): 0.5 * (0.1 + 0.9) / 2 + 0.5 * 0.9 = 0.25 + 0.45 = 0.7.
    assert frontier_area([point(5, 0.9)], 10, 10) == pytest.approx(0.7)
    # One point read to the end (1, 0.9): 1 * (0.1 + 0.9) / 2 = 0.5, (1 + 1/C) / 2.
    assert frontier_area([point(10, 0.9)], 10, 10) == pytest.approx(0.5)
    # At or below chance (1/C = 0.1, or 0.25 with 4 classes): guessing, 1 * 1/C.
    assert frontier_area([point(3, 0.1)], 10, 10) == pytest.approx(0.1)
    assert frontier_area([point(3, 0.05), point(8, 0.1)], 10, 10) == pytest.approx(0.1)
    assert frontier_area([point(1, 0.25)], 10, 4) == pytest.approx(0.25)
    # A point at chance beside one above it counts for nothing: 0.7 as above.
    assert frontier_area([point(1, 0.1), point(5, 0.9)], 10, 10) == pytest.approx(0.7)


SETS = [
    [point(5, 0.9)],
    [point(1, 0.5), point(3, 0.95)],
    [point(2, 0.5), point(5, 0.9), point(10, 0.95), point(6, 0.8)],
    [point(4, 0.3), point(7, 0.6), point(9, 0.62), point(10, 0.99)],
]
EXTRA = [point(m, a) for m in (1, 2, 3, 5, 7, 9, 10) for a in (0.05, 0.3, 0.55, 0.8, 0.97)]


@pytest.mark.parametrize("points", SETS)
def test_adding_a_threshold_never_lowers_the_area(points: list[ExitPoint]) -> None:
    # Any new point can be ignored, so the best trade-off it allows is at least as good.
    before = frontier_area(points, 10, 10)
    for extra in EXTRA:
        assert frontier_area([*points, extra], 10, 10) >= before - 1e-12, extra


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


CREATORS = ("empty", "full", "arange", "zeros", "ones")


class CreationSpy:
    """The torch module as early_exit sees it, recording the device asked for by each new
    tensor (CPU-only machines cannot run the CUDA case itself)."""

    def __init__(self) -> None:
        self.devices: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        real = getattr(torch, name)
        if name not in CREATORS:
            return real

        def create(*args: Any, **kwargs: Any) -> torch.Tensor:
            self.devices.append((name, kwargs.get("device")))
            return real(*args, **kwargs)

        return create


@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_the_batched_reader_makes_its_tensors_on_the_input_s_device(
    monkeypatch: pytest.MonkeyPatch, threshold: float
) -> None:
    torch.manual_seed(0)
    net = RecurrentClassifier(cell="gru", hidden_size=8).eval()
    x = torch.rand(6, 28, 28)
    expected = read_until_sure(net, x, threshold, chunk=5)
    spy = CreationSpy()
    monkeypatch.setattr(early_exit, "torch", spy)
    probs, steps = read_until_sure(net, x, threshold, chunk=5)
    # probs, steps, active, and sure on every call: each on x's device, not the default.
    names = {name for name, _ in spy.devices}
    assert {"empty", "full", "arange", "zeros"} <= names, spy.devices
    assert all(device == x.device for _, device in spy.devices), spy.devices
    assert torch.equal(probs, expected[0]) and torch.equal(steps, expected[1])
    assert (probs.dtype, steps.dtype) == (torch.float32, torch.long)
