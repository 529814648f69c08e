"""The elementary tensor ops behind Tensor's operators, each a Function.

Binary ops broadcast like NumPy; their backward sums the gradient back over
the broadcast axes (``unbroadcast``) so every input gets a gradient of its
own shape.

``saved_inputs`` and ``saves_output`` say what each backward reads, so that
backward refuses to run after one of those tensors changed in place (see autograd).
"""
import numpy as np

from .autograd import Function
from .backend import array_module, device_of, to_device
from .errors import DimError, IndexShapeError, ShapeError


def dim(op, d, shape):
    """``d`` as an axis of an array of ``shape`` (negative counts from the end), or PyTorch's IndexError.

    A 0-d array takes 0 and -1, as in PyTorch, and gives None: it has no axis to name.
    """
    ndim = len(shape)
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
        raise TypeError(f"{op}: dim must be an int, got {type(d).__name__} {d!r}")
    low, high = (-ndim, ndim - 1) if ndim else (-1, 0)
    if not low <= d <= high:
        raise DimError(f"dimension out of range (expected to be in range of [{low}, {high}], but got {d}) "
                       f"for an input of shape {tuple(shape)}", op=op)
    return int(d) % ndim if ndim else None


def dims(op, axis, shape):
    """The sorted axes that ``axis`` (an int, a sequence of them, or None for all) names, each checked."""
    if axis is None:
        return tuple(range(len(shape)))
    given = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    axes = [a for a in (dim(op, d, shape) for d in given) if a is not None]
    repeated = [a for a in axes if axes.count(a) > 1]
    if repeated:
        raise ShapeError(f"dim {repeated[0]} appears multiple times in the list of dims {given}", op=op)
    return tuple(sorted(axes))


def flat_shape(op, shape, start_dim, end_dim):
    """``shape`` with the axes start_dim..end_dim merged into one, as torch.flatten (0-d gives (1,))."""
    start, end = dim(op, start_dim, shape), dim(op, end_dim, shape)
    if not shape:
        return (1,)
    if start > end:
        raise ShapeError(f"start_dim cannot come after end_dim, got start_dim {start_dim} and end_dim "
                         f"{end_dim} for shape {shape}", op=op)
    return shape[:start] + (int(np.prod(shape[start:end + 1])),) + shape[end + 1:]


def broadcast_shape(op, a, b):
    """The shape that shapes ``a`` and ``b`` broadcast to, or a ShapeError naming the op, both and the dim."""
    try:
        return np.broadcast_shapes(a, b)
    except ValueError:
        a, b = tuple(a), tuple(b)
        n = max(len(a), len(b))
        pa, pb = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
        d = max(i for i in range(n) if pa[i] != pb[i] and 1 not in (pa[i], pb[i]))
        raise ShapeError(f"shapes {a} and {b} do not broadcast: sizes {pa[d]} and {pb[d]} at dim {d - n} "
                         "(aligned from the right, sizes must be equal or 1)", op=op) from None


class Broadcasting(Function):
    """A Function of two arrays that broadcast as NumPy's do (``op`` names it in errors).

    Shapes that do not broadcast raise a ShapeError naming the op and both shapes, which a layer then
    labels; NumPy's own ValueError names neither. The check costs nothing until NumPy refuses.
    """

    op = None

    @classmethod
    def apply(cls, a, b, **params):
        try:
            return super().apply(a, b, **params)
        except ShapeError:
            raise
        except ValueError:
            broadcast_shape(cls.op, a.shape, b.shape)  # raises, unless NumPy's complaint was another one
            raise


def _permutation(axes, shape):
    """``axes`` checked to be a permutation of the axes of ``shape`` (negative ones count from the end)."""
    if len(axes) != len(shape):
        raise ShapeError(f"expected {len(shape)} dims for a tensor of shape {shape}, got {axes}", op="permute")
    checked = tuple(dim("permute", d, shape) for d in axes)
    if len(set(checked)) != len(checked):
        raise ShapeError(f"duplicate dims are not allowed, got {axes} (shape {shape})", op="permute")
    return checked


def _reshape_target(shape, x):
    """``shape`` checked against x as PyTorch checks it: ints, at most one -1, the same number of elements."""
    for i, n in enumerate(shape):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"reshape: shape must hold ints, got {type(n).__name__} {n!r} in {shape}")
        if n < -1:
            raise ShapeError(f"invalid shape dimension {n} at index {i} of shape {shape}", op="reshape")
    known, inferred = int(np.prod([n for n in shape if n != -1])), list(shape).count(-1)
    if inferred > 1:
        raise ShapeError(f"only one dimension can be inferred, got shape {shape}", op="reshape")
    if (inferred and (known == 0 or x.size % known)) or (not inferred and known != x.size):
        raise ShapeError(f"shape {shape} is invalid for an input of shape {x.shape} ({x.size} elements)",
                         op="reshape")
    return shape


def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched, giving ``shape``."""
    # BEGIN EXERCISE autograd.unbroadcast
    # HINT: broadcasting adds leading axes and stretches axes of length 1: sum over the added axes,
    # HINT: then over the stretched ones with keepdims=True; return grad itself when nothing was broadcast.
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad
    # END EXERCISE


# ---------------------------------------------------------------- arithmetic

class Add(Broadcasting):
    """y = a + b;  da = dy, db = dy (summed over broadcast axes)."""

    op, saved_inputs = "add", ()

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, grad):
        return unbroadcast(grad, self.shapes[0]), unbroadcast(grad, self.shapes[1])


class Sub(Broadcasting):
    """y = a - b;  da = dy, db = -dy."""

    op, saved_inputs = "sub", ()

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, grad):
        db = -unbroadcast(grad, self.shapes[1]) if self.needs_input_grad[1] else None
        return unbroadcast(grad, self.shapes[0]), db


class Mul(Broadcasting):
    """y = a * b;  da = dy * b, db = dy * a."""

    op = "mul"

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, grad):
        da = unbroadcast(grad * self.b, self.a.shape) if self.needs_input_grad[0] else None
        db = unbroadcast(grad * self.a, self.b.shape) if self.needs_input_grad[1] else None
        return da, db


class Div(Broadcasting):
    """y = a / b;  da = dy / b, db = -dy * a / b^2."""

    op = "div"

    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, grad):
        da = unbroadcast(grad / self.b, self.a.shape) if self.needs_input_grad[0] else None
        db = (unbroadcast(-grad * self.a / (self.b * self.b), self.b.shape)
              if self.needs_input_grad[1] else None)
        return da, db


class Neg(Function):
    """y = -x;  dx = -dy."""

    saved_inputs = ()

    def forward(self, x):
        return -x

    def backward(self, grad):
        return -grad


class Pow(Broadcasting):
    """y = a ** b;  da = dy * b * a^(b-1), db = dy * a^b * log(a)."""

    op, saves_output = "pow", True

    def forward(self, a, b):
        self.a, self.b = a, b
        self.y = a ** b
        return self.y

    def backward(self, grad):
        xp = array_module(grad)
        da = db = None
        if self.needs_input_grad[0]:
            da = unbroadcast(grad * self.b * self.a ** (self.b - 1), self.a.shape)
        if self.needs_input_grad[1]:
            log_a = xp.where(self.a > 0, xp.log(xp.where(self.a > 0, self.a, 1)), 0)  # log never sees a <= 0
            db = unbroadcast(grad * self.y * log_a.astype(grad.dtype), self.b.shape)
        return da, db


class MatMul(Function):
    """y = a @ b;  da = dy @ b^T, db = a^T @ dy (batched and broadcast like NumPy)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        try:
            return a @ b
        except ValueError:  # NumPy's words name its gufunc signature, not the shapes
            raise ShapeError(f"shapes {a.shape} and {b.shape} cannot be multiplied", op="matmul") from None

    def backward(self, grad):
        # BEGIN EXERCISE autograd.matmul_backward
        # HINT: return (da, db), each of its operand's shape (None where needs_input_grad says no grad is wanted);
        # HINT: the last two axes are a matrix product; the leading ones broadcast (unbroadcast them);
        # HINT: a 1-D operand is a row (a) or a column (b) whose axis the output dropped.
        a = self.a if self.a.ndim > 1 else self.a[None, :]
        b = self.b if self.b.ndim > 1 else self.b[:, None]
        # with a 1-D operand the output lost an axis; give it back so the GEMMs line up
        g = grad.reshape(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]))
        da = db = None
        if self.needs_input_grad[0]:
            da = unbroadcast(g @ b.swapaxes(-1, -2), a.shape).reshape(self.a.shape)
        if self.needs_input_grad[1]:
            db = unbroadcast(a.swapaxes(-1, -2) @ g, b.shape).reshape(self.b.shape)
        return da, db
        # END EXERCISE


# ---------------------------------------------------------------- elementwise functions

class Exp(Function):
    """y = exp(x);  dx = dy * y."""

    saved_inputs, saves_output = (), True

    def forward(self, x):
        self.y = array_module(x).exp(x)
        return self.y

    def backward(self, grad):
        return grad * self.y


class Log(Function):
    """y = log(x);  dx = dy / x."""

    def forward(self, x):
        self.x = x
        return array_module(x).log(x)

    def backward(self, grad):
        return grad / self.x


class Sqrt(Function):
    """y = sqrt(x);  dx = dy / (2 y)."""

    saved_inputs, saves_output = (), True

    def forward(self, x):
        self.y = array_module(x).sqrt(x)
        return self.y

    def backward(self, grad):
        return grad / (2 * self.y)


class Relu(Function):
    """y = max(x, 0);  dx = dy where x > 0, else 0."""

    saved_inputs, saves_output = (), True

    def forward(self, x):
        self.y = array_module(x).maximum(x, 0)
        return self.y

    def backward(self, grad):
        return grad * (self.y > 0)


class Sigmoid(Function):
    """y = 1 / (1 + exp(-x));  dx = dy * y * (1 - y)."""

    saved_inputs, saves_output = (), True

    def forward(self, x):
        xp = array_module(x)
        self.y = xp.exp(-xp.logaddexp(0, -x)).astype(x.dtype, copy=False)  # no overflow for large |x|
        return self.y

    def backward(self, grad):
        return grad * self.y * (1 - self.y)


# ---------------------------------------------------------------- reductions

def _expand(grad, axes, keepdims):
    """Put back the reduced axes (as size 1) so ``grad`` broadcasts against the input."""
    if keepdims or not axes:
        return grad
    xp = array_module(grad)
    return xp.expand_dims(grad, axes)


class Sum(Function):
    """y = sum(x, axis);  dx = dy broadcast back over the summed axes."""

    saved_inputs = ()

    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = x.shape, dims("sum", axis, x.shape), keepdims
        return x.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, grad):
        xp = array_module(grad)
        return xp.broadcast_to(_expand(grad, self.axes, self.keepdims), self.shape).copy()


class Mean(Function):
    """y = mean(x, axis);  dx = dy / n broadcast back, n the number of averaged elements."""

    saved_inputs = ()

    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = x.shape, dims("mean", axis, x.shape), keepdims
        self.count = 1
        for a in self.axes:
            self.count *= x.shape[a]
        return x.mean(axis=self.axes, keepdims=keepdims)

    def backward(self, grad):
        xp = array_module(grad)
        g = _expand(grad, self.axes, self.keepdims) / grad.dtype.type(self.count)
        return xp.broadcast_to(g, self.shape).copy()


class Max(Function):
    """y = max(x, axis);  dx = dy at the maxima, shared evenly between ties (like torch.amax)."""

    saved_inputs, saves_output = (0,), True  # the output views self.y

    def forward(self, x, axis=None, keepdims=False):
        self.x, self.axes, self.keepdims = x, dims("max", axis, x.shape), keepdims
        if any(x.shape[a] == 0 for a in self.axes):
            raise ShapeError(f"cannot take the maximum over an empty dim (input shape {x.shape}, "
                             f"dims {self.axes})", op="max")
        self.y = x.max(axis=self.axes, keepdims=True)
        return self.y if keepdims else self.y.reshape([n for i, n in enumerate(x.shape)
                                                      if i not in self.axes])

    def backward(self, grad):
        mask = (self.x == self.y).astype(grad.dtype)
        mask /= mask.sum(axis=self.axes, keepdims=True)
        return _expand(grad, self.axes, self.keepdims) * mask


# ---------------------------------------------------------------- shape

class Reshape(Function):
    """y = x viewed with a new shape;  dx = dy viewed with the old one."""

    saved_inputs = ()

    def forward(self, x, shape):
        self.shape = x.shape
        return x.reshape(_reshape_target(shape, x))

    def backward(self, grad):
        return grad.reshape(self.shape)


class Permute(Function):
    """y = x with its axes reordered;  dx = dy with the inverse order."""

    saved_inputs = ()

    def forward(self, x, axes):
        axes = _permutation(axes, x.shape)
        self.inverse = tuple(sorted(range(len(axes)), key=lambda i: axes[i]))
        return x.transpose(axes)

    def backward(self, grad):
        return grad.transpose(self.inverse)


def _well_typed(index):
    """True if ``index`` holds only ints, bools, slices, Ellipsis, None and integer or boolean arrays or lists."""
    for part in index if isinstance(index, tuple) else (index,):
        if isinstance(part, list):
            try:
                part = np.asarray(part)
            except ValueError:  # a ragged list
                return False
        if hasattr(part, "dtype") and hasattr(part, "shape"):  # an array (NumPy or CuPy) or a NumPy scalar
            if part.dtype.kind not in "biu":
                return False
        elif not (part is None or part is Ellipsis or isinstance(part, (int, slice))):
            return False
    return True


class GetItem(Function):
    """y = x[index];  dx = zeros with dy scattered (added) back at index."""

    saved_inputs = ()

    def forward(self, x, index):
        self.shape, self.dtype, self.index = x.shape, x.dtype, index
        try:
            return x[index]
        except IndexError as exc:  # a ShapeError too where the index is well typed but does not fit x
            kind = IndexShapeError if _well_typed(index) else IndexError
            what = f"{exc} (tensor of shape {x.shape}, index {index!r:.80})"
            raise (kind(what, op="getitem") if kind is IndexShapeError else kind(f"getitem: {what}")) from None

    def backward(self, grad):
        xp = array_module(grad)
        dx = xp.zeros(self.shape, dtype=grad.dtype)
        xp.add.at(dx, self.index, grad)  # repeated indices accumulate
        return dx


class ToDevice(Function):
    """y = x copied to another device;  dx = dy copied back."""

    saved_inputs = ()

    def forward(self, x, device):
        self.source = device_of(x)
        return to_device(x, device)

    def backward(self, grad):
        return to_device(grad, self.source)


class Cast(Function):
    """y = x converted to another floating dtype;  dx = dy converted back."""

    saved_inputs = ()

    def forward(self, x, dtype):
        self.source = x.dtype
        return x.astype(dtype)

    def backward(self, grad):
        return grad.astype(self.source)
