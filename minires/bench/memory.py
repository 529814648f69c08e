"""Peak memory of the timed steps, measured inside the child: resident memory on the CPU, allocator pools on a GPU.

Each meter takes a baseline after setup, so a record shows what the step
itself needs, not the model, the inputs or the framework's own code.
"""
import sys


def _memory_kib():
    """(current, peak) resident set size in KiB: /proc/self/status on Linux, else getrusage's peak for both."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak //= 1024 if sys.platform == "darwin" else 1  # bytes on macOS
        return peak, peak


def _release_free_memory():
    """Hand memory that malloc holds free back to the kernel (glibc only), so the baseline is live memory only.

    The child asks glibc to keep freed memory for reuse
    (``backend.keep_freed_memory``); without this, arrays could reuse pages
    freed before the baseline (Numba's compiler frees plenty) and the step's
    peak would look smaller than it is.
    """
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak():
    """Lower the kernel's peak-RSS mark to the current RSS (Linux 4.0+); elsewhere the peak keeps the warm-ups."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Memory:
    """Peak memory of the timed steps: ``start()`` after setup, ``warmed_up()`` after the warm-ups, then ``peak_kib()``.

    On a GPU the allocators keep what they once held, so the warm-ups (the
    same step) leave the peak where it is and ``warmed_up`` has nothing to do.
    """

    def warmed_up(self):
        pass


class HostMemory(Memory):
    """Peak resident memory above the baseline taken after setup (the CPU runs)."""

    def start(self):
        _release_free_memory()
        self.baseline, _ = _memory_kib()

    def warmed_up(self):
        _reset_peak()  # the warm-ups may compile (Numba) or fill caches: count the timed steps' peak

    def peak_kib(self):
        return max(_memory_kib()[1] - self.baseline, 0)


class CupyMemory(Memory):
    """GPU memory CuPy's pool holds above the live memory after setup; the pool keeps what it once held."""

    def __init__(self):
        import cupy
        self.pool = cupy.get_default_memory_pool()

    def start(self):
        self.pool.free_all_blocks()
        self.baseline = self.pool.used_bytes()

    def peak_kib(self):
        return max(self.pool.total_bytes() - self.baseline, 0) // 1024


class TorchCudaMemory(Memory):
    """GPU memory PyTorch's caching allocator reserved, at its peak, above the live memory after setup."""

    def __init__(self, torch):
        self.cuda = torch.cuda

    def start(self):
        self.cuda.empty_cache()
        self.cuda.reset_peak_memory_stats()
        self.baseline = self.cuda.memory_allocated()

    def peak_kib(self):
        return max(self.cuda.max_memory_reserved() - self.baseline, 0) // 1024
