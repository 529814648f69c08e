"""Ring all-reduce: the sum of an array over the ranks from messages between neighbours only.

``distributed.all_reduce`` hands the sum to MPI's ``Allreduce``; this module
writes it out, as Baidu's ring all-reduce (2017), Horovod and NCCL do. The N
ranks stand in a ring, each sending only to the next, (rank + 1) % N, and
receiving only from the previous, (rank - 1) % N. The array is cut into N
chunks, and two phases of N - 1 steps each pass one chunk per rank per step:

* **reduce-scatter**: each step, every rank sends a chunk to the next rank
  and adds the chunk it receives into its own copy. A chunk gathers one more
  rank's contribution at every hop, so after N - 1 steps each rank holds one
  chunk summed over all ranks: rank r holds chunk (r + 1) % N.
* **all-gather**: the same walk round the ring, copying instead of adding,
  passes each finished chunk on until every rank holds all of them.

Each rank sends 2(N - 1) messages of about size/N elements: 2(N - 1)/N of
the array in all, less than two arrays whatever the number of ranks, and
every link of the ring is busy at every step. Gathering the arrays on one
rank and sending the sum back instead moves N - 1 whole arrays in and N - 1
out through that one rank. (Patarasuk and Yuan 2009 prove the ring's volume
optimal.)

The three pieces are assignment 7 (tutorials/assignments/07_ring_allreduce.md):
``chunk_bounds``, ``reduce_scatter`` and ``all_gather``. They take any
communicator with mpi4py's ``Get_rank``, ``Get_size`` and ``Sendrecv``.
"""
import numpy as np

from . import distributed


def chunk_bounds(size, n):
    """The n + 1 offsets that cut ``size`` elements into n chunks as even as can be: chunk i is
    ``[bounds[i], bounds[i + 1])``, and the first ``size % n`` chunks hold one element more than the rest."""
    # BEGIN EXERCISE ring.chunks
    # HINT: divmod(size, n) gives the common length and how many chunks get one element more;
    # HINT: the offsets are the running sum of the lengths, starting at 0 (a list of n + 1 ints)
    base, longer = divmod(size, n)
    lengths = [base + 1 if i < longer else base for i in range(n)]
    return [0] + np.cumsum(lengths).tolist()
    # END EXERCISE


def _chunk(flat, bounds, i):
    """Chunk i of ``flat``: a view, so writing into it writes into ``flat``."""
    return flat[bounds[i]:bounds[i + 1]]


def reduce_scatter(flat, bounds, comm):
    """The ring's first phase, in place: afterwards chunk (rank + 1) % N of ``flat`` holds the sum of that
    chunk over all ranks (the other chunks hold partial sums).

    ``flat``: this rank's 1-D contiguous array; ``bounds``: the N + 1 chunk offsets, the same on every rank.
    """
    rank, n = comm.Get_rank(), comm.Get_size()
    right, left = (rank + 1) % n, (rank - 1) % n
    # BEGIN EXERCISE ring.reduce_scatter
    # HINT: N - 1 steps; in each, send one chunk to the right and add the chunk that comes from the left
    # HINT: into your own copy of it; the chunk you send next is the one you have just added into
    # HINT: (at the first step: chunk rank). comm.Sendrecv(send_view, dest=right, recvbuf=buffer, source=left)
    # HINT: does both at once; receive into a buffer of your own, then add it into flat
    send = rank
    for _ in range(n - 1):
        into = (send - 1) % n
        incoming = np.empty_like(_chunk(flat, bounds, into))
        comm.Sendrecv(_chunk(flat, bounds, send), dest=right, recvbuf=incoming, source=left)
        _chunk(flat, bounds, into)[...] += incoming
        send = into
    # END EXERCISE


def all_gather(flat, bounds, comm):
    """The ring's second phase, in place: from chunk (rank + 1) % N complete on each rank (what
    ``reduce_scatter`` leaves), every chunk complete on every rank."""
    rank, n = comm.Get_rank(), comm.Get_size()
    right, left = (rank + 1) % n, (rank - 1) % n
    # BEGIN EXERCISE ring.all_gather
    # HINT: N - 1 steps again: send the chunk you completed last to the right (at first: chunk (rank + 1) % N)
    # HINT: and receive the chunk before it from the left, straight into its place in flat: nothing to add
    done = (rank + 1) % n
    for _ in range(n - 1):
        arriving = (done - 1) % n
        comm.Sendrecv(_chunk(flat, bounds, done), dest=right, recvbuf=_chunk(flat, bounds, arriving), source=left)
        done = arriving
    # END EXERCISE


def ring_all_reduce(array, comm=None):
    """Sum ``array`` (a NumPy array of numbers) over the ranks of ``comm`` in place with the ring; returns it.

    ``comm``: an mpi4py communicator (default: every rank of ``mpiexec``). In one process, the identity.
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"ring_all_reduce: expected a NumPy array, got {type(array).__name__}")
    if array.dtype.kind not in "iufc":
        raise TypeError(f"ring_all_reduce: expected an array of numbers (int, float or complex), got dtype "
                        f"{array.dtype}")
    if comm is None:
        if distributed.init() == 1:
            return array
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    n = comm.Get_size()
    if n == 1:
        return array
    # a view of a contiguous array, so the sums land in it; otherwise a copy written back at the end
    flat = array.reshape(-1) if array.flags.c_contiguous else array.flatten()
    bounds = chunk_bounds(flat.size, n)
    reduce_scatter(flat, bounds, comm)
    all_gather(flat, bounds, comm)
    if not array.flags.c_contiguous:
        array[...] = flat.reshape(array.shape)
    return array
