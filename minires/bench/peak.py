"""The machine's float32 matrix-multiply peak, measured in the same run: what the bench's GFLOP/s are a fraction of.

A convolution network's step is mostly multiply-adds, and no framework does
them faster than the BLAS does one large square matrix product (sgemm). So the
bench times one: an n x n float32 ``numpy.matmul`` through NumPy's BLAS, in a
fresh child with the bench's thread count (``--device cuda``: CuPy's, i.e.
cuBLAS, on the GPU), the best of ten runs after a warm-up. It is measured at
the start and at the end of the run and the best is the peak, so a machine
that got busier or quieter meanwhile shows in the heading. The best of many
is an upper estimate (what the cores do when nothing else runs on them); the
workloads' times are medians, so on a busy machine their share of the peak
reads low rather than high.
"""
import time

import numpy as np

# 2 * 2048**3 = 17 GFLOP a product, ~0.1 s on two cores: ten of them find the moments a shared machine is quiet
SIZE, REPEAT = 2048, 10
QUICK_SIZE, QUICK_REPEAT = 1024, 3
GPU_SIZE = 8192


def sgemm_size(device="cpu", quick=False):
    """The side n of the n x n product timed on ``device``."""
    if quick:
        return QUICK_SIZE
    return GPU_SIZE if device == "cuda" else SIZE


def run_sgemm(spec):
    """The child side: time ``spec["repeat"]`` products of two n x n float32 matrices after one warm-up."""
    n, device = spec["size"], spec.get("device", "cpu")
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    if device == "cuda":
        import cupy
        a, b = cupy.asarray(a), cupy.asarray(b)
        out, sync = cupy.empty((n, n), dtype=cupy.float32), cupy.cuda.Device().synchronize
        matmul = cupy.matmul
    else:
        out, sync, matmul = np.empty((n, n), dtype=np.float32), (lambda: None), np.matmul
    times = []
    for i in range(1 + spec["repeat"]):
        sync()
        start = time.perf_counter()
        matmul(a, b, out=out)
        sync()
        if i:
            times.append(time.perf_counter() - start)
    from .worker import blas_description
    return {"times_s": times, "peak_kib": 0, "blas": "cuBLAS (CuPy)" if device == "cuda" else blas_description()}


def measure_sgemm(threads, device="cpu", quick=False, isa=None):
    """One measurement in a fresh child: {"gflop_per_s": best, "size": n, "repeat": r, "blas": ...}."""
    from .worker import measure
    n = sgemm_size(device, quick)
    repeat = QUICK_REPEAT if quick else REPEAT
    answer = measure({"framework": "sgemm", "backend": "blas", "workload": f"sgemm {n}x{n}", "device": device,
                      "size": n, "repeat": repeat, "threads": threads, "isa": isa})
    return {"gflop_per_s": 2 * n ** 3 / min(answer["times_s"]) / 1e9, "size": n, "repeat": repeat,
            "blas": answer["blas"]}


def combine(first, last):
    """The peak of a run from its measurements at the start and at the end: the best, with both kept."""
    return {"gflop_per_s": max(first["gflop_per_s"], last["gflop_per_s"]), "size": first["size"],
            "repeat": first["repeat"], "blas": first["blas"],
            "start_gflop_per_s": first["gflop_per_s"], "end_gflop_per_s": last["gflop_per_s"]}


def describe(peak, threads, device="cpu"):
    """The heading's words for the peak, e.g. "sgemm peak 96.5 GFLOP/s (NumPy's BLAS, 4096x4096 float32, ...)"."""
    how = "cuBLAS via CuPy" if device == "cuda" else f"NumPy's BLAS, {threads} thread{'' if threads == 1 else 's'}"
    return (f"sgemm peak {peak['gflop_per_s']:.1f} GFLOP/s ({how}, {peak['size']}x{peak['size']} float32, best of "
            f"{peak['repeat']} after a warm-up; {peak['start_gflop_per_s']:.1f} at the start of the run, "
            f"{peak['end_gflop_per_s']:.1f} at the end)")
