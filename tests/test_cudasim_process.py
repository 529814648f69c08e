"""Runs tests/test_kernels_cudasim.py in its own pytest process under Numba's CUDA simulator.

Numba reads NUMBA_ENABLE_CUDASIM once, when it is first imported, and this
process has imported numba already (the CPU kernels); so the simulator tests
need a fresh interpreter with the variable set before anything is imported.
This test starts it, so the plain test command covers the CUDA kernels too.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minires.course import handed_out

pytest.importorskip("numba.cuda", reason="needs numba-cuda (pip install 'minires[numba]')")

ROOT = Path(__file__).resolve().parent.parent


def test_numba_cuda_kernels_pass_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         str(ROOT / "tests" / "test_kernels_cudasim.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, f"the CUDA simulator tests failed:\n{report}"
    summary = proc.stdout.strip().splitlines()[-1]
    if handed_out():  # a student copy: kernels that would show a handed-out solution are removed, their tests skip
        return
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 10, f"too few simulator tests ran: {summary}"
    assert "skipped" not in summary, f"simulator tests were skipped, not run: {summary}"
