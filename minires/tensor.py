"""Tensor: an array, the gradient that backward leaves on it, and the Function that made it.

``Tensor.data`` is a NumPy array (a CuPy array on a GPU). Python floats
become float32 and Python ints int64; an existing array keeps its dtype, so
float32 stays float32 end to end and float64 is there for gradient checks.
"""
import numpy as np

from . import autograd, ops, rng as _rng
from .backend import FLOATS as _FLOATS
from .backend import array_module, device_of, normalize_device, to_numpy
from .errors import DTypeError


def _is_array(data):
    return isinstance(data, np.ndarray) or type(data).__module__.split(".")[0] == "cupy"


def _as_array(data, dtype=None):
    """Convert ``data`` to an array: lists and Python numbers take minires' defaults."""
    if isinstance(data, Tensor):
        data = data.data
    if _is_array(data) or isinstance(data, np.generic):
        xp = array_module(data)
        return xp.asarray(data) if dtype is None else xp.asarray(data, dtype=dtype)
    if dtype is not None:
        return np.asarray(data, dtype=dtype)
    arr = np.asarray(data)
    if arr.dtype == np.float64:
        return arr.astype(np.float32)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype == object:
        raise TypeError(f"tensor: cannot make a tensor from {type(data).__name__} {data!r:.80}")
    return arr


class Tensor:
    """An n-dimensional array that can record how it was computed and carry a gradient."""

    __array_ufunc__ = None  # ndarray <op> Tensor defers to Tensor's reflected operator

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = data if (dtype is None and _is_array(data)) else _as_array(data, dtype)
        self.grad = None
        self.grad_fn = None
        self._hooks = []
        self._retains_grad = False
        self.requires_grad = requires_grad

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
        """The same data, cut off from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, value=True):
        self.requires_grad = value
        return self

    def zero_grad(self):
        self.grad = None

    # ------------------------------------------------------------ array facts

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def device(self):
        """"cpu" or "cuda"."""
        return device_of(self.data)

    def numel(self):
        return int(self.data.size)

    def __len__(self):
        return self.data.shape[0]

    def numpy(self):
        """The data as a NumPy array (copied to the host when it lives on a GPU)."""
        return to_numpy(self.data)

    def item(self):
        """The single value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item: only one-element tensors convert to a number, got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return to_numpy(self.data).tolist()

    def to(self, device=None, dtype=None):
        """A copy on ``device`` ("cpu"/"cuda") and/or with a floating ``dtype``; differentiable."""
        out = self
        if device is not None and normalize_device(device) != self.device:
            out = ops.ToDevice.apply(out, device=normalize_device(device))
        if dtype is not None and np.dtype(dtype) != out.dtype:
            out = ops.Cast.apply(out, dtype=np.dtype(dtype)) if out.requires_grad else \
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

    def _operand(self, other):
        """``other`` as a tensor; a Python number takes this tensor's dtype when that is floating."""
        if isinstance(other, Tensor):
            return other
        if _is_array(other):
            return Tensor(other)
        xp = array_module(self.data)
        if self.data.dtype.type in _FLOATS or isinstance(other, (bool, int, np.integer)):
            return Tensor(xp.asarray(other, dtype=self.data.dtype))
        return Tensor(xp.asarray(other, dtype=np.float32))

    def _binary(self, fn, other, reflected=False):
        """Apply a binary op; an integer operand meeting a floating one takes the floating dtype."""
        a, b = self, self._operand(other)
        if reflected:
            a, b = b, a
        fa, fb = a.dtype.type in _FLOATS, b.dtype.type in _FLOATS
        if fa and not fb:
            b = Tensor(b.data.astype(a.dtype))
        elif fb and not fa:
            a = Tensor(a.data.astype(b.dtype))
        return fn.apply(a, b)

    def __add__(self, other):
        return self._binary(ops.Add, other)

    def __radd__(self, other):
        return self._binary(ops.Add, other, reflected=True)

    def __sub__(self, other):
        return self._binary(ops.Sub, other)

    def __rsub__(self, other):
        return self._binary(ops.Sub, other, reflected=True)

    def __mul__(self, other):
        return self._binary(ops.Mul, other)

    def __rmul__(self, other):
        return self._binary(ops.Mul, other, reflected=True)

    def __truediv__(self, other):
        return self._floating("division")._binary(ops.Div, self._operand(other)._floating("division"))

    def __rtruediv__(self, other):
        return self._floating("division")._binary(ops.Div, self._operand(other)._floating("division"),
                                                  reflected=True)

    def __neg__(self):
        return ops.Neg.apply(self)

    def __pow__(self, other):
        return self._binary(ops.Pow, other)

    def __rpow__(self, other):
        return self._binary(ops.Pow, other, reflected=True)

    def __matmul__(self, other):
        return self._binary(ops.MatMul, other)

    def __rmatmul__(self, other):
        return self._binary(ops.MatMul, other, reflected=True)

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        return ops.GetItem.apply(self, index=index)

    # comparisons give boolean tensors outside the graph
    def _compare(self, other, op):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor(op(self.data, other))

    def __eq__(self, other):
        return self._compare(other, lambda a, b: a == b)

    def __ne__(self, other):
        return self._compare(other, lambda a, b: a != b)

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    __hash__ = object.__hash__

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous")
        return bool(self.data.reshape(()))

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    # ------------------------------------------------------------ methods

    def _floating(self, what):
        """This tensor, or a float32 copy of an integer one (as ``/`` does in PyTorch)."""
        if self.data.dtype.type in _FLOATS:
            return self
        if what == "division":
            return Tensor(self.data.astype(np.float32))
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

    def flatten(self, start_dim=0):
        return self.reshape(self.shape[:start_dim] + (-1,))

    def permute(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if sorted(a % self.ndim for a in axes) != list(range(self.ndim)):
            raise ValueError(f"permute: {axes} is not a permutation of the {self.ndim} axes of shape {self.shape}")
        return ops.Permute.apply(self, axes=tuple(a % self.ndim for a in axes))

    def transpose(self, dim0=None, dim1=None):
        """Swap two axes (PyTorch style), or reverse all axes when none are given (NumPy style)."""
        if dim0 is None:
            return self.permute(tuple(reversed(range(self.ndim))))
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return self.permute(axes)

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


def _shape(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape


def zeros(*shape, dtype=np.float32, requires_grad=False):
    return Tensor(np.zeros(_shape(shape), dtype=dtype), requires_grad=requires_grad)


def ones(*shape, dtype=np.float32, requires_grad=False):
    return Tensor(np.ones(_shape(shape), dtype=dtype), requires_grad=requires_grad)


def full(shape, value, dtype=np.float32, requires_grad=False):
    return Tensor(np.full(shape, value, dtype=dtype), requires_grad=requires_grad)


def zeros_like(t, requires_grad=False):
    return Tensor(array_module(t.data).zeros_like(t.data), requires_grad=requires_grad)


def ones_like(t, requires_grad=False):
    return Tensor(array_module(t.data).ones_like(t.data), requires_grad=requires_grad)


def randn(*shape, dtype=np.float32, requires_grad=False, rng=None):
    """Standard normal samples from ``rng`` (a numpy Generator) or the one ``manual_seed`` sets."""
    rng = _rng.generator() if rng is None else rng
    return Tensor(rng.standard_normal(_shape(shape)).astype(dtype), requires_grad=requires_grad)


def rand(*shape, dtype=np.float32, requires_grad=False, rng=None):
    """Uniform samples in [0, 1)."""
    rng = _rng.generator() if rng is None else rng
    return Tensor(rng.random(_shape(shape)).astype(dtype), requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype=None):
    """Evenly spaced values as in ``numpy.arange``; integers stay int64, floats become float32."""
    arr = np.arange(start, stop, step) if stop is not None else np.arange(start)
    if dtype is None:
        dtype = np.float32 if arr.dtype.kind == "f" else np.int64
    return Tensor(arr.astype(dtype))
