"""Suite-wide policy: only `gpu` tests may be skipped; the counts are printed at the end; the
per-test time limit scales with TIDEGATE_TEST_TIMEOUT_FACTOR (tests/support.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.support import scaled

pytest_plugins = ["tests.llama"]  # the real LLM server of the provider tests

_outcomes: Counter[str] = Counter()
_bad_skips: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pytest-timeout's limit for each test (``timeout`` in pyproject.toml, ``--timeout``, or
    the test's own ``timeout`` mark), times TIDEGATE_TEST_TIMEOUT_FACTOR."""
    default = float(config.getoption("timeout", None) or config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        seconds = float(marker.args[0]) if marker is not None and marker.args else default
        if seconds > 0:
            item.add_marker(pytest.mark.timeout(scaled(seconds)), append=False)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if report.skipped:
            if "gpu" in report.keywords:
                _outcomes["skipped_gpu"] += 1
            else:
                _outcomes["skipped_not_allowed"] += 1
                _bad_skips.append(f"{report.nodeid}: {report.longrepr}")
        else:
            _outcomes[report.outcome] += 1
    elif report.when == "teardown" and report.failed:
        _outcomes["errors"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    tr = terminalreporter
    tr.section("tidegate test counts")
    tr.write_line(
        f"passed={_outcomes['passed']} failed={_outcomes['failed']} "
        f"skipped_gpu={_outcomes['skipped_gpu']} "
        f"skipped_not_allowed={_outcomes['skipped_not_allowed']} "
        f"teardown_errors={_outcomes['errors']}"
    )
    for line in _bad_skips:
        tr.write_line(f"NOT ALLOWED TO SKIP: {line}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _bad_skips and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
