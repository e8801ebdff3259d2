"""The suite's skip rule (tests/skip_rule.py), on a small suite of its own run in process:
a skip is listed with its reason, and under CI any skip fails the run."""

from __future__ import annotations

import pytest

SUITE = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("the browser is missing")

@pytest.mark.xfail(reason="known", strict=True)
def test_known_failure():
    assert False
"""
DROPPED_FILE = """
import pytest
pytest.importorskip("no_such_package_here", reason="the extra is not installed")

def test_never_collected():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for name in ("CI", "SEQMNIST_REQUIRE_ALL"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(test_suite=SUITE, test_dropped=DROPPED_FILE)
    return pytester


def run(suite: pytest.Pytester, *files: str) -> pytest.RunResult:
    return suite.runpytest_inprocess(
        "-p", "tests.skip_rule", "-ra", "-p", "no:cacheprovider", "-W", "ignore", *files
    )


def test_a_skip_is_allowed_and_listed_with_its_reason(suite: pytest.Pytester) -> None:
    result = run(suite)
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    for line in (
        "*skips: allowed here and listed with their reasons*",
        "SKIPPED *test_suite.py*: the browser is missing",
        "SKIPPED *test_dropped.py*: the extra is not installed",
    ):
        result.stdout.fnmatch_lines([line])
    assert result.ret == 0


@pytest.mark.parametrize("flag", [("CI", "true"), ("SEQMNIST_REQUIRE_ALL", "1")])
def test_under_ci_every_skip_fails_whatever_its_reason(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, flag: tuple[str, str]
) -> None:
    monkeypatch.setenv(*flag)
    result = run(suite, "test_suite.py")
    # The skipped test fails; an expected failure stays one.
    result.assert_outcomes(passed=1, failed=1, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "*skips: CI=true or SEQMNIST_REQUIRE_ALL=1: every test must run*",
            "*skipped, which fails here (CI=true or SEQMNIST_REQUIRE_ALL=1*the browser is missing",
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # A file dropped at collection (a module-level importorskip) is an error of the run.
    dropped = run(suite, "test_dropped.py")
    dropped.assert_outcomes(errors=1)
    dropped.stdout.fnmatch_lines(["*skipped, which fails here*: the extra is not installed"])
    assert dropped.ret != 0


def test_other_values_of_the_flags_do_not_require(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "false")
    monkeypatch.setenv("SEQMNIST_REQUIRE_ALL", "0")
    run(suite).assert_outcomes(passed=1, skipped=2, xfailed=1)
