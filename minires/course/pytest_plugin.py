"""The grader's pytest plugin: each exercise test's outcome and exercise id, written as JSON for ``grade``.

``grade`` loads it into the child pytest as ``-p _minires_grade_plugin``
from a folder of its own, so it must import nothing but the standard library
and pytest (never minires: the tests import the graded copy's). It keeps the
tests marked ``@pytest.mark.exercise(id)``, deselects the rest, and at the end
writes ``{"results", "modules", "exitstatus"}`` to the file named by
``MINIRES_GRADE_OUT``; ``modules`` says where each minires module came from.
"""
import json
import os
import sys

import pytest

_results = {}  # test node id -> {"exercise", "outcome", "message"}


@pytest.hookimpl(trylast=True)  # after -m has deselected what this run does not test
def pytest_collection_modifyitems(session, config, items):
    keep, drop = [], []
    for item in items:
        mark = item.get_closest_marker("exercise")
        if mark is None or not mark.args:
            drop.append(item)
            continue
        keep.append(item)
        _results[item.nodeid] = {"exercise": str(mark.args[0]), "outcome": "not run", "message": ""}
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


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
