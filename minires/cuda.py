"""Is there a GPU minires can use? ``minires.cuda.is_available()`` answers without failing."""
from .backend import cupy_or_none


def is_available():
    """True when CuPy is installed and sees a working CUDA device."""
    return cupy_or_none() is not None


def device_count():
    """The number of CUDA devices CuPy sees (0 without CuPy or a GPU)."""
    cp = cupy_or_none()
    return 0 if cp is None else int(cp.cuda.runtime.getDeviceCount())
