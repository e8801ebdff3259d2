"""Early exit: stop reading an image once the answer is sure enough.

The rule: after each step the head's top probability is compared with a threshold ``p`` in
(0, 1]; the first step where it reaches ``p`` gives the answer, and an image that never
reaches it is read to the end. ``p = 1`` reads everything (a float32 softmax can round to
exactly 1.0, so 1 is taken to mean "never stop early"). Lower thresholds read fewer steps
and risk more errors: each threshold is one point of accuracy against mean steps read, and
the points that no other point beats on both form the frontier.

Two ways to run it, which give the same answers:

* :func:`exit_points`: from the per-step answers of one full pass (``evaluate``'s grid of
  thresholds costs one pass);
* :func:`read_until_sure`: step by step, images that have answered leave the batch, so the
  compute saved is real (``predict --threshold``, the demo, ``make bench``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from seqmnist.core.errors import ConfigError

# evaluate's default grid: from "answer at the first step" (0.1 is reached by any of 10
# classes at once) to "read everything".
DEFAULT_THRESHOLDS = (
    0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99,
    0.995, 0.998, 0.999, 0.9995, 0.9999, 1.0,
)  # fmt: skip

# The headline point of a frontier: the most accurate threshold reading at most this share of
# the steps on average (20 of 28 rows).
BUDGET_SHARE = 5 / 7


def default_budget(steps: int) -> float:
    """The mean steps read allowed for the headline point: :data:`BUDGET_SHARE` of them."""
    return steps * BUDGET_SHARE


def check_threshold(value: Any, key: str = "threshold") -> float:
    """A threshold in (0, 1], as a float; anything else is a ConfigError naming ``key``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1
    if not ok:
        raise ConfigError(
            f"{key}={value!r} is not a probability threshold: it must be a number in (0, 1] "
            "(the top class's probability at which reading stops; 1 reads every step). "
            f"Fix: e.g. {key}=0.99."
        )
    return float(value)


def check_thresholds(values: Any, key: str = "early_exit.thresholds") -> list[float]:
    """A non-empty list of thresholds, each in (0, 1], sorted (None: the default grid)."""
    if values is None:
        values = DEFAULT_THRESHOLDS
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(
            f"{key}={values!r} must be a list of probability thresholds in (0, 1]. "
            f"Fix: e.g. {key}=[0.9,0.99,1.0]."
        )
    return sorted({check_threshold(v, key) for v in values})


def reads_everything(threshold: float) -> bool:
    """Whether ``threshold`` means "never stop early": 1, or a number that rounds to 1 in
    float32 (where the probabilities are compared)."""
    return float(torch.tensor(threshold, dtype=torch.float32)) >= 1.0


def is_sure(probability: float, threshold: float) -> bool:
    """Whether a probability reaches the threshold, compared as :func:`exit_steps` does."""
    if reads_everything(threshold):
        return False
    pair = torch.tensor([probability, threshold], dtype=torch.float32)
    return bool(pair[0] >= pair[1])


def never_sure(step: int, steps: int, probability: float, threshold: float) -> bool:
    """Whether an answer at ``step`` of ``steps`` came only because the sequence ended: the
    threshold (below 1) was never reached."""
    return step == steps and not reads_everything(threshold) and not is_sure(probability, threshold)


def exit_steps(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """1-based step at which each image answers, ``(N,)``, from its top probability after
    every step, ``(N, T)``."""
    n, t = confidence.shape
    if reads_everything(threshold):
        return torch.full((n,), t, dtype=torch.long)
    sure = confidence >= threshold
    sure[:, -1] = True  # an image never sure enough is read to the end
    return sure.int().argmax(dim=1) + 1  # the first True


@dataclass(frozen=True)
class ExitPoint:
    """Early exit at one threshold over a set of images."""

    threshold: float
    accuracy: float
    mean_steps: float
    p90_steps: float
    early_share: float  # images that answered before the last step


def exit_points(
    confidence: torch.Tensor,
    predictions: torch.Tensor,
    targets: torch.Tensor,
    thresholds: list[float],
) -> list[ExitPoint]:
    """Each threshold's accuracy and steps read, from the per-step top probability and
    predicted class ``(N, T)`` of one full pass."""
    t = confidence.shape[1]
    points = []
    for p in thresholds:
        steps = exit_steps(confidence, p)
        answer = predictions.gather(1, (steps - 1)[:, None]).squeeze(1)
        points.append(
            ExitPoint(
                threshold=p,
                accuracy=float((answer == targets).double().mean()),
                mean_steps=float(steps.double().mean()),
                p90_steps=float(torch.quantile(steps.double(), 0.9)),
                early_share=float((steps < t).double().mean()),
            )
        )
    return points


def frontier(points: list[ExitPoint]) -> list[ExitPoint]:
    """The points no other point beats: fewer or as many steps and a higher accuracy (the
    thresholds' own trade-offs, for tables and plots; :func:`frontier_area` measures their
    concave hull, which mixing thresholds reaches)."""
    best: list[ExitPoint] = []
    for point in sorted(points, key=lambda q: (q.mean_steps, -q.accuracy)):
        if not best or point.accuracy > best[-1].accuracy:
            best.append(point)
    return best


def frontier_area(points: list[ExitPoint], steps: int, num_classes: int) -> float:
    """Area under the best accuracy reachable at each share of steps read, in [1/C, 1];
    higher is better.

    Drawing one of two thresholds at random per image reaches any point on the chord
    between them, so what is reachable is the upper concave hull of the points and of
    (0, 1/C), reading nothing and guessing; after the last hull point it runs flat to a
    share of 1 (reading less than allowed is allowed). Points no better than chance, and
    frontier points under a chord, lie under the hull and count for nothing; so adding a
    threshold never lowers the area. A model sure and right after its first step scores
    close to 1; one right only after its last step, about (1 + 1/C) / 2.
    """
    chance = 1.0 / num_classes
    hull = upper_hull([(0.0, chance)] + [(q.mean_steps / steps, q.accuracy) for q in points])
    xs, ys = [x for x, _ in hull], [y for _, y in hull]
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return area + (1.0 - xs[-1]) * ys[-1]


def upper_hull(xy: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The rising part of the upper concave hull of ``xy`` (its first point the lowest x),
    left to right: the first point, then each one above every chord of the others."""
    hull: list[tuple[float, float]] = []
    for x, y in sorted(xy, key=lambda q: (q[0], -q[1])):
        if hull and (x <= hull[-1][0] or y <= hull[-1][1]):
            continue  # as far and no higher: dominated (the first point is the start)
        # Drop the last point while it is on or under the chord from the one before to here.
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) < 0:
                break
            hull.pop()
        hull.append((x, y))
    return hull


def point_within(points: list[ExitPoint], max_mean_steps: float) -> ExitPoint | None:
    """The most accurate point reading at most ``max_mean_steps`` on average."""
    within = [q for q in points if q.mean_steps <= max_mean_steps]
    return max(within, key=lambda q: (q.accuracy, -q.mean_steps)) if within else None


def as_rows(points: list[ExitPoint]) -> list[dict[str, float]]:
    return [asdict(q) for q in points]


# Steps read per call of the recurrent layers in read_until_sure: one call per step pays
# oneDNN's fixed cost 28 times, and reading a few rows past an answer costs less than that
# (make bench-early-exit measures it; --chunk).
CHUNK = 4


@torch.inference_mode()
def read_until_sure(
    net: torch.nn.Module, x: torch.Tensor, threshold: float, chunk: int = CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``(N, T, F)`` sequences with a unidirectional
    :class:`~seqmnist.models.nets.RecurrentClassifier` (eval mode), ``chunk`` steps a call;
    an image leaves the batch after the call in which its top probability first reaches
    ``threshold``, and answers with that step's probabilities (as if read one step at a
    time: a step's answer never depends on later steps).

    Returns the probabilities it answered with ``(N, C)`` and the 1-based step at which it
    answered ``(N,)``.
    """
    if getattr(net, "bidirectional", False):
        raise ConfigError(
            "early exit needs a unidirectional net: a bidirectional one reads the whole "
            "sequence backwards before its first answer. Fix: use a model trained with "
            "bidirectional=false, or no threshold."
        )
    if chunk < 1:
        raise ConfigError(f"chunk={chunk} must be at least 1 step a call")
    n, t, _ = x.shape
    everything = reads_everything(threshold)
    # Every tensor made here on x's device: CPU ones would not mix with CUDA outputs.
    device = x.device
    probs = torch.empty(n, net.head.out_features, device=device)
    steps = torch.full((n,), t, dtype=torch.long, device=device)
    active = torch.arange(n, device=device)  # the images still reading, and their sequences
    rest = x
    state: Any = None
    for start in range(0, t, chunk):
        stop = min(t, start + chunk)
        out, state = net.rnn(rest[:, start:stop], state)
        p = net.head(out).softmax(-1)  # (A, steps of this call, C)
        sure = torch.zeros(p.shape[:2], dtype=torch.bool, device=device)
        if not everything:
            sure = p.max(-1).values >= threshold
        if stop == t:
            sure[:, -1] = True  # the end: every image still reading answers
        done = sure.any(dim=1)
        if not bool(done.any()):
            continue
        first = sure.int().argmax(dim=1)  # the first sure step of the call
        which = done.nonzero().squeeze(1)
        probs[active[which]] = p[which, first[which]].to(probs.dtype)
        steps[active[which]] = start + first[which] + 1
        keep = ~done
        if not bool(keep.any()):
            break
        active, rest = active[keep], rest[keep]
        # The recurrent state of the images still reading: (layers, batch, hidden).
        state = tuple(s[:, keep] for s in state) if isinstance(state, tuple) else state[:, keep]
    return probs, steps
