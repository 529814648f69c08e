"""The layers' ops: convolution, batch norm, ReLU, pooling, linear, losses, and the residual add.

Each op is one Function subclass (named ``...Function``, so it never reads
like the ``nn`` layer of the same name), forward and backward side by side,
and a function with PyTorch's name and signature that checks its input and
applies it. The heavy lifting (im2col GEMM, pooling windows) is done by the
kernels in ``minires.kernels``, chosen per array. The residual add and the
option-A shortcut live in ``minires.residual``; they are here too, as
``F.residual_add`` and ``F.pad_channels``, so a block reads ``F.residual_add(out, self.shortcut(x))``.
``pad``, ``leaky_relu``, ``nll_loss`` and the label check live in ``minires.functional_extra``
and are here too (``F.pad``); ``padding='same'`` uses its ``pad``.
"""
import numpy as np

from . import ops
from .autograd import Function, increment_version
from .backend import array_module
from .checks import (floating as _floating, ndim as _ndim, pair as _pair, padding as _padding,
                     windows as _windows)
from .errors import ShapeError
from .functional_extra import (_check_labels, _label_error, _pending_labels, check_labels,  # noqa: F401
                               classification_args as _classification_args, leaky_relu, nll_loss, pad,
                               pad_same as _pad_same, picked_losses as _picked_losses,
                               same_counts as _same_counts)
from .kernels import for_array
from .residual import pad_channels, residual_add  # noqa: F401  (F.residual_add: the blocks' join)
from .tensor import Tensor


# ---------------------------------------------------------------- convolution

class Conv2dFunction(Function):
    """y = W * x + b (cross-correlation) as one im2col GEMM.

    dx = col2im(W^T dy), dW = dy im2col(x)^T, db = sum of dy over (N, H, W).
    """

    saved_inputs = (0, 1)  # x and the weight, not the bias

    def forward(self, x, weight, bias, stride, padding):
        self.kernels = for_array(x)
        self.x, self.weight, self.stride, self.padding = x, weight, stride, padding
        self.has_bias = bias is not None
        y = self.kernels.conv2d_forward(x, weight, stride, padding)
        if bias is not None:
            y += bias[None, :, None, None]
        return y

    def backward(self, grad):
        # BEGIN EXERCISE conv.layer_backward
        # HINT: return (dx, dw, db): compute only those that self.needs_input_grad asks for (None for the
        # HINT: others, and for db when there is no bias); the kernels in self.kernels do the heavy part.
        k = self.kernels
        dx = dw = db = None
        if self.needs_input_grad[0]:
            dx = k.conv2d_backward_input(grad, self.weight, self.x.shape, self.stride, self.padding)
        if self.needs_input_grad[1]:
            dw = k.conv2d_backward_weight(grad, self.x, self.weight.shape, self.stride, self.padding)
        if self.has_bias and self.needs_input_grad[2]:
            db = grad.sum(axis=(0, 2, 3))
        return dx, dw, db
        # END EXERCISE


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D convolution of x (N, C, H, W) with weight (O, C, kh, kw), as torch.nn.functional.conv2d.

    ``padding='same'`` keeps H x W at stride 1 (PyTorch's rule); at stride s it gives ceil(H / s) x
    ceil(W / s), padded as TensorFlow does (any odd extra row or column at the bottom/right).
    PyTorch refuses 'same' at a stride over 1; Keras models need it. 'valid' is padding 0.
    """
    _floating("conv2d", input=x, weight=weight, bias=bias)
    _ndim("conv2d", x, (4,))
    _ndim("conv2d", weight, (4,), "weight")
    stride, padding = _pair(stride, "stride", "conv2d", 1), _padding(padding, "conv2d")
    if x.shape[1] != weight.shape[1]:
        raise ShapeError(f"expected {weight.shape[1]} input channels, got {x.shape[1]} "
                         f"(input shape {x.shape}, weight shape {weight.shape})", op="conv2d")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ShapeError(f"bias of shape {bias.shape} does not match {weight.shape[0]} output channels",
                         op="conv2d")
    x, padding = _pad_same("conv2d", x, weight.shape[2:], stride, padding)
    _windows("conv2d", x, weight.shape[2:], stride, padding)
    return Conv2dFunction.apply(x, weight, bias, stride=stride, padding=padding)


# ---------------------------------------------------------------- batch norm

class BatchNormFunction(Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, per channel.

    Training: mean and var are the batch's, so they depend on x and the
    backward has the two extra terms. Eval: the running statistics are
    constants and dx = dy * weight / sqrt(running_var + eps).
    """

    saved_inputs = (0,)  # the weight is read through scale, computed in forward

    def forward(self, x, weight, bias, running_mean, running_var, training, momentum, eps):
        xp = array_module(x)
        self.kernels, self.training = for_array(x), training
        # BEGIN EXERCISE bn.forward
        # HINT: set mean and var, shape (C,): in training the batch's (self.kernels.batch_norm_stats), and
        # HINT: when running_mean/running_var are given, update them in place with momentum, keeping the
        # HINT: unbiased variance (as PyTorch does); in eval the running statistics themselves.
        if training:
            mean, var = self.kernels.batch_norm_stats(x)
            if running_mean is not None:
                m = x.size // x.shape[1]
                running_mean *= 1 - momentum
                running_mean += momentum * mean
                running_var *= 1 - momentum
                running_var += (momentum * m / (m - 1)) * var  # unbiased, as PyTorch keeps it
        else:
            mean, var = running_mean, running_var
        # END EXERCISE
        invstd = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
        mean = mean.astype(x.dtype)
        # (x - mean) * invstd * weight + bias = x * scale + shift, per channel
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        self.x, self.mean, self.invstd, self.scale = x, mean, invstd, scale
        if x.size == 0:  # an empty batch in eval: nothing to normalise (not every kernel takes one)
            return xp.empty_like(x)
        return self.kernels.batch_norm_forward(x, scale, shift)

    def backward(self, grad):
        k, x, mean, invstd = self.kernels, self.x, self.mean, self.invstd
        need_x, need_weight, need_bias = self.needs_input_grad
        if x.size == 0:
            zeros = array_module(grad).zeros_like(self.scale)
            return grad.copy() if need_x else None, zeros if need_weight else None, zeros if need_bias else None
        dx = dweight = dbias = None
        if need_weight or need_bias or (need_x and self.training):
            dbias, dweight = k.batch_norm_grad_sums(grad, x, mean, invstd)
        if need_x and self.training:  # the batch's mean and variance depend on x: two more terms
            dx = k.batch_norm_backward_input(grad, x, mean, invstd, self.scale, dbias, dweight)
        elif need_x:  # the running statistics are constants: dx = dy * scale
            dx = k.batch_norm_forward(grad, self.scale, array_module(grad).zeros_like(self.scale))
        return dx, dweight if need_weight else None, dbias if need_bias else None


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalisation over (N, H, W) per channel, as torch.nn.functional.batch_norm.

    In training the batch statistics normalise and ``running_mean`` /
    ``running_var`` (tensors without grad, or None) are updated in place with
    the unbiased variance; in eval the running statistics normalise.
    """
    _floating("batch_norm", input=x, weight=weight, bias=bias)
    _ndim("batch_norm", x, (2, 4))
    c = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (c,):
            raise ShapeError(f"expected {t.shape[0]} channels, got {c} (input shape {x.shape}, "
                             f"{name} shape {t.shape})", op="batch_norm")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm: eval mode needs running_mean and running_var")
    if training and x.size // max(c, 1) < 2:
        raise ShapeError(f"expected more than 1 value per channel when training, got input shape {x.shape}",
                         op="batch_norm")
    flat = x.ndim == 2
    if flat:
        x = x.reshape(x.shape[0], c, 1, 1)
    y = BatchNormFunction.apply(x, weight, bias,
                        running_mean=None if running_mean is None else running_mean.data,
                        running_var=None if running_var is None else running_var.data,
                        training=training, momentum=momentum, eps=eps)
    for t in (running_mean, running_var) if training else ():
        if t is not None:
            increment_version(t)  # updated in place
    return y.reshape(y.shape[0], c) if flat else y


# ---------------------------------------------------------------- activation

def relu(x):
    """Rectified linear unit, max(x, 0) (its Function, ``ops.Relu``, sits with the other elementwise ops)."""
    _floating("relu", input=x)
    return ops.Relu.apply(x)


def sigmoid(x):
    """The logistic function 1 / (1 + exp(-x)), elementwise (``ops.Sigmoid``); Highway gates use it."""
    _floating("sigmoid", input=x)
    return ops.Sigmoid.apply(x)


# ---------------------------------------------------------------- pooling

class MaxPool2dFunction(Function):
    """y = the maximum of each window;  dx = dy routed to the pixel that won the window."""

    saved_inputs = ()  # only where the maxima were

    def forward(self, x, kernel, stride, padding):
        self.kernels, self.shape = for_array(x), x.shape
        self.kernel, self.stride, self.padding = kernel, stride, padding
        y, self.argmax = self.kernels.max_pool2d_forward(x, kernel, stride, padding)
        return y

    def backward(self, grad):
        return self.kernels.max_pool2d_backward(grad, self.argmax, self.shape, self.kernel,
                                                self.stride, self.padding)


class AvgPool2dFunction(Function):
    """y = the mean of each window (padding counts as zeros);  dx = dy spread evenly over it."""

    saved_inputs = ()

    def forward(self, x, kernel, stride, padding):
        self.kernels, self.shape = for_array(x), x.shape
        self.kernel, self.stride, self.padding = kernel, stride, padding
        return self.kernels.avg_pool2d_forward(x, kernel, stride, padding)

    def backward(self, grad):
        return self.kernels.avg_pool2d_backward(grad, self.shape, self.kernel, self.stride, self.padding)


def _pool_args(op, x, kernel_size, stride, padding, value):
    """(x, kernel, stride, padding): 'same' / 'valid' resolved (x padded with ``value`` where it must be)."""
    _floating(op, input=x)
    _ndim(op, x, (4,))
    kernel = _pair(kernel_size, "kernel_size", op, 1)
    stride = kernel if stride is None else _pair(stride, "stride", op, 1)
    padding = _padding(padding, op)
    if not isinstance(padding, str) and (padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]):
        raise ValueError(f"{op}: padding {padding} must be at most half of the kernel size {kernel}")
    x, padding = _pad_same(op, x, kernel, stride, padding, value)
    _windows(op, x, kernel, stride, padding)
    return x, kernel, stride, padding


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling over kh x kw windows (stride defaults to the kernel size); padding is -inf.

    ``padding='same'`` pads as TensorFlow does (see ``conv2d``), with -inf; 'valid' is padding 0.
    """
    x, kernel, stride, padding = _pool_args("max_pool2d", x, kernel_size, stride, padding, -np.inf)
    return MaxPool2dFunction.apply(x, kernel=kernel, stride=stride, padding=padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Average pooling over kh x kw windows; padded zeros count (count_include_pad=True).

    ``padding='same'`` pads as TensorFlow does and, as TensorFlow does, divides each window by the
    number of real pixels in it (padding not counted); 'valid' is padding 0.
    """
    same = isinstance(padding, str) and padding.lower() == "same"
    size = x.shape[2:] if isinstance(x, Tensor) else None
    x, kernel, stride, padding = _pool_args("avg_pool2d", x, kernel_size, stride, padding, 0.0)
    y = AvgPool2dFunction.apply(x, kernel=kernel, stride=stride, padding=padding)
    counts = _same_counts(size, kernel, stride) if same else None
    if same and (counts < kernel[0] * kernel[1]).any():  # windows over padding: the real pixels' mean
        y = y * Tensor(array_module(y.data).asarray((kernel[0] * kernel[1]) / counts, dtype=y.dtype))
    return y


class AdaptiveAvgPool2dFunction(Function):
    """y[i, j] = the mean of input cell rows [floor(iH/oh), ceil((i+1)H/oh)) x the same for columns.

    dx = each output gradient spread evenly over its cell. With output size 1
    this is global average pooling, the head of every ResNet.
    """

    saved_inputs = ()

    def forward(self, x, output_size):
        xp = array_module(x)
        self.shape = x.shape
        (oh, ow), (h, w) = output_size, x.shape[2:]
        self.cells = [((i * h) // oh, -((-(i + 1) * h) // oh), (j * w) // ow, -((-(j + 1) * w) // ow))
                      for i in range(oh) for j in range(ow)]
        if output_size == (1, 1):
            return x.mean(axis=(2, 3), keepdims=True)
        y = xp.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
        for k, (r0, r1, c0, c1) in enumerate(self.cells):  # one step per output cell
            y[:, :, k // ow, k % ow] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
        return y

    def backward(self, grad):
        xp = array_module(grad)
        ow = grad.shape[3]
        dx = xp.zeros(self.shape, dtype=grad.dtype)
        for k, (r0, r1, c0, c1) in enumerate(self.cells):
            share = grad[:, :, k // ow, k % ow] / grad.dtype.type((r1 - r0) * (c1 - c0))
            dx[:, :, r0:r1, c0:c1] += share[:, :, None, None]
        return dx


def adaptive_avg_pool2d(x, output_size):
    """Average pooling to a fixed output size; ``adaptive_avg_pool2d(x, 1)`` is global average pooling."""
    _floating("adaptive_avg_pool2d", input=x)
    _ndim("adaptive_avg_pool2d", x, (4,))
    size = _pair(output_size, "output_size", "adaptive_avg_pool2d", 1)
    if min(x.shape[2:]) < 1:
        raise ShapeError(f"expected an input with non-zero height and width, got shape {x.shape}",
                         op="adaptive_avg_pool2d")
    return AdaptiveAvgPool2dFunction.apply(x, output_size=size)


# ---------------------------------------------------------------- linear, flatten, concat

class LinearFunction(Function):
    """y = x W^T + b;  dx = dy W, dW = dy^T x, db = sum of dy over the batch."""

    saved_inputs = (0, 1)

    def forward(self, x, weight, bias):
        self.x, self.weight, self.has_bias = x, weight, bias is not None
        y = x @ weight.T
        if bias is not None:
            y += bias
        return y

    def backward(self, grad):
        dx = dw = db = None
        if self.needs_input_grad[0]:
            dx = grad @ self.weight
        if self.needs_input_grad[1]:
            dw = grad.reshape(-1, grad.shape[-1]).T @ self.x.reshape(-1, self.x.shape[-1])
        if self.has_bias and self.needs_input_grad[2]:
            db = grad.reshape(-1, grad.shape[-1]).sum(axis=0)
        return dx, dw, db


def linear(x, weight, bias=None):
    """Affine map x (..., in) -> (..., out) with weight (out, in), as torch.nn.functional.linear."""
    _floating("linear", input=x, weight=weight, bias=bias)
    _ndim("linear", weight, (2,), "weight")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ShapeError(f"expected {weight.shape[1]} input features, got input shape {x.shape} "
                         f"(weight shape {weight.shape})", op="linear")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ShapeError(f"bias of shape {bias.shape} does not match {weight.shape[0]} output features",
                         op="linear")
    return LinearFunction.apply(x, weight, bias)


def flatten(x, start_dim=1, end_dim=-1):
    """Merge the axes from ``start_dim`` to ``end_dim`` into one: (N, C, H, W) -> (N, C*H*W)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"flatten: input must be a Tensor, got {type(x).__name__}")
    return x.reshape(ops.flat_shape("flatten", x.shape, start_dim, end_dim))


class ConcatFunction(Function):
    """y = [x1, x2, ...] joined along an axis;  dx_i = the slice of dy that x_i became."""

    saved_inputs = ()

    def forward(self, *arrays, axis):
        self.axis = axis
        self.bounds = np.cumsum([0] + [a.shape[axis] for a in arrays])
        return array_module(arrays[0]).concatenate(arrays, axis=axis)

    def backward(self, grad):
        index = [slice(None)] * grad.ndim
        parts = []
        for start, stop in zip(self.bounds[:-1], self.bounds[1:]):
            index[self.axis] = slice(start, stop)
            parts.append(grad[tuple(index)])
        return tuple(parts)


def concat(tensors, dim=1):
    """Join tensors along ``dim`` (DenseNet joins features this way instead of adding them)."""
    if isinstance(tensors, Tensor):
        raise TypeError("concat: expected a sequence of tensors, got one Tensor")
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concat: expected at least one tensor")
    _floating("concat", **{f"tensors[{i}]": t for i, t in enumerate(tensors)})
    first = tensors[0].shape
    for i, t in enumerate(tensors):
        if not t.ndim:
            raise ShapeError(f"zero-dimensional tensor (at position {i}) cannot be concatenated", op="concat")
    dim = ops.dim("concat", dim, first)
    for t in tensors:
        if t.ndim != len(first) or t.shape[:dim] + t.shape[dim + 1:] != first[:dim] + first[dim + 1:]:
            shapes = ", ".join(str(u.shape) for u in tensors)
            raise ShapeError(f"all shapes must agree except along dim {dim}, got {shapes}", op="concat")
    return ConcatFunction.apply(*tensors, axis=dim)


cat = concat


# ---------------------------------------------------------------- softmax and the loss

class LogSoftmaxFunction(Function):
    """y = x - logsumexp(x);  dx = dy - softmax(x) * sum(dy)."""

    saved_inputs, saves_output = (), True

    def forward(self, x, axis):
        xp = array_module(x)
        self.axis = axis
        shifted = x - x.max(axis=axis, keepdims=True)  # stable for logits of any size
        self.y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        return self.y

    def backward(self, grad):
        xp = array_module(grad)
        return grad - xp.exp(self.y) * grad.sum(axis=self.axis, keepdims=True)


def log_softmax(x, dim=-1):
    """log(softmax(x)) along ``dim``, computed without overflow."""
    _floating("log_softmax", input=x)
    return LogSoftmaxFunction.apply(x, axis=ops.dim("log_softmax", dim, x.shape))  # a 0-d x: None, all of it


def softmax(x, dim=-1):
    """exp(x) / sum(exp(x)) along ``dim``."""
    _floating("softmax", input=x)
    ops.dim("softmax", dim, x.shape)
    return log_softmax(x, dim).exp()


class CrossEntropyFunction(Function):
    """loss = mean_i(logsumexp(z_i) - z_i[t_i]);  dz_i = (softmax(z_i) - onehot(t_i)) / N."""

    saved_inputs = (1,)  # the labels; the logits are read through the probabilities

    def forward(self, logits, target, reduction, bad=None):
        xp = array_module(logits)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        self.probs, self.reduction, self.bad = xp.exp(log_probs), reduction, bad
        loss, self.target = _picked_losses(log_probs, target, reduction, bad)
        return loss

    def backward(self, grad):
        xp = array_module(grad)
        n = self.probs.shape[0]
        d = self.probs.copy()
        d[xp.arange(n), self.target] -= 1
        if self.bad is not None:
            d = xp.where(self.bad, d.dtype.type(np.nan), d)
        if self.reduction == "none":
            return d * grad[:, None], None
        scale = grad if self.reduction == "sum" else grad / grad.dtype.type(max(n, 1))
        return d * scale, None


def cross_entropy(logits, target, reduction="mean"):
    """Softmax cross-entropy of logits (N, K) against integer class labels (N,): nll_loss(log_softmax(logits))."""
    target = _classification_args("cross_entropy", logits, target, reduction)
    bad = _check_labels(target.data, logits.shape[1]) if target.size else None
    return CrossEntropyFunction.apply(logits, target, reduction=reduction, bad=bad)
