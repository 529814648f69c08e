"""The array module behind a tensor (NumPy on the host, CuPy on a GPU) and moves between them.

Everything above this layer asks ``array_module(a)`` for the module that
serves an array instead of importing NumPy or CuPy directly, so the same op
code runs on both. CuPy is optional: without it only the "cpu" device exists.
"""
import ctypes
import os
import sys

import numpy as np

from .kernels import device_of  # noqa: F401  (one definition, in the layer below: "cpu" or "cuda")

FLOATS = (np.float16, np.float32, np.float64)  # the dtypes that can carry a gradient


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse rather than hand it back to the kernel.

    A training step allocates and frees the same few hundred MiB of
    activations, gradients and im2col columns every step. By default glibc
    returns large freed blocks to the kernel, so the next step's arrays arrive
    as fresh pages that the kernel must fault in and zero: about 40,000 page
    faults and 15-25% of a resnet20 step here, on either CPU backend. Kept,
    they are reused as they are; the process's memory stays at its peak
    instead of shrinking between steps. Linux with glibc only;
    MINIRES_KEEP_FREED_MEMORY=0 leaves malloc alone.

    It changes the whole process, so importing minires never calls it: the
    training loop (``minires train``, ``train.Run``) and ``minires bench`` do,
    once, before their first step.
    """
    if os.environ.get("MINIRES_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold, largest = -1, -3, 2**31 - 1
    mallopt(m_mmap_threshold, largest)  # big arrays come from the heap, which is reused, not from mmap
    mallopt(m_trim_threshold, largest)  # and the heap is not trimmed back


_cupy = None
_cupy_checked = False


def cupy_or_none():
    """The ``cupy`` module when it is installed and a GPU is usable, else ``None``."""
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy
            if cupy.is_available():
                _cupy = cupy
        except Exception:  # ImportError, or a CUDA driver that will not load
            _cupy = None
    return _cupy


def array_module(a):
    """``numpy`` or ``cupy``: the module whose functions apply to array ``a``."""
    if isinstance(a, np.ndarray) or np.isscalar(a):
        return np
    cp = cupy_or_none()
    if cp is not None and isinstance(a, cp.ndarray):
        return cp
    return np


def normalize_device(device):
    """Accept "cpu", "cuda", "cuda:0", "gpu"; return "cpu" or "cuda"."""
    name = str(device).lower()
    if name == "cpu":
        return "cpu"
    if name in ("cuda", "gpu") or name.startswith("cuda:"):
        return "cuda"
    raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'")


def to_device(a, device):
    """Copy array ``a`` to ``device`` ("cpu" or "cuda"); no copy when it is already there."""
    device = normalize_device(device)
    if device == device_of(a):
        return a
    if device == "cpu":
        return a.get()
    cp = cupy_or_none()
    if cp is None:
        raise RuntimeError("device 'cuda' needs CuPy and a GPU: pip install 'minires[cuda]' "
                           "on a machine with an NVIDIA GPU")
    return cp.asarray(a)


def to_numpy(a):
    """A NumPy array with the contents of ``a`` (copied from the GPU when needed)."""
    return a if isinstance(a, np.ndarray) else to_device(a, "cpu")
