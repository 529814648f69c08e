"""The input checks the ops share: each one names the op and the shapes it was given.

``functional`` and ``residual`` call them before building a Function, so a
mistake is reported where the user made it (``conv2d: expected 3 input
channels, got 1 (input shape ...)``), and a layer labels the error with its
own name on the way out (see ``errors``).
"""
import numpy as np

from .backend import FLOATS
from .kernels._index import conv_output_size
from .errors import DTypeError, ShapeError
from .tensor import Tensor


def size(value, name, op, minimum=1):
    """``value`` as an int of at least ``minimum`` (a channel or feature count, a size), or a clear error."""
    where = f"{op}: " if op else ""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        bound = "positive" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{where}{name} must be {bound}, got {value}")
    return int(value)


def choice(value, name, op, allowed):
    """``value`` if it is one of the strings ``allowed``, else a ValueError naming ``op`` and the choices."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{op}: {name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def pair(value, name="size", op=None, minimum=None):
    """``value`` as a pair of ints: 3 -> (3, 3), (3, 1) -> (3, 1); each at least ``minimum`` when given."""
    where = f"{op}: " if op else ""
    if isinstance(value, (tuple, list)) and len(value) != 2:
        raise ValueError(f"{where}{name} must be an int or a pair, got {value!r}")
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
        raise TypeError(f"{where}{name} must be an int or a pair of ints, got {value!r}")
    if minimum is not None and min(values) < minimum:
        bound = {0: "non-negative", 1: "positive"}.get(minimum, f"at least {minimum}")
        raise ValueError(f"{where}{name} must be {bound}, got {value!r}")
    return int(values[0]), int(values[1])


def floating(op, **tensors):
    """Raise unless every given tensor (None: absent) is floating point, all of one dtype."""
    dtypes = {}
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
        if t.dtype.type not in FLOATS:
            raise DTypeError(f"expected a floating-point {name}, got dtype {t.dtype} (shape {t.shape}); "
                             f"convert it with .float()", op=op)
        dtypes[name] = t.dtype
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        raise DTypeError(f"inputs must share one dtype, got {listed}", op=op)


def ndim(op, x, expected, what="input"):
    """Raise unless ``x`` has one of the ``expected`` numbers of axes."""
    if x.ndim not in expected:
        want = " or ".join(f"{d}-D" for d in expected)
        raise ShapeError(f"expected a {want} {what}, got shape {x.shape}", op=op)


def windows(op, x, kernel, stride, padding):
    """The output size (oh, ow) of a sliding window over x (N, C, H, W), or a clear error when it is empty."""
    if min(stride) < 1 or min(kernel) < 1 or min(padding) < 0:
        raise ValueError(f"{op}: kernel {kernel} and stride {stride} must be positive, "
                         f"padding {padding} non-negative")
    oh = conv_output_size(x.shape[2], kernel[0], stride[0], padding[0])
    ow = conv_output_size(x.shape[3], kernel[1], stride[1], padding[1])
    if oh < 1 or ow < 1:
        raise ShapeError(f"a {kernel[0]}x{kernel[1]} window with padding {padding} does not fit "
                         f"the input of shape {x.shape}", op=op)
    return oh, ow


def padding(value, op):
    """A convolution's or a pool's padding: a pair of ints, or 'same' / 'valid' (any case, as Keras takes it)."""
    if isinstance(value, str):
        mode = value.lower()
        if mode not in ("same", "valid"):
            where = f"{op}: " if op else ""
            raise ValueError(f"{where}padding must be an int, a pair of ints, 'same' or 'valid', got {value!r}")
        return mode
    return pair(value, "padding", op, 0)


def same_padding(size, kernel, stride):
    """TensorFlow's 'same' padding of one axis, (before, after): the output is ceil(size / stride) long.

    The total, max((out - 1) * stride + kernel - size, 0), is split with the
    smaller half before (top/left). At stride 1 this is PyTorch's padding='same'.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2
