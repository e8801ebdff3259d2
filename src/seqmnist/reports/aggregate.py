"""Aggregates over runs: mean and sample standard deviation, and grouping rows by settings."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def numbers(rows: Iterable[Mapping[str, Any]], key: str) -> list[float]:
    """The numeric values of ``key`` among ``rows`` (missing and non-numbers skipped)."""
    return [
        float(r[key])
        for r in rows
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
    ]


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std; None where there are too few values (std needs two)."""
    mean = statistics.fmean(values) if values else None
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def group_by(
    rows: Iterable[Mapping[str, Any]], keys: Sequence[str]
) -> dict[tuple[str, ...], list[Mapping[str, Any]]]:
    """Rows grouped by their values of ``keys`` (compared as text), in first-seen order."""
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(str(r.get(k)) for k in keys), []).append(r)
    return groups


def summary(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """``{"<metric> mean": ..., "<metric> std": ...}`` over ``rows`` for each metric."""
    out: dict[str, Any] = {}
    for m in metrics:
        mean, std = mean_std(numbers(rows, m))
        if mean is not None:
            out[f"{m} mean"], out[f"{m} std"] = mean, std
    return out


def distinct(values: Iterable[Any]) -> list[Any]:
    """The different non-None values, in first-seen order."""
    out: list[Any] = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out
