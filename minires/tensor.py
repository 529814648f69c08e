"""Tensor: an array, the gradient that backward leaves on it, and the Function that made it.

``Tensor.data`` is a NumPy array (a CuPy array on a GPU). Python floats
become float32 and Python ints int64; an existing array keeps its dtype, so
float32 stays float32 end to end and float64 is there for gradient checks.
A binary op on two dtypes promotes as PyTorch does (float32 + float64 -> float64).

Assigning ``t.data`` (``p.data -= lr * g`` too) bumps ``t._version``, so
backward notices a tensor that changed after an op saved it (see autograd).
"""
import operator

import numpy as np

from . import autograd, ops, rng as _rng
from .backend import FLOATS as _FLOATS
from .backend import array_module, device_of, normalize_device, to_numpy
from .errors import DTypeError, ShapeError

_KINDS = "biuf"  # what a tensor holds: bools, signed and unsigned integers, floats


def _is_array(data):
    return isinstance(data, np.ndarray) or type(data).__module__.split(".")[0] == "cupy"


def _dtype(dtype, op, floating=False):
    """``dtype`` as a NumPy dtype a tensor may hold (a floating one if asked), or a clear error."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: {dtype!r} is not a dtype") from None
    if dtype.kind not in ("f" if floating else _KINDS):
        want = "a floating-point dtype" if floating else "bool, an integer or a floating-point dtype"
        raise DTypeError(f"dtype {dtype} is not supported here; use {want}", op=op)
    return dtype


def _as_array(data, dtype=None, op="tensor"):
    """Convert ``data`` to an array: lists and Python numbers take minires' defaults."""
    if isinstance(data, Tensor):
        data = data.data
    dtype = None if dtype is None else _dtype(dtype, op)
    if _is_array(data) or isinstance(data, np.generic):
        arr = array_module(data).asarray(data, dtype=dtype)
    else:
        try:
            arr = np.asarray(data, dtype=dtype)
        except (ValueError, TypeError) as exc:  # ragged lists, text where numbers belong
            raise ValueError(f"{op}: cannot make a tensor from {type(data).__name__} {data!r:.80}: "
                             f"{exc}") from None
        if dtype is None and arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        elif dtype is None and arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
    if arr.dtype.kind not in _KINDS:
        raise DTypeError(f"cannot make a tensor from {type(data).__name__} {data!r:.80} (dtype {arr.dtype}); "
                         "a tensor holds bools, integers or floating-point numbers", op=op)
    return arr


def _promote(a, b):
    """The dtype of a binary op on dtypes ``a`` and ``b``, as PyTorch promotes: floating wins, then the wider."""
    if a == b:
        return a
    if (a.kind == "f") != (b.kind == "f"):
        return a if a.kind == "f" else b
    return np.promote_types(a, b)


def _operator(fn, reflected=False, true_division=False):
    """A binary operator method that applies Function ``fn``: ``__add__`` is ``_operator(ops.Add)``."""
    def method(self, other):
        return self._binary(fn, other, reflected, true_division)
    return method


def _comparison(op):
    """A comparison method: a boolean tensor outside the graph."""
    def method(self, other):
        other = other.data if isinstance(other, Tensor) else other
        try:
            return Tensor(op(self.data, other))
        except ValueError:  # name the comparison and both shapes
            ops.broadcast_shape(op.__name__, self.shape, np.shape(other))
            raise
    return method


class Tensor:
    """An n-dimensional array that can record how it was computed and carry a gradient."""

    __array_ufunc__ = None  # ndarray <op> Tensor defers to Tensor's reflected operator

    def __init__(self, data, requires_grad=False, dtype=None):
        if dtype is not None or not _is_array(data) or data.dtype.kind not in _KINDS:
            data = _as_array(data, dtype)  # which refuses strings, objects and complex numbers
        self._data = data
        self._version_counter = [0]  # shared with this tensor's views (see autograd)
        self.grad = None
        self.grad_fn = None
        self._hooks = []
        self._retains_grad = False
        self.requires_grad = requires_grad

    @property
    def data(self):
        """The array. Assigning it (``t.data = a``, ``p.data -= lr * g``) bumps the version."""
        return self._data

    @data.setter
    def data(self, value):
        if not _is_array(value) or value.dtype.kind not in _KINDS:
            raise TypeError(f"Tensor.data: expected an array of bools, integers or floats, got {value!r:.60}")
        self._data = value
        autograd.increment_version(self)

    @property
    def _version(self):
        """How many times this tensor (or a view of it) was changed in place; backward checks it."""
        return self._version_counter[0]

    # ------------------------------------------------------------ gradient bookkeeping

    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        if value and self.data.dtype.type not in _FLOATS:
            raise DTypeError(f"only floating-point tensors can require grad, got dtype {self.data.dtype} "
                             f"(shape {self.data.shape})")
        if not value and self.grad_fn is not None:
            raise RuntimeError("requires_grad=False on a tensor computed by an op: use .detach()")
        self._requires_grad = bool(value)

    @property
    def is_leaf(self):
        """True for tensors not made by a recorded op (their .grad is kept by backward)."""
        return self.grad_fn is None

    def backward(self, grad=None, retain_graph=False):
        """Accumulate the gradient of this tensor into ``.grad`` of every leaf it depends on."""
        autograd.backward(self, grad, retain_graph=retain_graph)

    def register_hook(self, fn):
        """Call ``fn(grad)`` with this tensor's gradient when backward reaches it.

        ``fn`` may return a tensor to use instead. Returns a handle with ``remove()``.
        """
        if not self.requires_grad:
            raise RuntimeError("register_hook: this tensor does not require grad")
        self._hooks.append(fn)
        return autograd.RemovableHandle(self._hooks, fn)

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor after backward."""
        self._retains_grad = True
        return self

    def detach(self):
        """The same data (and version counter), cut off from the graph."""
        out = Tensor(self._data)
        out._version_counter = self._version_counter
        return out

    def requires_grad_(self, value=True):
        self.requires_grad = value
        return self

    def zero_grad(self):
        self.grad = None

    # ------------------------------------------------------------ array facts

    @property
    def shape(self):
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def ndim(self):
        return self._data.ndim

    @property
    def size(self):
        return self._data.size

    @property
    def device(self):
        """"cpu" or "cuda"."""
        return device_of(self.data)

    def numel(self):
        return int(self.data.size)

    def __len__(self):
        if not self.ndim:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))  # len() refuses a 0-d tensor, as PyTorch's iter() does

    def numpy(self):
        """The data as a NumPy array (copied to the host when it lives on a GPU)."""
        return to_numpy(self.data)

    def item(self):
        """The single value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ShapeError(f"only one-element tensors convert to a number, got shape {self.shape}", op="item")
        return self.data.reshape(()).item()

    def tolist(self):
        return to_numpy(self.data).tolist()

    def to(self, device=None, dtype=None):
        """A copy on ``device`` ("cpu"/"cuda") and/or with a floating ``dtype``; differentiable."""
        out = self
        if device is not None and normalize_device(device) != self.device:
            out = ops.ToDevice.apply(out, device=normalize_device(device))
        if dtype is not None and np.dtype(dtype) != out.dtype:
            dtype = _dtype(dtype, "to")
            out = ops.Cast.apply(out, dtype=dtype) if out.requires_grad and dtype.kind == "f" else \
                Tensor(out.data.astype(dtype))
        return out

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    def __repr__(self):
        body = np.array2string(to_numpy(self.data), precision=4, separator=", ", threshold=20,
                               prefix="tensor(")
        extra = ""
        if self.data.dtype != np.float32:
            extra += f", dtype={self.data.dtype}"
        if self.device != "cpu":
            extra += f", device='{self.device}'"
        if self.grad_fn is not None:
            extra += f", grad_fn={type(self.grad_fn).__name__}"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    # ------------------------------------------------------------ operators

    def _operand(self, other, fn):
        """``other`` as a tensor (NotImplemented if it is no number, array or list); a Python number
        takes this tensor's dtype, as in PyTorch, but float32 beside integers and int64 beside bools."""
        if isinstance(other, Tensor):
            return other
        if isinstance(other, (int, float, np.integer, np.floating, np.bool_)):  # bool is an int
            dtype = self._data.dtype
            if isinstance(other, (float, np.floating)):
                dtype = dtype if dtype.kind == "f" else np.float32
            elif dtype.kind == "b" and not isinstance(other, (bool, np.bool_)):
                dtype = np.int64
            return Tensor(array_module(self._data).asarray(other, dtype=dtype))
        if _is_array(other) or isinstance(other, (list, tuple)):
            return Tensor(other)
        if isinstance(other, (complex, np.complexfloating)):
            raise DTypeError(f"complex numbers are not supported, got {other!r}", op=fn.__name__.lower())
        return NotImplemented

    def _binary(self, fn, other, reflected=False, true_division=False):
        """Apply a binary op to tensors promoted to one dtype (a cast input gets its gradient in its own)."""
        other = self._operand(other, fn)
        if other is NotImplemented:
            return NotImplemented
        a, b = (other, self) if reflected else (self, other)
        da, db = a.dtype, b.dtype
        dtype = _promote(da, db)
        if true_division and dtype.kind != "f":
            dtype = np.dtype(np.float32)  # int / int is float, as in PyTorch
        a = a if da == dtype else a.to(dtype=dtype)
        b = b if db == dtype else b.to(dtype=dtype)
        return fn.apply(a, b)  # shapes that do not broadcast: the op's ShapeError names it and both shapes

    # the arithmetic operators; the reflected ones serve ``2 * t``, and ``/`` of integers gives floats
    __add__, __radd__ = _operator(ops.Add), _operator(ops.Add, reflected=True)
    __sub__, __rsub__ = _operator(ops.Sub), _operator(ops.Sub, reflected=True)
    __mul__, __rmul__ = _operator(ops.Mul), _operator(ops.Mul, reflected=True)
    __truediv__ = _operator(ops.Div, true_division=True)
    __rtruediv__ = _operator(ops.Div, reflected=True, true_division=True)
    __pow__, __rpow__ = _operator(ops.Pow), _operator(ops.Pow, reflected=True)
    __matmul__, __rmatmul__ = _operator(ops.MatMul), _operator(ops.MatMul, reflected=True)

    def __neg__(self):
        return ops.Neg.apply(self)

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        return ops.GetItem.apply(self, index=index)

    # comparisons give boolean tensors outside the graph
    __eq__, __ne__ = _comparison(operator.eq), _comparison(operator.ne)
    __lt__, __le__ = _comparison(operator.lt), _comparison(operator.le)
    __gt__, __ge__ = _comparison(operator.gt), _comparison(operator.ge)
    __hash__ = object.__hash__

    def __bool__(self):
        if self.data.size != 1:
            raise ShapeError(f"the truth value of a tensor of shape {self.shape} is ambiguous", op="bool")
        return bool(self.data.reshape(()))

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    # ------------------------------------------------------------ methods

    def _floating(self, what):
        """This tensor, if it is floating point (else a DTypeError naming ``what``)."""
        if self.data.dtype.type in _FLOATS:
            return self
        raise DTypeError(f"expected a floating-point tensor, got dtype {self.dtype} (shape {self.shape})",
                         op=what)

    def sum(self, axis=None, keepdims=False):
        return ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return ops.Mean.apply(self._floating("mean"), axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return ops.Max.apply(self, axis=axis, keepdims=keepdims)

    def argmax(self, axis=None):
        """Indices of the maxima (an integer tensor outside the graph)."""
        axis = None if axis is None else ops.dim("argmax", axis, self.shape)
        if self.size == 0 and (axis is None or self.shape[axis] == 0):
            where = "" if axis is None else f" over dim {axis}"
            raise ShapeError(f"cannot take the argmax of an empty tensor{where} (shape {self.shape})",
                             op="argmax")
        return Tensor(self.data.argmax(axis=axis))

    def exp(self):
        return ops.Exp.apply(self._floating("exp"))

    def log(self):
        return ops.Log.apply(self._floating("log"))

    def sqrt(self):
        return ops.Sqrt.apply(self._floating("sqrt"))

    def relu(self):
        return ops.Relu.apply(self._floating("relu"))

    def sigmoid(self):
        return ops.Sigmoid.apply(self._floating("sigmoid"))

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return ops.Reshape.apply(self, shape=shape)

    def view(self, *shape):
        return self.reshape(*shape)

    def flatten(self, start_dim=0, end_dim=-1):
        """Merge the axes from ``start_dim`` to ``end_dim`` into one, as torch.flatten (0-d becomes (1,))."""
        return self.reshape(ops.flat_shape("flatten", self.shape, start_dim, end_dim))

    def permute(self, *dims):
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        return ops.Permute.apply(self, axes=dims)

    def transpose(self, dim0=None, dim1=None):
        """Swap two axes (PyTorch style), or reverse all axes when none are given (NumPy style)."""
        if dim0 is None and dim1 is None:
            return self.permute(tuple(reversed(range(self.ndim))))
        if dim0 is None or dim1 is None:
            raise TypeError("transpose: give both dim0 and dim1, or neither to reverse all axes")
        dim0, dim1 = ops.dim("transpose", dim0, self.shape), ops.dim("transpose", dim1, self.shape)
        axes = list(range(self.ndim))
        if axes:
            axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return ops.Permute.apply(self, axes=tuple(axes))

    @property
    def T(self):
        return self.transpose()


# ---------------------------------------------------------------- constructors

def tensor(data, requires_grad=False, dtype=None):
    """A new tensor from a number, a nested list or an array (the data is copied).

    Python floats become float32, Python ints int64; arrays keep their dtype.
    """
    arr = _as_array(data, dtype)
    if isinstance(data, Tensor) or arr is data:
        arr = arr.copy()
    return Tensor(arr, requires_grad=requires_grad)


def _shape(shape, op):
    """A constructor's size (ints, or one tuple or list of them) checked as PyTorch does: ints, none negative."""
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)
    for n in shape:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"{op}: size must be a tuple of ints, got {type(n).__name__} {n!r} in {shape}")
        if n < 0:
            raise ValueError(f"{op}: negative dimension {n} in size {shape}")
    return tuple(int(n) for n in shape)


def _number(op, name, value):
    """Raise unless ``value`` is a real number (a bool counts, as in PyTorch's fill values)."""
    if isinstance(value, (complex, np.complexfloating)) or \
            not isinstance(value, (int, float, np.number, np.bool_)):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__} {value!r:.40}")


def zeros(*shape, dtype=np.float32, requires_grad=False):
    return Tensor(np.zeros(_shape(shape, "zeros"), dtype=_dtype(dtype, "zeros")), requires_grad=requires_grad)


def ones(*shape, dtype=np.float32, requires_grad=False):
    return Tensor(np.ones(_shape(shape, "ones"), dtype=_dtype(dtype, "ones")), requires_grad=requires_grad)


def full(shape, value, dtype=np.float32, requires_grad=False):
    _number("full", "fill_value", value)
    return Tensor(np.full(_shape((shape,), "full"), value, dtype=_dtype(dtype, "full")),
                  requires_grad=requires_grad)


def _like(t, op):
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(t).__name__}")
    return array_module(t.data)


def zeros_like(t, requires_grad=False):
    return Tensor(_like(t, "zeros_like").zeros_like(t.data), requires_grad=requires_grad)


def ones_like(t, requires_grad=False):
    return Tensor(_like(t, "ones_like").ones_like(t.data), requires_grad=requires_grad)


def randn(*shape, dtype=np.float32, requires_grad=False, rng=None):
    """Standard normal samples from ``rng`` (a numpy Generator) or the one ``manual_seed`` sets."""
    shape, dtype = _shape(shape, "randn"), _dtype(dtype, "randn", floating=True)
    rng = _rng.generator() if rng is None else rng
    return Tensor(rng.standard_normal(shape).astype(dtype), requires_grad=requires_grad)


def rand(*shape, dtype=np.float32, requires_grad=False, rng=None):
    """Uniform samples in [0, 1)."""
    shape, dtype = _shape(shape, "rand"), _dtype(dtype, "rand", floating=True)
    rng = _rng.generator() if rng is None else rng
    return Tensor(rng.random(shape).astype(dtype), requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype=None):
    """Evenly spaced values as in ``numpy.arange``; integers stay int64, floats become float32."""
    low, high = (0, start) if stop is None else (start, stop)
    for name, value in (("start", low), ("end", high), ("step", step)):
        _number("arange", name, value)
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if not np.isfinite([low, high]).all():
        raise ValueError(f"arange: unsupported range {low} -> {high}")
    if (high - low) * step < 0:
        raise ValueError(f"arange: upper bound and lower bound inconsistent with step sign "
                         f"(start {low}, end {high}, step {step})")
    arr = np.arange(low, high, step)
    if dtype is None:
        dtype = np.float32 if arr.dtype.kind == "f" else np.int64
    return Tensor(arr.astype(_dtype(dtype, "arange")))
