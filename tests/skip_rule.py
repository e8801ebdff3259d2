"""The suite's one skip rule: a test may skip on a user's machine (an extra, the browser,
the local cluster or the real data missing), where ``make test`` lists every skip with
its reason; under CI (``CI=true``) or ``SEQMNIST_REQUIRE_ALL=1`` every skip, whatever its
reason, fails the run, so that no area of the suite can go quiet and keep CI green.

The hooks below are the rule; ``tests/conftest.py`` takes them in.
"""

from __future__ import annotations

import os

import pytest

RULE = "CI=true or SEQMNIST_REQUIRE_ALL=1: every test must run"


def required() -> bool:
    """Whether this run must run every test (CI, or a user asking for it)."""
    return (
        os.environ.get("CI", "").lower() == "true" or os.environ.get("SEQMNIST_REQUIRE_ALL") == "1"
    )


def _reason(longrepr: object) -> str:
    # A skip's longrepr is (file, line, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail(report: pytest.TestReport | pytest.CollectReport) -> None:
    report.longrepr = f"skipped, which fails here ({RULE}): {_reason(report.longrepr)}"
    report.outcome = "failed"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and required():
        _fail(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    # A module-level importorskip drops a whole file at collection.
    report = yield
    if report.skipped and required():
        _fail(report)
    return report


def pytest_report_header(config: pytest.Config) -> str:
    if required():
        return f"skips: {RULE}, so a skip fails"
    return "skips: allowed here and listed with their reasons at the end (CI fails on any)"
