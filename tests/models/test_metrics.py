"""WeightedMean: the epoch's training loss as a weighted mean (torchmetrics' MeanMetric with
its NaN check off ignores the weights)."""

from __future__ import annotations

import math

import torch

from seqmnist.models.metrics import WeightedMean


def test_weights_count() -> None:
    m = WeightedMean()
    m.update(torch.tensor(1.0), weight=1)
    m.update(torch.tensor(2.0), weight=3)
    assert m.compute().item() == 1.75  # (1*1 + 2*3) / 4; MeanMetric(nan_strategy="disable"): 1.5


def test_batch_means_weighted_by_batch_size_equal_the_sample_mean() -> None:
    samples = torch.rand(100)
    m = WeightedMean()
    for chunk in samples.split(32):  # batches of 32, 32, 32 and 4
        m.update(chunk.mean(), weight=len(chunk))
    assert math.isclose(m.compute().item(), samples.mean().item(), rel_tol=1e-6)


def test_nan_passes_through_for_the_caller_to_check() -> None:
    m = WeightedMean()
    m.update(torch.tensor(float("nan")), weight=2)
    m.update(torch.tensor(1.0), weight=2)
    assert math.isnan(m.compute().item())


def test_states_are_sums_saved_in_the_state_dict() -> None:
    m = WeightedMean()
    m.persistent(True)
    m.update(torch.tensor(2.0), weight=5)
    state = m.state_dict()
    assert state["total"].item() == 10.0 and state["weight"].item() == 5.0
