"""The grader's pytest plugin: each exercise test's outcome and exercise id, written as JSON for ``grade``.

``grade`` loads it into the child pytest as ``-p _minires_grade_plugin``
from a folder of its own, so it must import nothing but the standard library
and pytest (never minires: the tests import the graded copy's). It keeps the
tests marked ``@pytest.mark.exercise(id, weight=1)``, deselects the rest, and at
the end writes ``{"results", "modules", "exitstatus"}`` to the file named by
``MINIRES_GRADE_OUT``; ``modules`` says where each minires module came from.
With ``MINIRES_GRADE_TEST_TIMEOUT`` set to S seconds, a test that runs longer
fails with a message saying so (an alarm signal, where the platform has one),
so one endless loop costs one test, not the whole run.
"""
import json
import os
import signal
import sys

import pytest

_results = {}  # test node id -> {"exercise", "weight", "outcome", "message"}


class GradeTimeout(Exception):
    """A test ran past the grader's per-test time limit."""


@pytest.hookimpl(trylast=True)  # after -m has deselected what this run does not test
def pytest_collection_modifyitems(session, config, items):
    keep, drop = [], []
    for item in items:
        mark = item.get_closest_marker("exercise")
        if mark is None or not mark.args:
            drop.append(item)
            continue
        weight = mark.kwargs.get("weight", 1)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
            raise pytest.UsageError(f"{item.nodeid}: exercise weight must be a positive number, got {weight!r}")
        keep.append(item)
        _results[item.nodeid] = {"exercise": str(mark.args[0]), "weight": weight, "outcome": "not run",
                                 "message": ""}
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _time_limit():
    try:
        seconds = float(os.environ.get("MINIRES_GRADE_TEST_TIMEOUT", ""))
    except ValueError:
        return None
    return seconds if seconds > 0 and hasattr(signal, "setitimer") else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Run the test under the per-test time limit, if there is one."""
    limit = _time_limit()
    if limit is None:
        yield
        return

    def expire(signum, frame):
        raise GradeTimeout(f"this test ran longer than the grader's limit of {limit:g} s per test "
                          "(an endless loop, or a Python loop over every pixel?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _message(report):
    """The one line that says why a test failed or was skipped."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    if isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
        return str(report.longrepr[2])
    return str(report.longrepr or "")


def pytest_runtest_logreport(report):
    r = _results.get(report.nodeid)
    if r is None:
        return
    if report.skipped:
        r["outcome"], r["message"] = "skipped", _message(report)
    elif report.failed:
        if r["outcome"] in ("passed", "not run"):
            r["outcome"] = "failed" if report.when == "call" else "error"
            r["message"] = _message(report)
    elif report.when == "call":
        r["outcome"] = "passed"


def pytest_sessionfinish(session, exitstatus):
    modules = {name: os.path.realpath(getattr(m, "__file__", None) or "")
               for name, m in list(sys.modules.items())
               if m is not None and (name == "minires" or name.startswith("minires."))}
    with open(os.environ["MINIRES_GRADE_OUT"], "w") as f:
        json.dump({"results": _results, "modules": modules, "exitstatus": int(exitstatus)}, f)
