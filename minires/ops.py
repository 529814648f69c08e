"""The elementary tensor ops behind Tensor's operators, each a Function.

Binary ops broadcast like NumPy; their backward sums the gradient back over
the broadcast axes (``unbroadcast``) so every input gets a gradient of its
own shape.
"""
import numpy as np

from .autograd import Function
from .backend import array_module, device_of, to_device


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

class Add(Function):
    """y = a + b;  da = dy, db = dy (summed over broadcast axes)."""

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, grad):
        return unbroadcast(grad, self.shapes[0]), unbroadcast(grad, self.shapes[1])


class Sub(Function):
    """y = a - b;  da = dy, db = -dy."""

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, grad):
        db = -unbroadcast(grad, self.shapes[1]) if self.needs_input_grad[1] else None
        return unbroadcast(grad, self.shapes[0]), db


class Mul(Function):
    """y = a * b;  da = dy * b, db = dy * a."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, grad):
        da = unbroadcast(grad * self.b, self.a.shape) if self.needs_input_grad[0] else None
        db = unbroadcast(grad * self.a, self.b.shape) if self.needs_input_grad[1] else None
        return da, db


class Div(Function):
    """y = a / b;  da = dy / b, db = -dy * a / b^2."""

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

    def forward(self, x):
        return -x

    def backward(self, grad):
        return -grad


class Pow(Function):
    """y = a ** b;  da = dy * b * a^(b-1), db = dy * a^b * log(a)."""

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
        return a @ b

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

    def forward(self, x):
        self.y = array_module(x).sqrt(x)
        return self.y

    def backward(self, grad):
        return grad / (2 * self.y)


class Relu(Function):
    """y = max(x, 0);  dx = dy where x > 0, else 0."""

    def forward(self, x):
        self.y = array_module(x).maximum(x, 0)
        return self.y

    def backward(self, grad):
        return grad * (self.y > 0)


class Sigmoid(Function):
    """y = 1 / (1 + exp(-x));  dx = dy * y * (1 - y)."""

    def forward(self, x):
        xp = array_module(x)
        self.y = xp.exp(-xp.logaddexp(0, -x)).astype(x.dtype, copy=False)  # no overflow for large |x|
        return self.y

    def backward(self, grad):
        return grad * self.y * (1 - self.y)


# ---------------------------------------------------------------- reductions

def _normalize_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim if ndim else 0 for a in axes))


def _expand(grad, axes, keepdims):
    """Put back the reduced axes (as size 1) so ``grad`` broadcasts against the input."""
    if keepdims or not axes:
        return grad
    xp = array_module(grad)
    return xp.expand_dims(grad, axes)


class Sum(Function):
    """y = sum(x, axis);  dx = dy broadcast back over the summed axes."""

    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = x.shape, _normalize_axis(axis, x.ndim), keepdims
        return x.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, grad):
        xp = array_module(grad)
        return xp.broadcast_to(_expand(grad, self.axes, self.keepdims), self.shape).copy()


class Mean(Function):
    """y = mean(x, axis);  dx = dy / n broadcast back, n the number of averaged elements."""

    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = x.shape, _normalize_axis(axis, x.ndim), keepdims
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

    def forward(self, x, axis=None, keepdims=False):
        self.x, self.axes, self.keepdims = x, _normalize_axis(axis, x.ndim), keepdims
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

    def forward(self, x, shape):
        self.shape = x.shape
        return x.reshape(shape)

    def backward(self, grad):
        return grad.reshape(self.shape)


class Permute(Function):
    """y = x with its axes reordered;  dx = dy with the inverse order."""

    def forward(self, x, axes):
        self.inverse = tuple(sorted(range(len(axes)), key=lambda i: axes[i]))
        return x.transpose(axes)

    def backward(self, grad):
        return grad.transpose(self.inverse)


class GetItem(Function):
    """y = x[index];  dx = zeros with dy scattered (added) back at index."""

    def forward(self, x, index):
        self.shape, self.dtype, self.index = x.shape, x.dtype, index
        return x[index]

    def backward(self, grad):
        xp = array_module(grad)
        dx = xp.zeros(self.shape, dtype=grad.dtype)
        xp.add.at(dx, self.index, grad)  # repeated indices accumulate
        return dx


class ToDevice(Function):
    """y = x copied to another device;  dx = dy copied back."""

    def forward(self, x, device):
        self.source = device_of(x)
        return to_device(x, device)

    def backward(self, grad):
        return to_device(grad, self.source)


class Cast(Function):
    """y = x converted to another floating dtype;  dx = dy converted back."""

    def forward(self, x, dtype):
        self.source = x.dtype
        return x.astype(dtype)

    def backward(self, grad):
        return grad.astype(self.source)
