"""Suite-wide policy: only `gpu` tests may be skipped; the counts are printed at the end."""

from __future__ import annotations

from collections import Counter

import pytest

pytest_plugins = ["tests.llama"]  # the real LLM server of the provider tests

_outcomes: Counter[str] = Counter()
_bad_skips: list[str] = []


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
