"""The parent side of ``minires bench``: check the options, measure every framework of every workload, pool the rounds.

Each measurement is a fresh child process (``worker``); this module decides
which ones run, in what order, and turns their answers into records with the
ratios against PyTorch.
"""
import importlib.util
import os
import statistics

from .peak import combine, measure_sgemm
from .worker import isa_environment, measure
from .workloads import QUICK_REPEAT, QUICK_WARMUP, macs_per_image, resolve_workloads

DEVICES = ("cpu", "cuda")


def check_device(device):
    """``device`` ("cpu" or "cuda") when minires can run there, else a one-line error saying what is missing."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    from .. import cuda
    if device == "cuda" and not cuda.is_available():
        raise RuntimeError("--device cuda needs CuPy and an NVIDIA GPU (pip install 'minires[cuda]'); "
                           "minires.cuda.is_available() is False here")
    return device


def resolve_backends(names, device="cpu"):
    """The kernel backends for ``device`` named by a comma list (or list); by default every one that loads here."""
    from .. import kernels
    if names is None:
        return [n for n, (_, serves, _) in kernels.BACKENDS.items() if serves == device and kernels.available(n)]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    for name in names:
        if name in kernels.BACKENDS and kernels.BACKENDS[name][1] != device:
            raise ValueError(f"kernel backend {name!r} serves {kernels.BACKENDS[name][1]} arrays, not {device} "
                             f"ones; pick the device with --device")
        kernels.load(name)  # a one-line error for an unknown backend or a missing library
    if not names:
        raise ValueError("no backend given")
    return list(dict.fromkeys(names))


def torch_available():
    """True when PyTorch can be imported here (looked up without importing it)."""
    return importlib.util.find_spec("torch") is not None


def _record(workload, framework, backend, device, batch, threads, warmup, answer, flop, rounds=1):
    """One measurement's record: the median time, throughput, GFLOP/s and peak; the ratios are filled in later."""
    ms = 1e3 * statistics.median(answer["times_s"])
    return {"workload": workload.name, "framework": framework, "backend": backend, "device": device,
            "batch_size": batch,
            "threads": threads, "warmup": warmup, "rounds": rounds, "repeat": len(answer["times_s"]),
            "ms": ms, "times_ms": [1e3 * t for t in answer["times_s"]],
            "images_per_s": batch / (ms / 1e3), "flop": flop, "gflop_per_s": flop / (ms / 1e3) / 1e9,
            "peak_mib": answer["peak_kib"] / 1024, "blas": answer.get("blas"),
            "time_ratio_vs_torch": None, "memory_ratio_vs_torch": None,
            "sgemm_peak": None, "fraction_of_sgemm_peak": None}


COUNTS = (("batch_size", 1), ("threads", 1), ("repeat", 1), ("warmup", 0), ("rounds", 1))  # (option, minimum)


def check_counts(values, spell=str):
    """Raise unless every count in ``values`` (None: its default) is at least its minimum; ``spell`` names it."""
    for name, low in COUNTS:
        value = values.get(name)
        if value is not None and value < low:
            raise ValueError(f"{spell(name)} must be at least {low}, got {value}")


def run_bench(workloads=None, backends=None, batch_size=None, threads=None, repeat=None, warmup=None,
              quick=False, torch=True, log=None, rounds=1, device="cpu", isa="native"):
    """Measure each workload on each backend (and in PyTorch when installed and ``torch``); return the records.

    ``workloads`` and ``backends`` are comma lists or lists (default: ``DEFAULT_WORKLOADS``, every backend
    for ``device`` that loads); ``device`` is "cpu" or "cuda" (a GPU: see the package's docstring); ``log`` is
    a file that gets a line per measurement as it finishes. With ``rounds`` > 1 every framework of a workload
    is measured that many times, taking turns (a fresh process each time), and the times of all rounds are
    pooled: load that comes and goes then falls on every framework alike, so the ratios hold up better on a
    busy machine. The peak memory is the largest of the rounds'. The machine's sgemm peak (``peak``) is
    measured before the first workload and after the last; every record holds it and its GFLOP/s as a
    fraction of it. ``isa`` "avx2" keeps every framework's host code to AVX2 (``worker.isa_environment``).
    """
    device = check_device(device)
    isa_environment(isa)  # an unknown name fails before anything runs
    chosen, backends = resolve_workloads(workloads), resolve_backends(backends, device)
    check_counts(dict(batch_size=batch_size, threads=threads, repeat=repeat, warmup=warmup, rounds=rounds))
    threads = threads or os.cpu_count() or 1
    frameworks = [("minires", b) for b in backends] + ([("torch", "torch")] if torch and torch_available() else [])
    records, first_peak = [], _peak(threads, device, quick, log, isa)
    for workload in chosen:
        batch = batch_size or (workload.quick_batch if quick else workload.batch)
        spec = {"workload": workload.name, "batch": batch, "threads": threads, "device": device, "isa": isa,
                "warmup": warmup if warmup is not None else (QUICK_WARMUP if quick else workload.warmup),
                "repeat": repeat if repeat is not None else (QUICK_REPEAT if quick else workload.repeat)}
        flop = workload.flop(batch, macs_per_image(workload))
        answers = {key: {"times_s": [], "peak_kib": 0, "blas": None} for key in frameworks}
        for _ in range(rounds):
            for framework, backend in frameworks:
                answer = measure(dict(spec, framework=framework, backend=backend))
                pooled = answers[framework, backend]
                pooled["times_s"] += answer["times_s"]
                pooled["peak_kib"] = max(pooled["peak_kib"], answer["peak_kib"])
                pooled["blas"] = answer.get("blas")
                if log is not None:
                    ms, mib = 1e3 * statistics.median(answer["times_s"]), answer["peak_kib"] / 1024
                    print(f"bench: {workload.name:<26} {backend:<7} {ms:10.2f} ms  {mib:8.1f} MiB", file=log,
                          flush=True)
        group = [dict(_record(workload, framework, backend, device, batch, threads, spec["warmup"],
                              answers[framework, backend], flop, rounds), isa=isa)
                 for framework, backend in frameworks]
        reference = next((r for r in group if r["framework"] == "torch"), None)
        for r in group:
            if reference is not None and r is not reference:
                r["time_ratio_vs_torch"] = r["ms"] / reference["ms"]
                if reference["peak_mib"] > 0:
                    r["memory_ratio_vs_torch"] = r["peak_mib"] / reference["peak_mib"]
        records += group
    peak = combine(first_peak, _peak(threads, device, quick, log, isa))
    for r in records:
        r["sgemm_peak"] = peak
        r["fraction_of_sgemm_peak"] = r["gflop_per_s"] / peak["gflop_per_s"]
    return records


def _peak(threads, device, quick, log, isa=None):
    """The sgemm peak measured now (``peak.measure_sgemm``), with a line in the log."""
    peak = measure_sgemm(threads, device, quick, isa)
    if log is not None:
        print(f"bench: sgemm {peak['size']}x{peak['size']} float32   {peak['gflop_per_s']:10.1f} GFLOP/s", file=log,
              flush=True)
    return peak
