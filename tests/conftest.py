"""Shared fixtures for the engine's tests: a seeded generator, torch when installed, Hypothesis settings.

In a student copy, a test that is not an exercise's own and fails only because
it reached a handed-out exercise's ``raise NotImplementedError("<id>: ...")``
is reported as skipped, naming the exercise: an unsolved copy fails only its
exercise tests, and the same test runs for real once the exercise is solved.

The suite checks the library against its reference, so it runs on the NumPy
kernels: ``MINIRES_KERNELS=numpy`` is set here, before any test imports
minires, so that the registry's default (what ``kernels.reset()`` comes back
to) and every child process a test starts use the reference. Tests of another
backend force it (``use_kernels("numba")``); tests of the automatic choice
("auto": numba when it loads, numpy in a student copy or without Numba) clear
the variable in the process they start (``tests/test_kernels_default.py``).

Hypothesis runs under the "minires" profile by default (no deadline: the
first call of an op may import or warm caches; a modest number of examples
so the suite stays fast on two cores). Choose another with
``HYPOTHESIS_PROFILE=thorough pytest ...`` for a longer search.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["MINIRES_KERNELS"] = "numpy"  # the reference, for this process and its children (see above)
if "minires.kernels" in sys.modules:  # imported before this file (a plugin?): pin it there too
    sys.modules["minires.kernels"]._read_environment()

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # Hypothesis is a test dependency; tests that need it import it themselves
    settings = None

if settings is not None:
    _common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                   print_blob=True)
    settings.register_profile("minires", max_examples=12, **_common)
    settings.register_profile("thorough", max_examples=200, **_common)
    settings.register_profile("ci", max_examples=12, derandomize=True, **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "minires"))


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed, fresh for every test."""
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def torch():
    """PyTorch (CPU is enough), or a clean skip where it is not installed."""
    torch = pytest.importorskip("torch")
    torch.set_default_dtype(torch.float32)
    return torch


# Files that run only under Numba's CUDA simulator, each in a process of its own that a
# *_process test (or the grader) starts with NUMBA_ENABLE_CUDASIM=1 set.
_SIMULATOR_ONLY = {"test_a5_gpu_kernel.py", "test_kernels_cudasim.py"}


def pytest_ignore_collect(collection_path, config):
    """Leave the simulator-only files out of other runs, so ``pytest -m conv`` prints no skip line for them.

    Named on the command line without the variable, such a file is still collected and says how to run it.
    """
    if collection_path.name not in _SIMULATOR_ONLY or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return None
    named = {Path(arg.split("::")[0]).resolve() for arg in config.args}
    return None if collection_path.resolve() in named else True


def _unsolved_exercise(text):
    """The handed-out exercise whose ``raise NotImplementedError("<id>: <hints>")`` shows in ``text``, or None.

    ``text`` is a failed test's report with its captured output: the raise may
    have reached it as a traceback, or as the message a command printed.
    """
    from minires.course import handed_out
    return next((ex_id for ex_id in sorted(handed_out()) if f"{ex_id}: " in text), None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if not report.failed or item.get_closest_marker("exercise") is not None:
        return
    waiting = _unsolved_exercise(report.longreprtext + "".join(content for _, content in report.sections))
    if waiting:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0,
                           f"Skipped: waits for exercise {waiting}, not solved yet in this student copy")


def pytest_addoption(parser):
    parser.addoption("--exercise", action="append", default=[], metavar="ID",
                     help="run only the tests of course exercise ID, e.g. --exercise conv.im2col "
                          "(comma list or repeated; `minires exercises list` shows the ids)")


def pytest_collection_modifyitems(config, items):
    """``--exercise conv.im2col`` keeps the tests marked with that exercise (``-k im2col`` also picks col2im's)."""
    wanted = {e.strip() for option in config.getoption("--exercise") for e in option.split(",") if e.strip()}
    if not wanted:
        return
    from minires.course import EXERCISES
    unknown = sorted(wanted - set(EXERCISES))
    if unknown:
        raise pytest.UsageError(f"--exercise: no exercise {', '.join(unknown)}; choose from {', '.join(EXERCISES)}")
    keep, drop = [], []
    for item in items:
        ids = {m.args[0] for m in item.iter_markers("exercise") if m.args}
        (keep if ids & wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
