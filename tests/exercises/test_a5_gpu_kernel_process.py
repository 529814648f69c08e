"""Runs tests/exercises/test_a5_gpu_kernel.py in its own pytest process under Numba's CUDA simulator.

Numba reads NUMBA_ENABLE_CUDASIM once, when it is first imported, so the GPU
kernel exercises need a fresh interpreter with the variable set; this test
starts one, so ``pytest -m gpu_kernel`` (and the plain test command) covers
them. It carries no exercise marker: ``minires exercises grade`` runs that
file under the simulator itself and counts its tests one by one.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minires.course import handed_out

pytest.importorskip("numba.cuda", reason="needs numba-cuda (pip install 'minires[numba]')")

pytestmark = pytest.mark.gpu_kernel

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_kernel_exercises_pass_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         str(ROOT / "tests" / "exercises" / "test_a5_gpu_kernel.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, f"the GPU kernel exercises failed under the CUDA simulator:\n{report}"
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    if not handed_out():  # the reference: everything runs; a student copy may skip removed kernels
        assert passed and int(passed.group(1)) >= 10, f"too few GPU kernel tests ran: {summary}"
        assert "skipped" not in summary, f"GPU kernel tests were skipped, not run: {summary}"
