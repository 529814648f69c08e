"""Is there a GPU minires can use? ``minires.cuda.is_available()`` answers without failing, and ``why_unavailable()`` says why not."""
from .backend import cupy_or_none
from .kernels import BackendUnavailable, load

_reason = []  # the answer of why_unavailable(), worked out once


def why_unavailable():
    """None when minires can compute on a GPU, else one line saying why not and what to install.

    CuPy must import, see a CUDA device, and compile and run kernels there: ``cupy.is_available()``
    needs only the driver, so a CuPy without its NVRTC and cuBLAS (libnvrtc.so.12, libcublas.so.12)
    says True and fails at the first kernel; loading the CuPy kernels runs a few (``cupy_base.probe``).
    """
    if not _reason:
        _reason.append(_find_reason())
    return _reason[0]


def _find_reason():
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA library that will not load
        return f"CuPy does not import ({type(exc).__name__}: {exc}): pip install 'minires[cuda]'"
    if cupy_or_none() is None:
        return "CuPy finds no usable CUDA GPU (no NVIDIA driver, or no device)"
    try:
        load("cupy")
    except BackendUnavailable as exc:
        return str(exc)
    return None


def is_available():
    """True when CuPy is installed, sees a working CUDA device and can compile and run minires' kernels on it."""
    return why_unavailable() is None


def device_count():
    """The number of CUDA devices CuPy sees (0 without CuPy or a GPU)."""
    cp = cupy_or_none()
    return 0 if cp is None else int(cp.cuda.runtime.getDeviceCount())
