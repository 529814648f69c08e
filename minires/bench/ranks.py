"""``minires bench --ranks 1,2``: data-parallel training on MPI ranks, its throughput, scaling and communication.

For each rank count N the parent launches ``mpiexec -n N python -m minires.bench
--worker SPEC`` (the ``mpiexec`` beside the running Python first, then the one
on PATH). Every rank gets ``--threads`` threads (default 1) through the
environment, wraps the model in ``nn.DistributedDataParallel`` and trains on
its B/N slice of one global batch of B. Each timed step starts after a
barrier; the step takes as long as its slowest rank. Communication is the time
a rank spends inside collectives during the step (``distributed.
communication_seconds()``: the gradient all-reduces, the tests that progress
them, the wait at the end of backward, the buffers' broadcast before forward),
which includes waiting for a slower rank; the bare all-reduce of the whole
gradient, ranks aligned by a barrier, is timed apart. Each rank's CPU time
over the step's wall time shows whether it had its core to itself (other
processes on the machine slow two ranks far more than one). Speed-ups are
against the fewest ranks of the same run, so they never compare two runs.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

from .workloads import QUICK_REPEAT, QUICK_WARMUP, WORKLOADS, macs_per_image, resolve_workloads

INSTALL_HINT = "pip install -e '.[mpi]'"
TIMEOUT_S = 3600  # one rank count's whole measurement; a hung collective ends here


def parse_ranks(text):
    """The rank counts of ``--ranks`` ("1,2" or "4"), in increasing order, each at least 1."""
    counts = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"--ranks expects a comma list of rank counts such as 1,2; got {text!r}")
        if int(part) < 1:
            raise ValueError(f"--ranks: a rank count must be at least 1, got {part} (in --ranks {text})")
        counts.append(int(part))
    return sorted(set(counts))


def find_mpiexec():
    """The ``mpiexec`` beside the running Python (a venv's, from the ``mpich`` wheel) first, then PATH's; or None."""
    return shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable),
                                                          os.environ.get("PATH", "")]))


def check_mpi():
    """The path of ``mpiexec`` when mpi4py and an ``mpiexec`` are here, else a one-line error saying what to install."""
    from .. import distributed
    launcher = find_mpiexec()
    missing = [what for what, ok in (("mpi4py", distributed.is_available()), ("mpiexec", launcher)) if not ok]
    if missing:
        raise RuntimeError(f"--ranks needs {' and '.join(missing)} to launch the ranks: {INSTALL_HINT} "
                           "(mpi4py and MPICH), or pip install mpi4py against a system MPI")
    return launcher


def train_workloads(names):
    """The workloads ``--ranks`` times: training steps only (default resnet20_train)."""
    chosen = resolve_workloads(names or "resnet20_train")
    other = [w.name for w in chosen if w.kind != "train"]
    if other:
        trains = ", ".join(n for n, w in WORKLOADS.items() if w.kind == "train")
        raise ValueError(f"--ranks times data-parallel training steps; --workloads {', '.join(other)} "
                         f"{'is not a training workload' if len(other) == 1 else 'are not training workloads'} "
                         f"(choose from {trains})")
    return chosen


def global_batch(workload, batch_size, quick):
    """The global batch a workload runs at: ``--batch-size``, else its own (or its ``--quick`` one)."""
    return batch_size or (workload.quick_batch if quick else workload.batch)


def check_split(workloads, counts, batch_size, quick):
    """Raise unless every workload's global batch splits evenly over every rank count."""
    for workload in workloads:
        batch = global_batch(workload, batch_size, quick)
        for n in counts:
            if batch % n:
                given = f"--batch-size {batch}" if batch_size else f"the global batch of {workload.name}, {batch},"
                raise ValueError(f"{given} does not split evenly over --ranks {n}: give a --batch-size that is a "
                                 f"multiple of every rank count")


def child_environment(threads):
    """The ranks' environment: ``threads`` threads per rank, no forced backend, OpenBLAS choosing its own kernel."""
    from .worker import clean_environment
    return clean_environment(threads)


def launch(spec, launcher, timeout=TIMEOUT_S):
    """Run ``spec`` on ``spec["ranks"]`` ranks under ``mpiexec``; return rank 0's JSON answer."""
    command = [launcher, "-n", str(spec["ranks"]), sys.executable, "-m", "minires.bench", "--worker",
               json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=child_environment(spec["threads"]),
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"--ranks {spec['ranks']}: {spec['workload']} ({spec['backend']}) did not finish "
                           f"within {timeout} s (a rank hung?)") from None
    answers = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not answers:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise RuntimeError(f"--ranks {spec['ranks']}: {spec['workload']} ({spec['backend']}) failed: {lines[-1]}")
    return json.loads(answers[-1])


def run_ranks(counts, workloads=None, backends=None, batch_size=None, threads=None, repeat=None, warmup=None,
              quick=False, log=None, rounds=1):
    """Time data-parallel training on each rank count of ``counts``; return one record per (workload, backend, N).

    ``batch_size`` is the global batch, ``threads`` the threads of each rank
    (default 1). With ``rounds`` > 1 the rank counts take turns that many
    times and their steps are pooled, so load that comes and goes falls on all.
    """
    from .runner import check_counts, resolve_backends
    counts = parse_ranks(counts if isinstance(counts, str) else ",".join(map(str, counts)))
    chosen, backends = train_workloads(workloads), resolve_backends(backends, "cpu")
    check_counts(dict(batch_size=batch_size, threads=threads, repeat=repeat, warmup=warmup, rounds=rounds))
    check_split(chosen, counts, batch_size, quick)
    launcher = check_mpi()
    threads = threads or 1
    records = []
    for workload in chosen:
        batch = global_batch(workload, batch_size, quick)
        spec = {"workload": workload.name, "batch": batch, "threads": threads, "device": "cpu",
                "warmup": warmup if warmup is not None else (QUICK_WARMUP if quick else workload.warmup),
                "repeat": repeat if repeat is not None else (QUICK_REPEAT if quick else workload.repeat)}
        flop = workload.flop(batch, macs_per_image(workload))
        for backend in backends:
            pooled = {n: None for n in counts}
            for _ in range(rounds):
                for n in counts:
                    answer = launch(dict(spec, framework="minires", backend=backend, ranks=n), launcher)
                    if pooled[n] is None:
                        pooled[n] = answer
                    else:
                        for key in ("times_s", "comm_s", "allreduce_s", "cpu_share"):
                            pooled[n][key] += answer[key]
                        for mine, more in zip(pooled[n]["rank_ms"], answer["rank_ms"]):  # each rank's steps
                            mine += more
                    if log is not None:
                        ms = 1e3 * statistics.median(answer["times_s"])
                        share = _share(answer)
                        print(f"bench: {workload.name:<26} {backend:<7} ranks {n:<3} {ms:10.2f} ms  "
                              f"comm {100 * share:5.1f}%", file=log, flush=True)
            group = [_record(workload, backend, batch, threads, n, spec["warmup"], pooled[n], flop, rounds)
                     for n in counts]
            busy = [r["ranks"] for r in group if r["cpu_share"] < 0.95]
            if busy and log is not None:
                print(f"bench: warning: on {', '.join(map(str, busy))} rank(s) the ranks had less than 95% of a "
                      f"core each (other processes ran): those speeds are not this machine's", file=log, flush=True)
            base = group[0]
            for r in group:
                r["speedup"] = r["images_per_s"] / base["images_per_s"]
                r["speedup_vs_ranks"] = base["ranks"]
                r["efficiency"] = r["speedup"] * base["ranks"] / r["ranks"]
            records += group
    return records


def _share(answer):
    """The median over steps of (mean time in collectives over the ranks) / (the step's time)."""
    return statistics.median(c / t for c, t in zip(answer["comm_s"], answer["times_s"]))


def _record(workload, backend, batch, threads, n, warmup, answer, flop, rounds):
    ms = 1e3 * statistics.median(answer["times_s"])
    return {"workload": workload.name, "framework": "minires", "backend": backend, "device": "cpu",
            "batch_size": batch, "ranks": n, "threads": threads, "warmup": warmup, "rounds": rounds,
            "repeat": len(answer["times_s"]), "ms": ms, "times_ms": [1e3 * t for t in answer["times_s"]],
            "images_per_s": batch / (ms / 1e3), "flop": flop, "gflop_per_s": flop / (ms / 1e3) / 1e9,
            "comm_ms": 1e3 * statistics.median(answer["comm_s"]), "comm_share": _share(answer),
            "cpu_share": statistics.median(answer["cpu_share"]),
            "allreduce_ms": 1e3 * statistics.median(answer["allreduce_s"]) if answer["allreduce_s"] else 0.0,
            "gradient_mib": answer["gradient_bytes"] / 2 ** 20, "buckets": answer["buckets"],
            "rank_ms": answer["rank_ms"], "blas": answer["blas"], "mpi": answer["mpi"],
            "speedup": None, "speedup_vs_ranks": None, "efficiency": None}


# ---------------------------------------------------------------- the ranks' side

def run_on_ranks(spec):
    """One rank of a ``--ranks`` measurement (inside ``mpiexec``); returns the answer on rank 0, None elsewhere."""
    from .. import backend, distributed, kernels
    from .worker import blas_description
    size = distributed.init(threads=spec["threads"])
    if size != spec["ranks"]:
        distributed.abort(f"minires bench: expected {spec['ranks']} ranks, mpiexec started {size}")
    backend.keep_freed_memory()
    kernels.use(spec["backend"])
    workload = WORKLOADS[spec["workload"]]
    model, step = _ddp_case(workload, spec["batch"], distributed.rank(), size)
    times, comm, mine = [], [], []
    for i in range(spec["warmup"] + spec["repeat"]):
        distributed.barrier()
        distributed.reset_timer()
        start, cpu = time.perf_counter(), time.process_time()
        step()
        took = time.perf_counter() - start
        if i >= spec["warmup"]:
            mine.append((took, distributed.communication_seconds(), time.process_time() - cpu))
    allreduce = _bare_allreduce(model, repeat=max(3, spec["repeat"])) if size > 1 else []
    everyone = distributed.all_gather_object(mine)
    if distributed.rank() != 0:
        return None
    cores = []
    for k in range(len(mine)):
        steps = [rank_steps[k] for rank_steps in everyone]
        times.append(max(t for t, _, _ in steps))            # the step ends when its slowest rank does
        comm.append(statistics.mean(c for _, c, _ in steps))
        cores.append(statistics.mean(c / t for t, _, c in steps))
    grads = [p for p in model.module.parameters() if p.requires_grad]
    return {"times_s": times, "comm_s": comm, "allreduce_s": allreduce, "cpu_share": cores,
            "rank_ms": [[round(1e3 * t, 2) for t, _, _ in rank_steps] for rank_steps in everyone],
            "gradient_bytes": int(sum(p.data.nbytes for p in grads)), "buckets": len(model._buckets),
            "blas": blas_description(), "mpi": _mpi_library()}


def _ddp_case(workload, batch, rank, size):
    """(DDP model, train step) on this rank's slice of the global batch drawn as ``cases.minires_case`` draws it."""
    from .. import functional as F
    from .. import models, nn, optim, tensor
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, workload.image, workload.image), dtype=np.float32)
    mine = slice(rank * batch // size, (rank + 1) * batch // size)
    model = nn.DistributedDataParallel(models.get(workload.model))
    labels = rng.integers(0, model.module.fc.out_features, batch)
    x, labels = tensor(x[mine].copy()), tensor(labels[mine].copy())
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def train_step():
        loss = F.cross_entropy(model(x), labels)   # the mean over this slice; DDP averages over the ranks
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, train_step


def _bare_allreduce(model, repeat):
    """Seconds of one blocking all-reduce of the whole gradient (one buffer), the ranks aligned by a barrier."""
    from .. import distributed
    size = sum(p.data.size for p in model.module.parameters() if p.requires_grad)
    buffer = np.ones(size, dtype=np.float32)
    out = []
    for _ in range(repeat + 1):
        distributed.barrier()
        start = time.perf_counter()
        distributed.all_reduce(buffer)
        out.append(time.perf_counter() - start)
    return out[1:]


def _mpi_library():
    """The first line of the MPI library's version, e.g. "MPICH Version: 5.0.2"."""
    from mpi4py import MPI
    return " ".join(MPI.Get_library_version().strip().splitlines()[0].split())


# ---------------------------------------------------------------- the report

def format_ranks_heading(records, started, load):
    """One line: when, on what (threads per rank, MPI, BLAS), the load average, and what the columns mean."""
    first = records[0]
    rounds = f", {first['rounds']} rounds taking turns" if first["rounds"] > 1 else ""
    return (f"minires bench --ranks, {started:%Y-%m-%d %H:%M %Z}: data-parallel training "
            f"(nn.DistributedDataParallel), {first['threads']} thread(s) per rank on {os.cpu_count()} CPUs; "
            f"{first['mpi']}; BLAS {first['blas']}; load average {load:.2f} at the start and "
            f"{os.getloadavg()[0]:.2f} at the end; batch = the global batch; ms = median step (slowest rank) "
            f"after warm-up{rounds}; comm = share of the step spent in collectives (waits for a slower rank "
            f"included); CPU = a rank's CPU time / the step's time (below 100%: other processes took "
            f"its core); all-reduce = the bare all-reduce of the whole gradient")


def format_ranks_table(records):
    """The ``--ranks`` records as an aligned text table, a row per (workload, backend, rank count)."""
    headers = ("workload", "backend", "ranks", "batch", "ms", "img/s", "speed-up", "efficiency", "comm", "CPU",
               "all-reduce ms")
    rows = [(r["workload"], r["backend"], str(r["ranks"]), str(r["batch_size"]), f"{r['ms']:.1f}",
             f"{r['images_per_s']:.1f}", f"{r['speedup']:.2f}x", f"{100 * r['efficiency']:.0f}%",
             f"{100 * r['comm_share']:.1f}%", f"{100 * r['cpu_share']:.0f}%", f"{r['allreduce_ms']:.2f}")
            for r in records]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows])
