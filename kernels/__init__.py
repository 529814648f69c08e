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
    "batch_norm_stats",
    "batch_norm_forward",
    "batch_norm_backward",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
)

# name -> (module, device it serves, what to install when it is missing)
BACKENDS = {
    "numpy": ("numpy_ref", "cpu", "numpy"),
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
            raise BackendUnavailable(
                f"kernel backend {name!r} needs {install}, which is not installed ({exc}); "
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


def active(device="cpu"):
    """The name of the backend that serves arrays on ``device``."""
    if _forced[device] is not None:
        return _forced[device]
    return "numpy" if device == "cpu" else None


def device_of(array):
    """"cuda" for an array that lives on a GPU, else "cpu"."""
    return "cpu" if type(array).__module__.split(".")[0] == "numpy" else "cuda"


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
