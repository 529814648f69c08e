"""Data parallelism on MPI (through mpi4py): ranks, collectives, sharded sampling, synchronised batch norm.

Launch N copies of a program with ``mpiexec -n N`` and each is a *rank*. In
data-parallel training every rank holds the whole model, takes its own slice
of each global batch, and the ranks average their gradients before every
step, so they take the same steps as one process on the whole batch. The
names and meanings follow ``torch.distributed``: ``init()``, ``rank()``,
``world_size()``, ``barrier()``, ``broadcast``, ``all_reduce``.

In one process (no ``mpiexec``, or mpi4py not installed) everything here is a
no-op on a world of one. Under ``mpiexec`` without mpi4py, ``init`` says so.
NumPy arrays go through MPI; CuPy arrays through NCCL (via CuPy), else through
a CUDA-aware MPI, else through host memory.

Batch norm is where data parallelism is not free: each rank would normalise
with the statistics of its own slice. ``SyncBatchNormFunction`` gathers the
per-channel counts, means and variances of every rank in forward and sums the
two per-channel gradient sums in backward, so the result is batch norm over
the global batch (``nn.SyncBatchNorm`` uses it).
"""
import hashlib
import json
import os
import sys
import time

import numpy as np

from . import kernels as _kernels
from .autograd import Function
from .backend import array_module, cupy_or_none
from .tensor import Tensor

# environment variables by which MPI launchers (MPICH/Hydra, Open MPI, PMIx, Slurm) give the world size
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


class _World:
    """This process's place among the ranks; one per process."""

    def __init__(self):
        self.comm = None            # the MPI communicator once init() has run with mpi4py
        self.MPI = None
        self.rank, self.size = 0, 1
        self.local_rank, self.local_size = 0, 1
        self.threads = None         # the BLAS/Numba threads this rank was given
        self.nccl = None            # CuPy's NCCL communicator, made on first use
        self.comm_seconds = 0.0     # time spent in collectives (minires bench reports it)
        self._limits = None         # threadpoolctl's limit, kept alive


_world = _World()


def launched_size():
    """The number of ranks an MPI launcher started (from its environment); 1 outside one."""
    for var in _SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def launched_rank():
    """This process's rank as its MPI launcher gave it (from its environment); None outside a launcher.

    Known before ``init``, so a program can keep its ranks other than 0 quiet even when MPI cannot start.
    """
    for var in _RANK_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return None


def is_available():
    """True when mpi4py can be imported."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def is_initialized():
    return _world.comm is not None


def init(threads=None):
    """Join the ranks (a no-op in one process); share the machine's cores out between its ranks.

    Returns the world size. ``threads``: BLAS and Numba threads for this rank
    (default: the cores of this machine divided by the ranks on it, at least 1;
    ranks that oversubscribe the cores run many times slower).
    """
    if _world.comm is not None:
        return _world.size
    launched = launched_size()
    try:
        from mpi4py import MPI
    except ImportError:
        if launched > 1:
            raise RuntimeError(f"this process is one of {launched} ranks started by an MPI launcher, but mpi4py "
                               "is not installed, so the ranks cannot talk: pip install 'minires[mpi]'") from None
        return 1
    comm = MPI.COMM_WORLD
    _world.MPI, _world.comm = MPI, comm
    _world.rank, _world.size = comm.Get_rank(), comm.Get_size()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=_world.rank)
    _world.local_rank, _world.local_size = local.Get_rank(), local.Get_size()
    local.Free()
    if _world.size > 1:
        _share_threads(threads)
        _pick_gpu()
    return _world.size


def _share_threads(threads):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = threads or max(1, cores // _world.local_size)
    _world.threads = n
    try:
        from threadpoolctl import threadpool_limits
        _world._limits = threadpool_limits(limits=n)
    except ImportError:  # comes with scikit-learn; without it BLAS keeps its own count
        pass
    if "numba" in sys.modules:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    else:
        os.environ.setdefault("NUMBA_NUM_THREADS", str(n))


def _pick_gpu():
    """One GPU per rank, chosen by the rank's index on its machine (where CuPy sees GPUs)."""
    cp = cupy_or_none()
    if cp is None:
        return
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception:
        return
    if count:
        cp.cuda.Device(_world.local_rank % count).use()


def rank():
    """This process's rank, 0 to world_size() - 1 (0 in one process)."""
    return _world.rank


def world_size():
    return _world.size


def local_rank():
    """This rank's index among the ranks on its own machine."""
    return _world.local_rank


def is_main():
    """True on rank 0: the rank that prints and writes files."""
    return _world.rank == 0


def threads():
    """The BLAS/Numba threads this rank was given by ``init`` (None in one process)."""
    return _world.threads


def communication_seconds():
    """Seconds this rank has spent in collectives since it started (or the last ``reset_timer``)."""
    return _world.comm_seconds


def reset_timer():
    _world.comm_seconds = 0.0


def barrier():
    """Wait until every rank has reached this call."""
    if _world.size > 1:
        _world.comm.Barrier()


# ---------------------------------------------------------------- collectives

_OPS = ("sum", "mean")


def _array_of(x, what):
    if isinstance(x, Tensor):
        return x.data
    if isinstance(x, np.ndarray) or (cupy_or_none() is not None and isinstance(x, cupy_or_none().ndarray)):
        return x
    raise TypeError(f"{what}: expected a NumPy or CuPy array or a Tensor, got {type(x).__name__}")


def _contiguous(a, what):
    if not a.flags.c_contiguous:
        raise ValueError(f"{what}: the array must be C-contiguous to be reduced in place (shape {a.shape}); "
                         "pass a copy")
    return a


def _check_op(op, what):
    if op not in _OPS:
        raise ValueError(f"{what}: op must be one of {', '.join(map(repr, _OPS))}, got {op!r}")


def _timed(fn):
    start = time.perf_counter()
    try:
        return fn()
    finally:
        _world.comm_seconds += time.perf_counter() - start


def all_reduce(x, op="sum"):
    """Reduce ``x`` (NumPy or CuPy array, or Tensor) over all ranks, in place on every rank; returns ``x``.

    ``op``: "sum" or "mean" (the sum divided by the world size).
    """
    _check_op(op, "all_reduce")
    a = _contiguous(_array_of(x, "all_reduce"), "all_reduce")
    if _world.size == 1:
        return x
    _timed(lambda: _reduce_in_place(a))
    if op == "mean":
        a /= _world.size
    return x


def _reduce_in_place(a):
    MPI = _world.MPI
    if isinstance(a, np.ndarray):
        _world.comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
        return
    if _nccl_all_reduce(a):
        return
    try:  # a CUDA-aware MPI takes device memory directly
        _world.comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
    except Exception:  # otherwise through host memory
        host = a.get()
        _world.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
        a.set(host)


_NCCL_TYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
               "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8"}


def _nccl_all_reduce(a):
    """Sum CuPy array ``a`` over the ranks with NCCL; False where NCCL is not available."""
    try:
        from cupy.cuda import nccl
    except Exception:
        return False
    if not nccl.available or a.dtype.name not in _NCCL_TYPES:
        return False
    if _world.nccl is None:
        uid = nccl.get_unique_id() if _world.rank == 0 else None
        uid = _world.comm.bcast(uid, root=0)
        _world.nccl = nccl.NcclCommunicator(_world.size, uid, _world.rank)
    cp = cupy_or_none()
    stream = cp.cuda.get_current_stream()
    _world.nccl.allReduce(a.data.ptr, a.data.ptr, a.size, getattr(nccl, _NCCL_TYPES[a.dtype.name]),
                          nccl.NCCL_SUM, stream.ptr)
    stream.synchronize()
    return True


class Work:
    """A started all-reduce (``all_reduce_async``); ``wait()`` finishes it (dividing for a mean)."""

    def __init__(self, array, request, op):
        self.array, self.request, self.op = array, request, op

    def test(self):
        """Let MPI progress; True when the reduction is complete."""
        return self.request is None or _timed(self.request.Test)

    def wait(self):
        if self.request is not None:
            _timed(self.request.Wait)
            self.request = None
            if self.op == "mean":
                self.array /= _world.size
        return self.array


def all_reduce_async(a, op="sum"):
    """Start reducing array ``a`` in place over the ranks; returns a ``Work`` to ``wait()`` on.

    NumPy arrays use MPI's non-blocking all-reduce, so computation can go on
    meanwhile; CuPy arrays are reduced at once (NCCL runs on its own stream).
    """
    _check_op(op, "all_reduce_async")
    a = _contiguous(_array_of(a, "all_reduce_async"), "all_reduce_async")
    if _world.size == 1:
        return Work(a, None, "sum")
    if not isinstance(a, np.ndarray):
        all_reduce(a, op)
        return Work(a, None, "sum")
    request = _timed(lambda: _world.comm.Iallreduce(_world.MPI.IN_PLACE, a, op=_world.MPI.SUM))
    return Work(a, request, op)


def broadcast(x, src=0):
    """Copy ``x`` (array or Tensor) from rank ``src`` to every rank, in place; returns ``x``."""
    a = _contiguous(_array_of(x, "broadcast"), "broadcast")
    if _world.size == 1:
        return x
    if isinstance(a, np.ndarray):
        _timed(lambda: _world.comm.Bcast(a, root=src))
    else:
        host = a.get()
        _timed(lambda: _world.comm.Bcast(host, root=src))
        a.set(host)
    return x


def all_gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...]: a small picklable object from every rank."""
    if _world.size == 1:
        return [obj]
    return _timed(lambda: _world.comm.allgather(obj))


def all_gather(a):
    """[a of rank 0, a of rank 1, ...] stacked: a NumPy array of the same shape and dtype on every rank."""
    a = np.ascontiguousarray(a)
    if _world.size == 1:
        return a[None].copy()
    out = np.empty((_world.size,) + a.shape, dtype=a.dtype)
    _timed(lambda: _world.comm.Allgather(a, out))
    return out


def broadcast_object(obj, src=0):
    """Rank ``src``'s ``obj`` on every rank."""
    if _world.size == 1:
        return obj
    return _timed(lambda: _world.comm.bcast(obj, root=src))


def fingerprint(obj):
    """A short hash of a JSON-able object, to compare across ranks."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_same(what, obj):
    """Raise on every rank unless all ranks hold the same ``obj`` (compared by hash); names who differs."""
    prints = all_gather_object(fingerprint(obj))
    odd = [r for r, p in enumerate(prints) if p != prints[0]]
    if odd:
        raise ValueError(f"the ranks disagree on {what}: rank(s) {', '.join(map(str, odd))} differ from rank 0 "
                         "(start every rank with the same command and files)")


def any_rank(flag):
    """True on every rank when ``flag`` is true on at least one."""
    if _world.size == 1:
        return bool(flag)
    return any(all_gather_object(bool(flag)))


def abort(message, code=1):
    """End every rank: this rank prints ``message`` and the MPI launcher stops the others (no hang)."""
    prefix = f"rank {_world.rank}: " if _world.size > 1 else ""
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    if _world.size > 1:
        _world.comm.Abort(code)
    sys.exit(code)


# ---------------------------------------------------------------- sampling

class DistributedSampler:
    """The indices of one rank's share of a dataset, as ``torch.utils.data.distributed.DistributedSampler``.

    Every epoch (``set_epoch``) all ranks draw the same permutation from
    ``seed + epoch``; rank r takes positions r, r + N, r + 2N, ... of it, so the
    shards are disjoint and together cover the dataset (the order is padded
    by repeating its start to a multiple of N, or cut with ``drop_last``).
    Batched by B/N on each rank, the k-th batches of all ranks make up the
    k-th batch of B of the permuted order.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        self.num_replicas = world_size() if num_replicas is None else int(num_replicas)
        self.rank = _world.rank if rank is None else int(rank)
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"DistributedSampler: rank {self.rank} is not among {self.num_replicas} replicas")
        self.size, self.shuffle, self.seed, self.drop_last = len(dataset), bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        n, r = self.size, self.num_replicas
        return n // r if self.drop_last else -(-n // r)

    def __iter__(self):
        order = (np.random.default_rng(self.seed + self.epoch).permutation(self.size) if self.shuffle
                 else np.arange(self.size))
        total = len(self) * self.num_replicas
        if total > self.size:
            order = np.concatenate([order, np.resize(order, total - self.size)])
        return iter(order[:total][self.rank::self.num_replicas].tolist())


# ---------------------------------------------------------------- synchronised batch norm

def global_batch_stats(mean, var, count):
    """(mean, biased var, count) over all ranks from each rank's per-channel (mean, var, count), in float64."""
    xp = array_module(mean)
    local = xp.concatenate([xp.asarray([float(count)]), mean.astype(np.float64), var.astype(np.float64)])
    if _world.size == 1:
        return mean.astype(np.float64), var.astype(np.float64), count
    rows = all_gather(local.get() if hasattr(local, "get") else local)
    c = mean.shape[0]
    counts, means, variances = rows[:, :1], rows[:, 1:1 + c], rows[:, 1 + c:]
    total = counts.sum()
    g_mean = (counts * means).sum(axis=0) / total
    g_var = (counts * (variances + (means - g_mean) ** 2)).sum(axis=0) / total
    return xp.asarray(g_mean), xp.asarray(g_var), int(total)


class SyncBatchNormFunction(Function):
    """Batch norm in training over the global batch of all ranks: y = (x - mean) / sqrt(var + eps) * w + b.

    Forward: every rank's per-channel (count, mean, var), gathered and combined.
    Backward: sum(dy) and sum(dy * xhat) summed over the ranks, then the usual
    input gradient with the global count M. The weight and bias gradients stay
    this rank's sums: data parallelism averages them over the ranks.
    """

    saved_inputs = (0,)

    def forward(self, x, weight, bias, running_mean, running_var, momentum, eps):
        xp = array_module(x)
        self.kernels = _kernels.for_array(x)
        local = x.size // x.shape[1]
        if local:
            mean, var = self.kernels.batch_norm_stats(x)
        else:
            mean = var = xp.zeros(x.shape[1], dtype=x.dtype)
        mean, var, total = global_batch_stats(mean, var, local)
        if total < 2:
            raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel over all ranks, got {total} "
                             f"(input shape {x.shape} on rank {_world.rank})")
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += (momentum * mean).astype(running_mean.dtype)
            running_var *= 1 - momentum
            running_var += (momentum * total / (total - 1) * var).astype(running_var.dtype)
        invstd = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
        mean = mean.astype(x.dtype)
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        self.x, self.mean, self.invstd, self.scale, self.local, self.total = x, mean, invstd, scale, local, total
        return self.kernels.batch_norm_forward(x, scale, shift) if local else xp.empty_like(x)

    def backward(self, grad):
        k, x = self.kernels, self.x
        need_x, need_weight, need_bias = self.needs_input_grad
        xp = array_module(grad)
        if self.local:
            dbias, dweight = k.batch_norm_grad_sums(grad, x, self.mean, self.invstd)
        else:
            dbias = dweight = xp.zeros_like(self.scale)
        dx = None
        if need_x:
            sums = xp.concatenate([dbias, dweight]).astype(np.float64)
            all_reduce(sums)
            c = dbias.shape[0]
            # the kernel divides by this rank's count: hand it the global sums scaled to that count
            share = self.local / self.total
            g_bias, g_weight = (sums[:c] * share).astype(grad.dtype), (sums[c:] * share).astype(grad.dtype)
            dx = (k.batch_norm_backward_input(grad, x, self.mean, self.invstd, self.scale, g_bias, g_weight)
                  if self.local else xp.empty_like(grad))
        return dx, dweight if need_weight else None, dbias if need_bias else None
