"""Assignment 7, ring all-reduce: the chunk bounds, reduce-scatter and all-gather in minires/ring.py.

Run: pytest -m allreduce. Each piece is tested alone: ``reduce_scatter`` and
``all_gather`` get the tests' chunk bounds (uneven, some chunks empty), not
``chunk_bounds``'s, and ``all_gather`` starts from the complete chunks that
``reduce_scatter`` should leave, so a failure names the piece that is wrong.
They run on a ring of threads in this process (no MPI needed) and, where
mpi4py and ``mpiexec`` are installed, on real ranks: ``mpiexec -n 3`` and
``-n 4`` start tests/exercises/ring_helpers.py, which imports the same
minires as these tests. On every rank the sums are checked against NumPy's
(float32, float64 and int64; fewer elements than ranks; uneven chunks), and
the communicator the code gets counts the messages (each rank sends N - 1
per phase, one chunk each, to the next rank only) and refuses collectives:
``comm.Allreduce`` cannot stand in for the ring.

Weights: for each phase, the sums on threads weigh 1 for each of four ring
sizes, the traffic (on threads) 4, and each run on real ranks 2 (sums and
traffic): a phase that sums right but passes the whole array round the ring
earns a third of its points. Tests without an exercise (the whole
``ring_all_reduce``, its checks) count for no points.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ring_helpers import describe, thread_case

import minires
from minires import ring

pytestmark = pytest.mark.allreduce

HELPERS = Path(__file__).resolve().with_name("ring_helpers.py")
# where this process imported minires from, links not resolved (the grader links a copy's files into a
# folder of its own): the ranks import the same package
IMPORT_ROOT = Path(os.path.abspath(minires.__file__)).parent.parent
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
HAVE_MPI = MPIEXEC is not None and importlib.util.find_spec("mpi4py") is not None
INSTALL = "pip install -e '.[test,mpi]'"
RANKS_TIMEOUT = 30  # seconds for a whole mpiexec run; a wait that never ends fails after 5 s on its own


# ---------------------------------------------------------------- ring.chunks

EXAMPLES = [((10, 3), [0, 4, 7, 10]), ((10, 4), [0, 3, 6, 8, 10]), ((12, 4), [0, 3, 6, 9, 12]),
            ((7, 1), [0, 7]), ((13, 5), [0, 3, 6, 9, 11, 13])]


def bounds_of(size, n):
    got = ring.chunk_bounds(size, n)
    call = f"chunk_bounds({size}, {n})"
    if not isinstance(got, (list, tuple, np.ndarray)) or len(got) != n + 1:
        pytest.fail(f"{call} returned {got!r}: expected n + 1 = {n + 1} offsets (a list), chunk i being "
                    "[bounds[i], bounds[i + 1])", pytrace=False)
    if not all(isinstance(b, (int, np.integer)) for b in got):
        pytest.fail(f"{call} returned {got!r}: the offsets must be ints (they index the array)", pytrace=False)
    return [int(b) for b in got]


@pytest.mark.exercise("ring.chunks", weight=2)
@pytest.mark.parametrize("args, want", EXAMPLES, ids=[f"{s}-in-{n}" for (s, n), _ in EXAMPLES])
def test_chunk_bounds_of_the_examples(args, want):
    got = bounds_of(*args)
    if got != want:
        i = next(k for k in range(len(want) - 1) if got[k:k + 2] != want[k:k + 2])
        pytest.fail(f"chunk_bounds{args} returned {got}, expected {want}: chunk {i} should be elements "
                    f"{want[i]}:{want[i + 1]} ({want[i + 1] - want[i]} of them), got {got[i]}:{got[i + 1]}",
                    pytrace=False)


@pytest.mark.exercise("ring.chunks", weight=2)
def test_chunk_bounds_cover_the_array_evenly():
    for size in range(0, 41):
        for n in range(1, 7):
            got = bounds_of(size, n)
            call = f"chunk_bounds({size}, {n}) = {got}"
            assert got[0] == 0 and got[-1] == size, f"{call}: the offsets must run from 0 to size = {size}"
            base, longer = divmod(size, n)
            for i in range(n):
                want = base + (i < longer)
                assert got[i + 1] - got[i] == want, (
                    f"{call}: chunk {i} holds {got[i + 1] - got[i]} elements, expected {want}: {size} = {n} x "
                    f"{base} + {longer}, so the first {longer} chunk(s) hold {base + 1} and the others {base}")


@pytest.mark.exercise("ring.chunks")
@pytest.mark.parametrize("size, n", [(2, 5), (0, 3)], ids=["2-in-5", "empty"])
def test_chunk_bounds_with_fewer_elements_than_ranks(size, n):
    got = bounds_of(size, n)
    want = [min(i, size) for i in range(n + 1)]
    assert got == want, (f"chunk_bounds({size}, {n}) returned {got}, expected {want}: with fewer elements than "
                         "chunks, the first chunks hold one each and the rest are empty")


# ---------------------------------------------------------------- the cases of the two phases

def phase_cases(piece, n):
    """Sizes and dtypes for one phase on n ranks, with the tests' own chunk bounds (uneven, some empty)."""
    rng = np.random.default_rng(100 + n)
    cases = []
    for k, (size, dtype) in enumerate([(4 * n, "float64"), (3 * n + 2, "float32"), (2 * n + 1, "int64"),
                                       (n - 1, "float32"), (23, "int64"), (17, "float64")]):
        if k == 0:
            bounds = list(range(0, size + 1, 4))  # even chunks of 4
        elif k == 5:
            bounds = [0] + [5] * (n - 1) + [size]  # chunk 0 and the last chunk hold everything, the rest empty
        else:
            bounds = [0] + sorted(int(c) for c in rng.integers(0, size + 1, n - 1)) + [size]
        cases.append({"piece": piece, "size": size, "dtype": dtype, "bounds": bounds, "seed": 7 * k + n})
    return cases


def first_problem(results, case, n):
    """The first error or wrong value of one case's per-rank results, as a sentence; None if all is well."""
    errors = sorted((r for r in results if r["error"]), key=lambda r: r.get("waiting", 0))
    if errors:
        error = errors[0]["error"]
        prefix = "" if error.startswith("rank ") else f"rank {errors[0]['rank']}: "
        return f"{describe(case, n)}: {prefix}{error}"
    failures = [f for r in results for f in r["failures"]]
    if failures:
        more = f" ({len(failures) - 1} more rank(s) wrong too)" if len(failures) > 1 else ""
        return failures[0] + more
    return None


def traffic_problem(results, case, n, phases, named=True):
    """None when every rank sent the ring's messages: per phase N - 1, one chunk each, to the next rank only."""
    size, steps = case["size"], phases * (n - 1)
    if case.get("bounds"):
        lengths = [case["bounds"][i + 1] - case["bounds"][i] for i in range(n)]
        largest, empty = max(lengths), lengths.count(0)
    else:  # the whole ring, with chunk_bounds's chunks: as even as can be
        largest, empty = -(-size // n), max(0, n - size)
    what = describe(case, n) + ": " if named else ""
    for r in results:
        rank, right, left = r["rank"], (r["rank"] + 1) % n, (r["rank"] - 1) % n
        if r["refused"]:
            return (f"{what}rank {rank} called comm.{r['refused'][0]}, a collective: the ring is made of messages "
                    "between neighbours only (comm.Sendrecv)")
        wrong_peer = [d for d, _ in r["sent"] if d != right] + [s for s, _ in r["received"] if s != left]
        if wrong_peer:
            return (f"{what}rank {rank} exchanged a message with rank {wrong_peer[0]}: in the ring a rank sends "
                    f"only to the next one ((rank + 1) % N = {right}) and receives only from the previous one "
                    f"((rank - 1) % N = {left})")
        counts = [k for _, k in r["sent"]]
        full = [k for k in counts if k]
        if len(counts) > steps or len(full) < steps - phases * empty or any(k > largest for k in counts):
            bypass = (" (the sums arrived without a message through comm: through another communicator, or a "
                      "collective?)" if not counts else "")
            return (f"{what}rank {rank} sent {len(counts)} message(s) of {counts} elements: the ring sends "
                    f"N - 1 = {n - 1} per phase ({steps} here), each one chunk (here at most {largest} elements)"
                    + bypass)
    return None


def check_thread_ring(piece, n, traffic=False):
    for case in phase_cases(piece, n):
        results = thread_case(case, n, ring)
        problem, messages = first_problem(results, case, n), traffic_problem(results, case, n, phases=1)
        if problem and messages and not any(r["error"] for r in results):
            problem += f". The messages may say why: {traffic_problem(results, case, n, 1, named=False)}"
        problem = problem or (traffic and messages)
        if problem:
            pytest.fail(problem, pytrace=False)


# ---------------------------------------------------------------- real ranks

def run_ranks(cases, n, tmp_path):
    """Run ``cases`` on ``mpiexec -n n``; the per-case lists of per-rank results."""
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps(cases))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(IMPORT_ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([MPIEXEC, "-n", str(n), sys.executable, str(HELPERS), str(cases_file)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: a timeout ends every rank
    try:
        out, err = proc.communicate(timeout=RANKS_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {n} ranks did not finish within {RANKS_TIMEOUT} s: an endless loop?", pytrace=False)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    lines = [line[7:] for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"mpiexec -n {n} failed (exit {proc.returncode}):\n{(out + err)[-3000:]}", pytrace=False)
    report = json.loads(lines[0])
    want = os.path.abspath(minires.__file__)
    assert report["minires"] == want, f"the ranks imported minires from {report['minires']}, not {want}"
    return report["cases"]


def needs_ranks(piece):
    """Skip without MPI, but not for an unwritten exercise: that fails here as it fails on threads."""
    if HAVE_MPI:
        return
    case = phase_cases(piece, 2)[0]
    problem = first_problem(thread_case(case, 2, ring), case, 2)
    if problem and "NotImplementedError" in problem:
        pytest.fail(problem, pytrace=False)
    pytest.skip(f"runs on real ranks, with mpi4py and mpiexec: {INSTALL}")


def check_real_ranks(piece, n, tmp_path):
    needs_ranks(piece)
    cases = phase_cases(piece, n)
    done = run_ranks(cases, n, tmp_path)
    for case, results in zip(cases, done):
        problem = first_problem(results, case, n) or traffic_problem(results, case, n, phases=1)
        if problem:
            pytest.fail(f"on real ranks (mpiexec -n {n}): {problem}", pytrace=False)
    assert len(done) == len(cases), f"the ranks ran {len(done)} of {len(cases)} cases"


# ---------------------------------------------------------------- ring.reduce_scatter

@pytest.mark.exercise("ring.reduce_scatter")
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_reduce_scatter_sums_one_chunk_per_rank_on_threads(n):
    check_thread_ring("reduce_scatter", n)


@pytest.mark.exercise("ring.reduce_scatter", weight=4)
def test_reduce_scatter_sends_one_chunk_per_step_to_the_next_rank():
    check_thread_ring("reduce_scatter", 4, traffic=True)


@pytest.mark.exercise("ring.reduce_scatter", weight=2)
@pytest.mark.parametrize("n", [3, 4])
def test_reduce_scatter_on_real_ranks(n, tmp_path):
    check_real_ranks("reduce_scatter", n, tmp_path)


# ---------------------------------------------------------------- ring.all_gather

@pytest.mark.exercise("ring.all_gather")
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_all_gather_completes_every_chunk_on_threads(n):
    check_thread_ring("all_gather", n)


@pytest.mark.exercise("ring.all_gather", weight=4)
def test_all_gather_sends_one_chunk_per_step_to_the_next_rank():
    check_thread_ring("all_gather", 4, traffic=True)


@pytest.mark.exercise("ring.all_gather", weight=2)
@pytest.mark.parametrize("n", [3, 4])
def test_all_gather_on_real_ranks(n, tmp_path):
    check_real_ranks("all_gather", n, tmp_path)


# ---------------------------------------------------------------- the whole ring (no points: it runs the three)

RING_CASES = [((3, 5), "float32"), ((2,), "int64"), ((17,), "float64"), ((4, 2, 3), "int64"), ((), "float64")]


def ring_cases(n, default_comm=False):
    cases = [{"piece": "ring", "shape": list(shape), "size": int(np.prod(shape)), "dtype": dtype, "seed": 3 * k}
             for k, (shape, dtype) in enumerate(RING_CASES)]
    if default_comm:  # ring_all_reduce(array): the ranks of mpiexec, through MPI.COMM_WORLD (not counted)
        cases.append(dict(cases[0], seed=99, default_comm=True))
    return cases


def check_whole_ring(n, done, cases, where=""):
    for case, results in zip(cases, done):
        problem = first_problem(results, case, n)
        if not problem and not case.get("default_comm"):
            problem = traffic_problem(results, case, n, phases=2)
        if not problem and len({r["digest"] for r in results}) > 1:
            problem = f"{describe(case, n)}: the ranks hold different sums (all_gather copies one result to all)"
        if problem:
            pytest.fail(where + problem, pytrace=False)


@pytest.mark.parametrize("n", [3, 4])
def test_the_whole_ring_on_threads(n):
    cases = ring_cases(n)
    check_whole_ring(n, [thread_case(case, n, ring) for case in cases], cases)


@pytest.mark.parametrize("n", [3, 4])
def test_the_whole_ring_on_real_ranks(n, tmp_path):
    if not HAVE_MPI:
        pytest.skip(f"runs on real ranks, with mpi4py and mpiexec: {INSTALL}")
    cases = ring_cases(n, default_comm=True)
    done = run_ranks(cases, n, tmp_path)
    assert len(done) == len(cases) or first_problem(done[-1], cases[len(done) - 1], n)
    check_whole_ring(n, done, cases, where=f"on real ranks (mpiexec -n {n}): ")


def test_in_one_process_ring_all_reduce_is_the_identity():
    a = np.arange(6.0).reshape(2, 3)
    assert ring.ring_all_reduce(a) is a and np.array_equal(a, np.arange(6.0).reshape(2, 3))


def test_ring_all_reduce_refuses_what_it_cannot_sum():
    with pytest.raises(TypeError, match="expected a NumPy array, got list"):
        ring.ring_all_reduce([1.0, 2.0])
    with pytest.raises(TypeError, match="expected an array of numbers .* got dtype <U1"):
        ring.ring_all_reduce(np.array(["a", "b"]))
