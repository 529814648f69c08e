"""The kernel interface and the registry that picks a backend for an array.

A backend is a module that defines every function named in ``INTERFACE``
with the same signature as ``numpy_ref``. Kernels take arrays and return
arrays: they know nothing of tensors or autograd, so each one can be tested,
benchmarked and handed out as an exercise on its own.

The backend is chosen per array (host arrays go to a CPU backend, device
arrays to a GPU backend) and can be forced with ``use("numba")`` or the
environment variable ``MINIRES_KERNELS``.
"""
import importlib
import os

INTERFACE = (
    "im2col",
    "col2im",
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "residual_add_forward",
    "residual_add_backward",
    # Batch norm: the op (minires.functional) folds (x - mean) * invstd * weight + bias into one
    # per-channel scale and shift and chooses training or eval; the kernels do the per-element work.
    "batch_norm_stats",           # (x) -> (mean, var), biased, per channel over (N, H, W)
    "batch_norm_forward",         # (x, scale, shift) -> x * scale + shift; in eval also dx = dy * scale
    "batch_norm_grad_sums",       # (dy, x, mean, invstd) -> (dbias, dweight), per-channel sums over (N, H, W)
    "batch_norm_backward_input",  # (dy, x, mean, invstd, scale, dbias, dweight) -> dx, with batch statistics
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
)

# name -> (module, device it serves, what to install when it is missing)
BACKENDS = {
    "numpy": ("numpy_ref", "cpu", "numpy"),
    "numba": ("numba_cpu", "cpu", "numba (pip install 'minires[numba]')"),
    "numba-cuda": ("numba_cuda", "cuda",
                   "numba-cuda and an NVIDIA GPU (pip install 'minires[numba]'; "
                   "for tests without a GPU set NUMBA_ENABLE_CUDASIM=1)"),
    "cupy": ("cupy_kernels", "cuda", "cupy-cuda12x and an NVIDIA GPU (pip install 'minires[cuda]')"),
}

_loaded = {}
_forced = {"cpu": None, "cuda": None}


class BackendUnavailable(RuntimeError):
    """A kernel backend was asked for whose library is not installed."""


def load(name):
    """Import and return the backend module called ``name`` (e.g. "numpy")."""
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name not in _loaded:
        module_name, _, install = BACKENDS[name]
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ImportError as exc:
            reason = " ".join(str(exc).split())  # one line, whatever the library printed
            raise BackendUnavailable(
                f"kernel backend {name!r} needs {install}, which is not available ({reason}); "
                f"install it or use the 'numpy' backend") from None
        missing = [f for f in INTERFACE if not hasattr(module, f)]
        if missing:
            raise BackendUnavailable(f"kernel backend {name!r} lacks {', '.join(missing)}")
        _loaded[name] = module
    return _loaded[name]


def use(name):
    """Force the backend for arrays on its device ("numpy" for host arrays ...)."""
    module = load(name)
    _forced[BACKENDS[name][1]] = name
    return module


def reset():
    """Forget any forced backend: choose by array type again."""
    _forced.update(cpu=None, cuda=None)


_available = {}


def available(name):
    """True when backend ``name`` can be loaded here (its library is installed and finds its device)."""
    if name not in _available:
        try:
            load(name)
            _available[name] = True
        except BackendUnavailable:
            _available[name] = False
    return _available[name]


def active(device="cpu"):
    """The name of the backend that serves arrays on ``device``.

    Unless one is forced: "numpy" on the CPU; on a GPU "cupy" when it is
    available, else "numba-cuda".
    """
    if _forced[device] is not None:
        return _forced[device]
    if device == "cpu":
        return "numpy"
    return "cupy" if available("cupy") else "numba-cuda"


def device_of(array):
    """"cuda" for an array that lives on a GPU (CuPy, Numba device arrays), else "cpu"."""
    return "cuda" if hasattr(array, "__cuda_array_interface__") else "cpu"


def for_array(array):
    """The backend module that serves ``array``."""
    device = device_of(array)
    name = active(device)
    if name is None:
        raise BackendUnavailable(f"no kernel backend serves {type(array).__name__} arrays on {device}")
    return _loaded.get(name) or load(name)


if os.environ.get("MINIRES_KERNELS"):
    try:
        use(os.environ["MINIRES_KERNELS"])
    except (ValueError, BackendUnavailable) as exc:
        import warnings
        warnings.warn(f"MINIRES_KERNELS: {exc}; falling back to the numpy backend", stacklevel=2)
