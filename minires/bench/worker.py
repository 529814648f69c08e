"""One measurement in a fresh process: the parent starts ``python -m minires.bench --worker SPEC``, the child times.

``SPEC`` is a JSON object: framework ("minires" or "torch"), backend, workload,
device, batch, threads, warmup, repeat. The child answers with one JSON line
on stdout: the timed runs' seconds and the peak memory in KiB. A fresh process
per measurement keeps each peak to one workload, and lets the thread count be
fixed before NumPy, Numba or PyTorch load.
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np

from .. import backend
from .cases import minires_case, torch_case
from .memory import CupyMemory, HostMemory, TorchCudaMemory
from .workloads import WORKLOADS

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")


def measure(spec):
    """Start a fresh interpreter with the thread variables set, run ``spec`` there, return its JSON answer."""
    env = dict(os.environ)
    env.pop("MINIRES_KERNELS", None)  # the spec names the backend
    env.update({v: str(spec["threads"]) for v in THREAD_VARIABLES})
    done = subprocess.run([sys.executable, "-m", "minires.bench", "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise RuntimeError(f"{spec['framework']} {spec['workload']} ({spec['backend']}) failed: {lines[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(spec):
    """Time one (framework, workload, backend) in this process; return {"times_s": [...], "peak_kib": n}."""
    # as training runs: freed arrays are reused, not faulted in afresh every step (see backend). PyTorch's
    # side gets it too, so both frameworks run on the same allocator, as they did when minires set it on import
    backend.keep_freed_memory()
    workload = WORKLOADS[spec["workload"]]
    device = spec.get("device", "cpu")
    if spec["framework"] == "torch":
        import torch
        torch.set_num_threads(spec["threads"])
        build = torch_case
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False  # full float32, as minires computes
            torch.backends.cudnn.allow_tf32 = False
            sync, memory = torch.cuda.synchronize, TorchCudaMemory(torch)
    else:
        from .. import kernels
        kernels.use(spec["backend"])
        build = minires_case
        if device == "cuda":
            import cupy
            sync, memory = cupy.cuda.Device().synchronize, CupyMemory()
    if device == "cpu":
        sync, memory = (lambda: None), HostMemory()
    # a one-image step first, so code loaded on first use (Numba's kernels, oneDNN's) sits in the baseline
    for prime in build(workload, 1, np.random.default_rng(1), device):
        if prime is not None:
            prime()
    del prime
    gc.collect()
    setup, step = build(workload, spec["batch"], np.random.default_rng(0), device)
    gc.collect()
    sync()
    memory.start()
    times = []
    for i in range(spec["warmup"] + spec["repeat"]):
        if i == spec["warmup"]:
            memory.warmed_up()
        if setup is not None:
            setup()
        sync()
        start = time.perf_counter()
        step()
        sync()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - start)
    return {"times_s": times, "peak_kib": memory.peak_kib()}


def main(argv=None):
    """``python -m minires.bench --worker SPEC``: the child side of one measurement."""
    parser = argparse.ArgumentParser(prog="python -m minires.bench",
                                     description="one measurement of `minires bench`, in its own process")
    parser.add_argument("--worker", required=True, help="the measurement, as JSON")
    print(json.dumps(run(json.loads(parser.parse_args(argv).worker))))
