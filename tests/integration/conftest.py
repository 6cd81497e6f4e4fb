"""Shared fixtures for integration tests: real servers on loopback, free ports,
temporary directories, and teardown that runs even when a test fails."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from servers import Nginx, Redis, free_port, ROOT, BUILD  # noqa: E402,F401


def pytest_configure(config):
    # pytest.ini's per-test timeout is the backstop against a wait with no bound; without
    # the plugin it would be an ignored option and a hung test would hang `make test`.
    if not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError("pytest-timeout is not installed (Debian package "
                                "python3-pytest-timeout): run `make deps`")


# A skipped or xfailed test tested nothing: it must not let the run pass. Each one is
# recorded here and makes the session's exit status "tests failed".
_NOT_RUN = []


def pytest_runtest_logreport(report):
    if report.skipped or hasattr(report, "wasxfail"):
        kind = "xfail" if hasattr(report, "wasxfail") else "skipped"
        _NOT_RUN.append(f"{report.nodeid} ({kind}, {report.when})")


def pytest_collectreport(report):
    if report.skipped:  # a whole module skipped (pytest.skip(allow_module_level=True))
        _NOT_RUN.append(f"{report.nodeid} (skipped at collection)")


def pytest_terminal_summary(terminalreporter):
    if _NOT_RUN:
        terminalreporter.section("tests that did not run count as failures", red=True)
        for line in _NOT_RUN:
            terminalreporter.line(line)


def pytest_sessionfinish(session, exitstatus):
    if _NOT_RUN and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def nginx_factory(tmp_path):
    """Starts nginx instances serving a directory; all are stopped at teardown."""
    started = []

    def make(root, **kw):
        n = Nginx(root, tmp_path / f"nginx{len(started)}", **kw)
        n.start()
        started.append(n)
        return n

    try:
        yield make
    finally:
        for n in started:
            n.stop()


@pytest.fixture
def redis_server(tmp_path):
    r = Redis(tmp_path / "redis")
    try:
        yield r.start()
    finally:
        r.stop()
