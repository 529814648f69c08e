"""``minires bench``: time, throughput and peak memory of minires's hot paths per kernel backend, beside PyTorch.

Every (framework, workload, backend) runs in a fresh child process
(``python -m minires.bench --worker SPEC``) whose thread count is fixed
through the environment before NumPy, Numba or PyTorch load, so peak memory
is that workload's alone and every framework gets the same cores. Each child
first keeps freed memory for reuse (``minires.backend.keep_freed_memory``), as
training does, so minires and PyTorch time their steps on the same allocator.
The children run without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (pins that make
OpenBLAS use another CPU's kernels), and the heading names the BLAS, its kernels
and threads as the child found them. ``--isa avx2`` instead keeps every
framework to AVX2 code on purpose (OpenBLAS's Haswell kernels, Numba compiling
without AVX-512, PyTorch's ATen and oneDNN at AVX2): an AVX2 machine's kernels
on this CPU's cores and caches, for figures where no AVX2 machine is at hand.
Times are medians after warm-up; GFLOP/s counts 2 FLOPs per multiply-add of the
convolutions and linear layers (``minires.viz.summary``'s count), three times
the forward's for a training step, and each record also gives them as a
fraction of the machine's sgemm peak, a large float32 matrix product through
NumPy's BLAS timed in the same run with the same threads (``peak``), so the
distance to the limit shows beside the ratio to PyTorch.

With ``device="cuda"`` the same workloads run on the GPU: minires on its GPU
kernel backends (CuPy arrays), PyTorch on CUDA with TF32 off (both compute in
full float32); every timed step ends in a device synchronisation, and peak
memory is what each framework's GPU allocator holds above the live memory
after setup (CuPy's memory pool; PyTorch's reserved bytes).

    workloads.py  what is timed: names, batch sizes, groups, FLOP counts
    cases.py      the step each framework runs for a workload (PyTorch's twin models)
    worker.py     one measurement in a child process: environment, timing
    memory.py     the peak-memory meters the child reads
    peak.py       the machine's sgemm peak, measured in the same run: GFLOP/s as a share of it
    runner.py     the parent: options checked, frameworks taking turns, records
    ranks.py      ``--ranks 1,2``: data-parallel training on MPI ranks (mpiexec), speed-up and communication
    report.py     the heading and the table
    cli.py        the ``minires bench`` options
"""
from .cli import add_bench_parser, run_cli
from .ranks import format_ranks_table, parse_ranks, run_ranks
from . import peak
from .report import describe_gpu, format_table
from .runner import DEVICES, check_device, resolve_backends, run_bench, torch_available
from .workloads import (DEFAULT_WORKLOADS, GROUPS, QUICK_REPEAT, QUICK_WARMUP, WORKLOADS, Workload,
                        macs_per_image, resolve_workloads)

__all__ = ["DEFAULT_WORKLOADS", "DEVICES", "GROUPS", "QUICK_REPEAT", "QUICK_WARMUP", "WORKLOADS", "Workload",
           "add_bench_parser", "check_device", "peak", "describe_gpu", "format_ranks_table", "format_table",
           "macs_per_image", "parse_ranks", "resolve_backends", "resolve_workloads", "run_bench", "run_cli",
           "run_ranks", "torch_available"]
