"""One measurement in a fresh process: the parent starts ``python -m minires.bench --worker SPEC``, the child times.

``SPEC`` is a JSON object: framework ("minires", "torch", or "sgemm" for the peak), backend, workload,
device, batch, threads, warmup, repeat (and ``ranks`` when ``mpiexec`` started
it for ``--ranks``: see ``ranks``). The child answers with one JSON line on
stdout: the timed runs' seconds, the peak memory in KiB and the BLAS that ran.
A fresh process per measurement keeps each peak to one workload, and lets the
thread count be fixed before NumPy, Numba or PyTorch load; OpenBLAS's kernel
pins (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE) are dropped, so it runs the kernels
it picks for this CPU.
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
# pins that make OpenBLAS use another CPU's kernels (e.g. Haswell's AVX2 on an AVX-512 machine) and cache size
BLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


ISAS = ("native", "avx2")  # --isa: what the children's code may use


def isa_environment(isa):
    """The variables that keep every framework's code to ``isa``: {} for "native", AVX2 without AVX-512 for "avx2".

    OpenBLAS runs its Haswell kernels, Numba compiles for the host's features
    less AVX-512 (and the EVEX, AMX and AVX10 sets built on it), PyTorch's ATen and
    oneDNN dispatch to their AVX2 code: an AVX2 machine's code on this CPU's
    cores and caches.
    """
    if isa in (None, "native"):
        return {}
    if isa != "avx2":
        raise ValueError(f"unknown --isa {isa!r}; choose one of {', '.join(ISAS)}")
    env = {"OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    try:
        import llvmlite.binding as llvm  # comes with Numba
    except ImportError:
        return env  # no Numba, no Numba code to restrict
    env["NUMBA_CPU_FEATURES"] = ",".join(
        ("-" if name.startswith(("avx512", "amx", "avx10", "evex512")) or not on else "+") + name
        for name, on in sorted(llvm.get_host_cpu_features().items()))
    return env


def clean_environment(threads, isa=None):
    """A child's environment: ``threads`` threads everywhere, no forced backend, OpenBLAS picking its own kernel.

    With ``isa`` "avx2", every framework is kept to AVX2 code instead (``isa_environment``).
    """
    env = dict(os.environ)
    env.pop("MINIRES_KERNELS", None)  # the spec names the backend
    for name in BLAS_PINS:
        env.pop(name, None)
    env.update({v: str(threads) for v in THREAD_VARIABLES})
    env.update(isa_environment(isa))
    return env


def blas_description():
    """The BLAS libraries loaded here with their kernels and threads, NumPy's first, then any other (SciPy's).

    E.g. "openblas 0.3.31 of numpy (SkylakeX kernels, 1 thread)", as threadpoolctl finds them.
    """
    try:
        from threadpoolctl import threadpool_info
        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    except Exception:  # no threadpoolctl, or it could not inspect the process
        return "unknown (pip install threadpoolctl to see it)"
    if not info:
        return "none found"

    def owner(lib):  # the package that ships it: site-packages/numpy.libs/libscipy_openblas64_....so -> numpy
        folder = os.path.basename(os.path.dirname(lib.get("filepath", "")))
        return folder[:-5] if folder.endswith(".libs") else folder

    parts = []
    for lib in sorted(info, key=lambda lib: (owner(lib) != "numpy", owner(lib))):
        kernel = f"{lib['architecture']} kernels, " if lib.get("architecture") else ""
        n = lib.get("num_threads")
        parts.append(f"{lib.get('internal_api', '?')} {lib.get('version') or ''} of {owner(lib)} "
                     f"({kernel}{n} thread{'' if n == 1 else 's'})")
    return ", ".join(parts)


def measure(spec):
    """Start a fresh interpreter with the thread variables set, run ``spec`` there, return its JSON answer."""
    done = subprocess.run([sys.executable, "-m", "minires.bench", "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=clean_environment(spec["threads"], spec.get("isa")))
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
    return {"times_s": times, "peak_kib": memory.peak_kib(), "blas": blas_description()}


def main(argv=None):
    """``python -m minires.bench --worker SPEC``: the child side of one measurement."""
    parser = argparse.ArgumentParser(prog="python -m minires.bench",
                                     description="one measurement of `minires bench`, in its own process")
    parser.add_argument("--worker", required=True, help="the measurement, as JSON")
    spec = json.loads(parser.parse_args(argv).worker)
    if "ranks" in spec:  # one of the ranks mpiexec started for ``--ranks``: only rank 0 answers
        from .ranks import run_on_ranks
        answer = run_on_ranks(spec)
    elif spec["framework"] == "sgemm":  # the machine's matrix-multiply peak (see peak)
        from .peak import run_sgemm
        answer = run_sgemm(spec)
    else:
        answer = run(spec)
    if answer is not None:
        print(json.dumps(answer), flush=True)
