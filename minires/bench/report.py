"""What ``minires bench`` prints: a heading that says where and how it measured, and the records as a table."""
import os

from .peak import describe as describe_peak


def describe_gpu():
    """The GPU minires runs on, with the CuPy and CUDA versions (asks CuPy; call only when a GPU is usable)."""
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    runtime = cupy.cuda.runtime.runtimeGetVersion()
    return f"{name}, {props['totalGlobalMem'] / 2**30:.0f} GiB, CuPy {cupy.__version__}, " \
           f"CUDA runtime {runtime // 1000}.{runtime % 1000 // 10}"


def format_heading(records, device, started, load):
    """One line: when, on what (threads or the GPU), the load average at ``load`` and now, and what the columns mean."""
    first = records[0]
    rounds = f", {first['rounds']} rounds taking turns" if first["rounds"] > 1 else ""
    if device == "cuda":
        where = f"GPU {describe_gpu()}, PyTorch with TF32 off; host threads {first['threads']}"
        memory = "peak MiB = GPU memory the framework's allocator held above the live memory after setup"
    else:
        where = f"threads {first['threads']} (of {os.cpu_count()} CPUs), BLAS {first.get('blas')}"
        if first.get("isa") == "avx2":
            where += (", code kept to AVX2 (--isa avx2: OpenBLAS's Haswell kernels, Numba without AVX-512, "
                      "ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2)")
        memory = "peak MiB = peak RSS above the child's after-setup baseline"
    peak = first.get("sgemm_peak")
    peak = f"; % sgemm = GFLOP/s as a percentage of the {describe_peak(peak, first['threads'], device)}" if peak else ""
    return (f"minires bench, {started:%Y-%m-%d %H:%M %Z}: {where}, load average {load:.2f} at the start and "
            f"{os.getloadavg()[0]:.2f} at the end; ms = median of the timed runs after warm-up{rounds}; {memory}{peak}")


def format_table(records):
    """The records as an aligned text table: ratios are minires/PyTorch (above 1: minires is slower or bigger).

    "% sgemm" is GFLOP/s as a percentage of the machine's sgemm peak measured in the same run (``peak``).
    """
    headers = ("workload", "backend", "batch", "ms", "img/s", "GFLOP/s", "% sgemm", "peak MiB", "time/torch",
               "mem/torch")

    def ratio(value):
        return "--" if value is None else f"{value:.2f}"

    def percent(value):
        return "--" if value is None else f"{100 * value:.1f}"

    rows = [(r["workload"], r["backend"], str(r["batch_size"]), f"{r['ms']:.2f}", f"{r['images_per_s']:.1f}",
             f"{r['gflop_per_s']:.2f}", percent(r.get("fraction_of_sgemm_peak")), f"{r['peak_mib']:.1f}",
             ratio(r["time_ratio_vs_torch"]), ratio(r["memory_ratio_vs_torch"])) for r in records]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows])
