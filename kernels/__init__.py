"""The kernel interface and the registry that picks a backend for an array.

A backend is a module that defines every function named in ``INTERFACE``
with the same signature as ``numpy_ref``. Kernels take arrays and return
arrays: they know nothing of tensors or autograd, so each one can be tested,
benchmarked and handed out as an exercise on its own.

The backend is chosen per array (host arrays go to a CPU backend, device
arrays to a GPU backend). Unless one is chosen, the choice is "auto": on the
CPU the Numba kernels when Numba is installed and they load, else the NumPy
reference; in a student copy always the reference (its exercises are the
reference's kernels). The environment variable ``MINIRES_KERNELS`` sets the
default of a whole process, ``use("numpy")`` forces a backend over both, and
``reset()`` goes back to the default. A missing or broken Numba never raises
here: "auto" falls back to NumPy, with one warning only when Numba is
installed but does not load.
"""
import importlib
import importlib.util
import os
import sys
import warnings

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

AUTO = "auto"
CHOICES = (AUTO,) + tuple(BACKENDS)  # what use(), MINIRES_KERNELS and --kernels accept
# a student copy records what it leaves out in this file beside the kernels' package (minires.course.manifest's
# MANIFEST): read for its existence only, so the kernels import nothing above them
STUDENT_COPY_MARK = os.path.join("course", "_handout.py")

_loaded = {}
_forced = {"cpu": None, "cuda": None}   # use(): beats everything
_default = {"cpu": None, "cuda": None}  # MINIRES_KERNELS: beats "auto"
_auto = {}                              # device -> (name, why), the automatic choice, made once


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
    """Force the backend for arrays on its device ("numpy" for host arrays ...); "auto" un-forces the CPU's.

    Returns the backend module that now serves that device's arrays.
    """
    if name == AUTO:
        _forced["cpu"] = None
        return load(active("cpu"))
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(CHOICES)}")
    module = load(name)
    _forced[BACKENDS[name][1]] = name
    return module


def reset():
    """Forget any backend forced with ``use``: back to the default (``MINIRES_KERNELS``, else "auto")."""
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

    The one forced with ``use``, else the one ``MINIRES_KERNELS`` names, else
    the automatic choice: on the CPU "numba" when it loads and this is no
    student copy, else "numpy" (``why`` says which reason); on a GPU "cupy"
    when it is available, else "numba-cuda".
    """
    name = _forced[device] or _default[device]
    if name is not None:
        return name
    if device == "cpu":
        return _automatic_cpu()[0]
    return "cupy" if available("cupy") else "numba-cuda"


def why(device="cpu"):
    """Why ``active(device)`` is what it is, in a few words: "use('numba')", "MINIRES_KERNELS=numpy", "auto: ..."."""
    if _forced[device] is not None:
        return f"forced with use({_forced[device]!r})"
    if _default[device] is not None:
        return f"MINIRES_KERNELS={_default[device]}"
    if device == "cpu":
        return f"auto: {_automatic_cpu()[1]}"
    return "auto: the GPU's default"


def student_copy():
    """True in a student copy of minires: its record of what it leaves out lies beside the kernels' package."""
    package = __name__.rpartition(".")[0]  # "minires": the kernels install as minires.kernels
    paths = getattr(sys.modules.get(package), "__path__", None) or []
    return any(os.path.isfile(os.path.join(path, STUDENT_COPY_MARK)) for path in paths)


def _automatic_cpu():
    """(name, why) of the automatic CPU choice, made once per process; loads Numba to see that it works."""
    if "cpu" not in _auto:
        _auto["cpu"] = _choose_cpu()
    return _auto["cpu"]


def _choose_cpu():
    if student_copy():
        return "numpy", "a student copy runs the NumPy reference kernels"
    if importlib.util.find_spec(f"{__name__}.{BACKENDS['numba'][0]}") is None:
        return "numpy", "the Numba kernels are not in this copy of minires"
    if importlib.util.find_spec("numba") is None:
        return "numpy", "Numba is not installed; pip install 'minires[numba]' for the faster Numba kernels"
    try:
        load("numba")
    except Exception as exc:  # installed but broken (a NumPy it was not built for, a missing LLVM ...)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        warnings.warn(f"kernels 'auto': Numba is installed but its kernels do not load ({reason}); running the "
                      "NumPy reference kernels instead (MINIRES_KERNELS=numpy or --kernels numpy chooses them "
                      "and silences this)", stacklevel=3)
        return "numpy", "Numba is installed but does not load"
    return "numba", "the fastest kernels installed"


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


def _read_environment():
    """The process's default from ``MINIRES_KERNELS``; an unusable one warns once and makes it "numpy"."""
    name = os.environ.get("MINIRES_KERNELS", "").strip()
    if not name or name == AUTO:
        return
    try:
        if name not in BACKENDS:
            raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(CHOICES)}")
        load(name)
        _default[BACKENDS[name][1]] = name
    except (ValueError, BackendUnavailable) as exc:
        warnings.warn(f"MINIRES_KERNELS={name}: {exc}; falling back to the numpy backend", stacklevel=3)
        if BACKENDS.get(name, (None, "cpu"))[1] == "cpu":
            _default["cpu"] = "numpy"


_read_environment()
