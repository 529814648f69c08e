"""The rank side of assignment 7's tests: a communicator that counts messages, the cases, the checks.

The code under test gets a ``CountingComm`` as ``comm``. It offers mpi4py's
point-to-point calls (``Sendrecv``, ``Send``, ``Recv``, ``Isend``/``Irecv``
and the lower-case ``sendrecv``, ``send``, ``recv``), records every message
(to whom, how many elements), refuses collectives (the ring is made of
messages between neighbours, so ``comm.Allreduce`` cannot stand in for it),
and turns a wait that would never end into an error naming the rank and the
call. Its sends are synchronous: one completes only once the receiver takes
the message. MPI allows any ``Send`` to behave so (and large messages do), so
ranks that all send before they receive fail here as they would at scale.

Two transports carry the messages: ``ThreadRing`` runs N ranks as threads of
the test process (no MPI needed), and ``MPITransport`` real ranks, when
``mpiexec`` runs this file: ``python ring_helpers.py CASES.json``. The
expected sums are computed on every rank from every rank's seeded input,
independently of the code under test.
"""
import ctypes
import hashlib
import json
import os
import sys
import threading
import time
import traceback

import numpy as np

ANY_SOURCE, ANY_TAG = -2, -1  # mpi4py's MPI.ANY_SOURCE and MPI.ANY_TAG (MPICH's values)
COLLECTIVES = {"Allreduce", "allreduce", "Iallreduce", "Reduce", "reduce", "Ireduce", "Reduce_scatter",
               "Reduce_scatter_block", "Allgather", "allgather", "Allgatherv", "Iallgather", "Gather", "gather",
               "Gatherv", "Bcast", "bcast", "Ibcast", "Scatter", "scatter", "Scatterv", "Alltoall", "alltoall",
               "Alltoallv", "Scan", "scan", "Exscan", "exscan", "Barrier", "barrier"}
OFFERED = "Get_rank(), Get_size(), Sendrecv, Send, Recv, Isend, Irecv, sendrecv, send, recv"


class Stuck(Exception):
    """A wait that would never end (a deadlock, or a message that is never sent)."""


class Aborted(Exception):
    """Another rank failed first (thread ring): this rank stops waiting for it."""


def _array(buf, call):
    """The NumPy array of an mpi4py buffer argument (an array, or [array, datatype])."""
    if isinstance(buf, (list, tuple)) and buf:
        buf = buf[0]
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{call}: the tests' communicator takes NumPy arrays as buffers, got {type(buf).__name__}")
    return buf


class CountingComm:
    """What the code under test gets as ``comm``: point-to-point calls, counted; no collectives."""

    def __init__(self, rank, size, transport):
        self._rank, self._size, self._transport = rank, size, transport
        self.sent, self.received, self.refused = [], [], []  # [peer, elements] per message; collective names

    def Get_rank(self):
        return self._rank

    def Get_size(self):
        return self._size

    rank = property(Get_rank)
    size = property(Get_size)

    def __getattr__(self, name):
        if name in COLLECTIVES:
            self.refused.append(name)
            raise RuntimeError(f"comm.{name} is a collective: the ring must be built from messages between "
                               f"neighbours (comm.Sendrecv to the right, from the left), so the tests' "
                               f"communicator refuses it")
        raise AttributeError(f"the tests' communicator has no {name!r}; it offers {OFFERED}")

    def _peer(self, peer, role, call):
        if peer == ANY_SOURCE and role == "source":
            return peer
        if not isinstance(peer, (int, np.integer)) or not 0 <= peer < self._size:
            raise ValueError(f"{call}: {role}={peer!r} is not a rank of this communicator (0 to {self._size - 1})")
        return int(peer)

    def _send(self, payload, dest, tag, call):
        dest = self._peer(dest, "dest", call)
        self.sent.append([dest, int(np.size(payload))])
        return self._transport.start_send(payload, dest, tag, call)

    def _receive(self, buf, source, tag, call):
        source = self._peer(source, "source", call)
        got, count = self._transport.receive(buf, source, tag, call)
        self.received.append([got, count])
        return got

    # mpi4py's buffer calls (capitalised): NumPy arrays in, received in place
    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=ANY_SOURCE, recvtag=ANY_TAG, status=None):
        if recvbuf is None:
            raise TypeError("Sendrecv: give recvbuf, the array to receive into")
        handle = self._send(_array(sendbuf, "Sendrecv"), dest, sendtag, "Sendrecv")
        self._receive(_array(recvbuf, "Sendrecv"), source, recvtag, "Sendrecv")
        self._transport.finish_send(handle)

    def Send(self, buf, dest, tag=0):
        self._transport.finish_send(self._send(_array(buf, "Send"), dest, tag, "Send"))

    def Recv(self, buf, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        self._receive(_array(buf, "Recv"), source, tag, "Recv")

    def Isend(self, buf, dest, tag=0):
        handle = self._send(_array(buf, "Isend"), dest, tag, "Isend")
        return _Request(lambda: self._transport.finish_send(handle))

    def Irecv(self, buf, source=ANY_SOURCE, tag=ANY_TAG):
        array = _array(buf, "Irecv")
        return _Request(lambda: self._receive(array, source, tag, "Irecv (its Wait)"))

    # the lower-case calls: any picklable object, received as a new object
    def send(self, obj, dest, tag=0):
        self._transport.finish_send(self._send(obj, dest, tag, "send"))

    def recv(self, buf=None, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        return self._receive(None, source, tag, "recv")

    def sendrecv(self, sendobj, dest, sendtag=0, recvbuf=None, source=ANY_SOURCE, recvtag=ANY_TAG, status=None):
        handle = self._send(sendobj, dest, sendtag, "sendrecv")
        obj = self._receive(None, source, recvtag, "sendrecv")
        self._transport.finish_send(handle)
        return obj


class _Request:
    """What Isend and Irecv return: Wait() (or Test()) finishes the call."""

    def __init__(self, finish):
        self._finish, self._done = finish, False

    def Wait(self, status=None):
        if not self._done:
            self._done = True
            self._finish()

    wait = Wait

    def Test(self, status=None):
        self.Wait()
        return True

    test = Test


# ---------------------------------------------------------------- transports

class ThreadRing:
    """N ranks as threads of one process, with mailboxes between them."""

    def __init__(self, n, deadline=2.0):
        self.n, self.deadline = n, deadline
        self.mail = {}  # (source, dest) -> [message, ...] in order
        self.cond = threading.Condition()
        self.failed = False

    def transport(self, rank):
        return _ThreadTransport(self, rank)

    def run(self, fn, timeout=8.0):
        """fn(rank) on each of the N ranks at once; returns the N results (a rank that never ends: None)."""
        results = [None] * self.n

        def body(rank):
            try:
                results[rank] = fn(rank)
            finally:
                with self.cond:
                    self.failed = self.failed or results[rank] is None or bool(results[rank].get("error"))
                    self.cond.notify_all()

        threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(self.n)]
        for t in threads:
            t.start()
        end = time.monotonic() + timeout
        try:
            for t in threads:
                t.join(max(0.0, end - time.monotonic()))
        finally:  # a rank still running (an endless loop, or the test was stopped): stop it
            with self.cond:
                self.failed = True
            for t in threads:
                if t.is_alive():
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(Aborted))
        return results


class _ThreadTransport:
    def __init__(self, ring, rank):
        self.ring, self.rank = ring, rank

    def _wait(self, ready, what):
        ring = self.ring
        end = time.monotonic() + ring.deadline
        with ring.cond:
            while True:
                found = ready()
                if found is not None:
                    return found
                if ring.failed:
                    raise Aborted(f"rank {self.rank} stopped waiting ({what}): another rank failed")
                if time.monotonic() > end:
                    raise Stuck(f"{what}{_STUCK_ADVICE}" .format(seconds=ring.deadline))
                ring.cond.wait(0.02)

    def start_send(self, payload, dest, tag, call):
        message = {"tag": tag, "payload": payload.copy() if isinstance(payload, np.ndarray) else payload,
                   "taken": False, "call": call, "dest": dest}
        with self.ring.cond:
            self.ring.mail.setdefault((self.rank, dest), []).append(message)
            self.ring.cond.notify_all()
        return message

    def finish_send(self, message):
        self._wait(lambda: True if message["taken"] else None,
                   f"rank {self.rank}'s {message['call']} to rank {message['dest']} was not received within "
                   "{seconds:g} s")

    def receive(self, buf, source, tag, call):
        sources = range(self.ring.n) if source == ANY_SOURCE else [source]

        def match():
            for s in sources:
                for message in self.ring.mail.get((s, self.rank), []):
                    if tag == ANY_TAG or message["tag"] == tag:
                        self.ring.mail[(s, self.rank)].remove(message)
                        message["taken"] = True
                        self.ring.cond.notify_all()
                        return s, message["payload"]
            return None

        who = "any rank" if source == ANY_SOURCE else f"rank {source}"
        got, payload = self._wait(match, f"rank {self.rank} waited in {call} for a message from {who} that did "
                                         "not come within {seconds:g} s")
        if buf is None:
            return got, payload
        return got, _deliver(payload, buf, got, self.rank, call)


def _deliver(payload, buf, source, rank, call):
    """Copy an arrived array into ``buf`` as MPI would, failing where MPI fails; returns its element count."""
    if not isinstance(payload, np.ndarray):
        raise TypeError(f"{call} on rank {rank}: rank {source} sent a {type(payload).__name__} with a lower-case "
                        "call; receive it with the lower-case call too")
    if not buf.flags.c_contiguous:
        raise BufferError(f"{call} on rank {rank}: the receive buffer is not contiguous (mpi4py refuses it); "
                          "receive into a contiguous slice or a buffer of your own")
    if payload.dtype != buf.dtype:
        raise TypeError(f"{call} on rank {rank}: rank {source} sent {payload.dtype} into a {buf.dtype} buffer")
    if payload.size > buf.size:
        raise ValueError(f"{call} on rank {rank}: rank {source} sent {payload.size} elements into a buffer of "
                         f"{buf.size} (MPI: message truncated): do both sides mean the same chunk?")
    buf.reshape(-1)[:payload.size] = payload.reshape(-1)
    return payload.size


_STUCK_ADVICE = (": a deadlock? With blocking Send and Recv, ranks that all send first wait for each other "
                 "forever once messages are large; comm.Sendrecv sends and receives at once. Otherwise, do all "
                 "ranks make the same number of steps, to the right and from the left?")


class MPITransport:
    """Real ranks: the messages go through a communicator of their own (a Dup of COMM_WORLD)."""

    def __init__(self, comm, MPI, deadline=5.0):
        self.comm, self.MPI, self.deadline = comm, MPI, deadline
        self.rank = comm.Get_rank()
        self.pending = []

    def _poll(self, request, what, status=None):
        end = time.monotonic() + self.deadline
        while not request.Test(status):
            if time.monotonic() > end:
                raise Stuck(f"{what}{_STUCK_ADVICE}".format(seconds=self.deadline))
            time.sleep(0.0005)

    def start_send(self, payload, dest, tag, call):
        if isinstance(payload, np.ndarray):
            request = self.comm.Issend(payload, dest, tag)
        else:
            request = self.comm.issend(payload, dest, tag)
        self.pending.append(request)
        return request, dest, call

    def finish_send(self, handle):
        request, dest, call = handle
        self._poll(request, f"rank {self.rank}'s {call} to rank {dest} was not received within {{seconds:g}} s")
        self.pending.remove(request)

    def receive(self, buf, source, tag, call):
        MPI = self.MPI
        source = MPI.ANY_SOURCE if source == ANY_SOURCE else source
        tag = MPI.ANY_TAG if tag == ANY_TAG else tag
        status = MPI.Status()
        who = "any rank" if source == MPI.ANY_SOURCE else f"rank {source}"
        what = f"rank {self.rank} waited in {call} for a message from {who} that did not come within {{seconds:g}} s"
        end = time.monotonic() + self.deadline
        while not self.comm.Iprobe(source, tag, status):
            if time.monotonic() > end:
                raise Stuck(f"{what}{_STUCK_ADVICE}".format(seconds=self.deadline))
            time.sleep(0.0005)
        got = status.Get_source()
        if buf is None:
            return got, self.comm.recv(source=got, tag=status.Get_tag())
        count = status.Get_count(MPI.BYTE) // max(buf.itemsize, 1)
        if count > buf.size:
            raise ValueError(f"{call} on rank {self.rank}: rank {got} sent {count} elements into a buffer of "
                             f"{buf.size} (MPI: message truncated): do both sides mean the same chunk?")
        self.comm.Recv(buf, source=got, tag=status.Get_tag())
        return got, count


# ---------------------------------------------------------------- the cases, on one rank

def make_input(size, dtype, seed):
    """A rank's input: seeded, so every rank can rebuild every other rank's and sum them itself."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-1000, 1000, size).astype(dtype)
    return rng.standard_normal(size).astype(dtype)


def inputs_and_total(case, n):
    """Every rank's input (flat) and their sum, computed in float64 for floats (exactly for integers)."""
    size = case["size"]
    inputs = [make_input(size, case["dtype"], case["seed"] + 101 * r) for r in range(n)]
    wide = np.int64 if np.dtype(case["dtype"]).kind in "iu" else np.float64
    total = np.sum([x.astype(wide) for x in inputs], axis=0) if n else np.zeros(size, wide)
    return inputs, total


def describe(case, n):
    kind = {"reduce_scatter": "reduce_scatter", "all_gather": "all_gather", "ring": "ring_all_reduce"}[case["piece"]]
    shape = f" of shape {tuple(case['shape'])}" if case.get("shape") else ""
    text = f"{kind} of {case['size']} {case['dtype']} elements{shape} over {n} ranks"
    return text + (f", chunk bounds {case['bounds']}" if case.get("bounds") else "")


def _close(got, want, dtype):
    if np.dtype(dtype).kind in "iu":
        return np.array_equal(got, want)
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    return got.shape == want.shape and np.allclose(got.astype(np.float64), want, rtol=tol, atol=tol)


def _first_wrong(got, want, dtype, offset=0):
    bad = [i for i in range(got.size) if not _close(got[i:i + 1], want[i:i + 1], dtype)]
    i = bad[0] if bad else 0
    return f"element {offset + i}: expected {want[i]:.6g}, got {got[i]:.6g}" if got.size else "an empty chunk"


def _summed_over(got, inputs, dtype):
    """The ranks whose inputs add up to ``got`` (tried over every subset), or None."""
    n = len(inputs)
    for mask in range(1, 2 ** n):
        ranks = [r for r in range(n) if mask >> r & 1]
        if _close(got, np.sum([inputs[r].astype(np.float64) for r in ranks], axis=0), dtype):
            return ranks
    return None


def check_reduce_scatter(flat, case, rank, n, inputs, total, returned):
    b, own = case["bounds"], (rank + 1) % n
    part = lambda a, i: a[b[i]:b[i + 1]]  # noqa: E731
    what = f"rank {rank}, after {describe(case, n)}"
    if _close(part(flat, own), part(total, own), case["dtype"]):
        return []
    if np.array_equal(flat, inputs[rank]):
        extra = f" (it returned a {type(returned).__name__})" if returned is not None else ""
        return [f"{what}: flat is unchanged{extra}: reduce_scatter works in place, adding into flat's chunks"]
    message = f"{what}: chunk {own} (elements {b[own]}:{b[own + 1]}) should hold its sum over all {n} ranks"
    ranks = _summed_over(part(flat, own), [part(x, own) for x in inputs], case["dtype"])
    instead = [i for i in range(n) if i != own and b[i + 1] > b[i] and _close(part(flat, i), part(total, i),
                                                                               case["dtype"])]
    if ranks is not None and len(ranks) < n:
        names = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks[:-1]))} and {ranks[-1]}"
        message += (f", but holds the sum over {names} only: each of the N - 1 = {n - 1} steps adds one "
                    f"more rank's share; is a step missing?")
    elif instead:
        message += (f", but chunk(s) {instead} hold(s) a complete sum instead: rank r must end with chunk "
                    "(r + 1) % N, so at the first step it sends chunk r")
    else:
        message += f"; the first wrong is {_first_wrong(part(flat, own), part(total, own), case['dtype'], b[own])}"
    return [message]


def placeholder(dtype):
    return np.nan if np.dtype(dtype).kind in "fc" else -999_999_999


def check_all_gather(flat, case, rank, n, total):
    b, failures = case["bounds"], []
    for i in range(n):
        got, want = flat[b[i]:b[i + 1]], total[b[i]:b[i + 1]].astype(flat.dtype)
        if np.array_equal(got, want):
            continue
        what = f"rank {rank}, after {describe(case, n)}: chunk {i} (elements {b[i]}:{b[i + 1]})"
        fill = placeholder(case["dtype"])
        unfilled = np.isnan(got) if np.isnan(fill) else got == fill
        if unfilled.all():
            failures.append(f"{what} still holds the placeholder it held before: no message brought it here")
        elif np.isnan(fill) and unfilled.any() or not np.isnan(fill) and np.array_equal(got, want + fill):
            failures.append(f"{what} holds the placeholder plus the sum: all_gather copies what arrives (into "
                            "place), it adds nothing")
        else:
            failures.append(f"{what} is wrong; the first wrong is {_first_wrong(got, want, case['dtype'], b[i])}")
    return failures[:1]


def _where(exc):
    """Where in minires/ring.py an exception came from, if it did."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.basename(f.filename) == "ring.py"]
    return f" (minires/ring.py, line {frames[-1].lineno}, in {frames[-1].name})" if frames else ""


def rank_case(case, comm, ring, rank, n):
    """Run one case on this rank; returns what the driver needs: failures, an error, the traffic."""
    out = {"rank": rank, "failures": [], "error": None}
    inputs, total = inputs_and_total(case, n)
    try:
        if case["piece"] == "reduce_scatter":
            flat = inputs[rank].copy()
            returned = ring.reduce_scatter(flat, case["bounds"], comm)
            out["failures"] = check_reduce_scatter(flat, case, rank, n, inputs, total, returned)
        elif case["piece"] == "all_gather":
            b, own = case["bounds"], (rank + 1) % n
            flat = np.full(case["size"], placeholder(case["dtype"]), dtype=case["dtype"])
            flat[b[own]:b[own + 1]] = total[b[own]:b[own + 1]]
            ring.all_gather(flat, case["bounds"], comm)
            out["failures"] = check_all_gather(flat, case, rank, n, total)
        else:
            array = inputs[rank].reshape(case["shape"])
            result = ring.ring_all_reduce(array, comm if not case.get("default_comm") else None)
            what = f"rank {rank}, {describe(case, n)}"
            if result is not array:
                out["failures"].append(f"{what}: ring_all_reduce must return the array it was given")
            elif not _close(array.reshape(-1), total, case["dtype"]):
                out["failures"].append(f"{what}: the sum is wrong; the first wrong is "
                                       f"{_first_wrong(array.reshape(-1), total, case['dtype'])}")
            out["digest"] = hashlib.sha256(array.tobytes()).hexdigest()[:16]
    except (Stuck, Aborted) as exc:  # waiting for a rank that failed, or a deadlock: shown after any exception
        out["error"], out["waiting"] = str(exc), 1 + isinstance(exc, Aborted)
    except Exception as exc:  # the code under test failed: report it as its author would see it
        out["error"] = f"{type(exc).__name__}: {exc}{_where(exc)}"
    if isinstance(comm, CountingComm):
        out.update(sent=comm.sent, received=comm.received, refused=comm.refused)
    return out


def thread_case(case, n, ring, deadline=2.0):
    """One case on a ring of n threads: the per-rank results."""
    world = ThreadRing(n, deadline)
    comms = [CountingComm(r, n, world.transport(r)) for r in range(n)]
    results = world.run(lambda r: rank_case(case, comms[r], ring, r, n))
    return [res if res is not None else {"rank": r, "failures": [], "sent": comms[r].sent, "refused": [],
                                         "received": comms[r].received,
                                         "error": f"rank {r} did not return within 8 s: an endless loop?"}
            for r, res in enumerate(results)]


def main(cases_file):
    """On every rank of ``mpiexec``: run the cases, rank 0 prints one RESULT line of JSON."""
    from mpi4py import MPI
    import minires
    from minires import ring
    world = MPI.COMM_WORLD
    rank, n = world.Get_rank(), world.Get_size()
    with open(cases_file) as f:
        cases = json.load(f)
    done = []
    for case in cases:
        own = world.Dup()  # a communicator per case: a message left over from a failed case cannot match later
        comm = CountingComm(rank, n, MPITransport(own, MPI))
        result = rank_case(case, comm, ring, rank, n)
        for request in comm._transport.pending:  # messages nobody received (a failed case)
            request.Cancel()
        done.append(world.gather(result, root=0))
        if world.allreduce(bool(result["error"]), op=MPI.LOR):
            break  # one broken case is enough to report; the next would wait for the same
    if rank == 0:
        print("RESULT " + json.dumps({"minires": os.path.abspath(minires.__file__), "cases": done}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
