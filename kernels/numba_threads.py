"""Chunks of a range run on Python threads in compiled code that releases the GIL: the direct kernels' prange.

``run(fn, count, *args)`` calls ``fn(chunk, start, stop, worker, *args)`` on
the chunks [start, stop) of range(count), a few per thread, handed out in
turn to ``numba.get_num_threads()`` threads (the caller's and a pool's);
``fn`` is ``@njit(nogil=True)``, so the threads run it side by side.
``worker`` says whose scratch the chunk may use; a chunk keeps its partial
sums at ``chunk``, added in chunk order afterwards, so a result does not
depend on which thread ran what.

Why not ``prange``: Numba compiles every ``parallel=True`` function through
its parfor passes and links its callees twice, which took 2-10 s per kernel
here (4-5 s each for the BLAS routes, on an idle machine), against 0.2-1 s
for the same loop body compiled plainly: a resnet20 step's first use spent
~25 s compiling, ResNet-50's ~35 s more.
"""
import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numba

_pool = {"size": 0, "executor": None}
# a forked child has the pool's record but not its threads: it starts a pool of its own
os.register_at_fork(after_in_child=lambda: _pool.update(size=0, executor=None))


def _executor(size):
    """A pool of ``size`` threads (made again when the thread count changes)."""
    if _pool["size"] != size:
        if _pool["executor"] is not None:
            _pool["executor"].shutdown(wait=True)
        _pool.update(size=size, executor=ThreadPoolExecutor(size, thread_name_prefix="minires-kernel")
                     if size else None)
    return _pool["executor"]


def chunks_for(count):
    """How many chunks ``run`` cuts range(count) into: four per thread (a slow core then holds up less)."""
    return max(1, min(count, 4 * numba.get_num_threads()))


def chunk_bounds(k, chunks, count):
    """[start, stop) of chunk k of ``chunks`` equal parts of range(count)."""
    return k * count // chunks, (k + 1) * count // chunks


def run(fn, count, *args, chunks=None):
    """fn(chunk, start, stop, worker, *args) over the chunks of range(count) (chunks_for(count), or at most
    ``chunks``: a chunk's partial sums may be large), on up to numba.get_num_threads() threads."""
    chunks = max(1, min(count, chunks)) if chunks else chunks_for(count)
    threads = min(numba.get_num_threads(), chunks)
    ticket = itertools.count()  # next() of it is atomic under the GIL: each chunk is taken once

    def work(worker):
        while (k := next(ticket)) < chunks:
            start, stop = chunk_bounds(k, chunks, count)
            fn(k, start, stop, worker, *args)

    pool = _executor(threads - 1) if threads > 1 else None
    futures = [pool.submit(work, w) for w in range(1, threads)] if pool else []
    try:
        work(0)
    finally:
        for f in futures:
            f.result()
