"""More of the layers' ops, for code ported from Keras/TensorFlow: padding, leaky ReLU, the NLL loss.

``minires.functional`` re-exports everything here (``F.pad``, ``F.leaky_relu``,
``F.nll_loss``, ``F.check_labels``), so user code never names this module; it
sits one layer below ``functional`` so that ``conv2d`` and the pooling ops can
use ``pad`` for TensorFlow's ``padding='same'``. Each op is one Function,
forward and backward side by side, as in ``functional``.
"""
import numpy as np

from .autograd import Function
from .backend import array_module
from .checks import floating as _floating, same_padding
from .errors import DTypeError, ShapeError
from .tensor import Tensor

PAD_MODES = ("constant", "reflect", "replicate", "circular")


# ---------------------------------------------------------------- padding

def _source_index(n, before, after, mode):
    """For each output position along an axis of length n padded by (before, after): the input it copies."""
    j = np.arange(-before, n + after)
    if mode == "reflect":  # ... 2 1 | 0 1 2 3 | 2 1 ...  (the edge itself is not repeated)
        j = np.abs(j)
        return np.where(j > n - 1, 2 * (n - 1) - j, j)
    if mode == "replicate":  # 0 0 | 0 1 2 3 | 3 3
        return np.clip(j, 0, n - 1)
    return j % n  # circular: 2 3 | 0 1 2 3 | 0 1


class PadFunction(Function):
    """y = x inside a border (a constant, or x's own reflection, edge or wrap; negative pads crop);

    dx = the part of dy where x landed, plus (reflect, replicate, circular) the border cells that copied x.
    """

    saved_inputs = ()

    def forward(self, x, pairs, mode, value):
        xp = array_module(x)
        self.shape, self.pairs, self.mode = x.shape, pairs, mode  # pairs: (before, after) per axis, first axis first
        if mode != "constant":
            self.sources = [_source_index(x.shape[a], b, e, mode) for a, (b, e) in pairs.items()]
            for (axis, _), src in zip(pairs.items(), self.sources):
                x = xp.take(x, xp.asarray(src), axis=axis)
            return x
        out_shape = tuple(n + sum(pairs.get(a, (0, 0))) for a, n in enumerate(x.shape))
        y = xp.full(out_shape, value, dtype=x.dtype)
        y[self._window(out=True)] = x[self._window(out=False)]
        return y

    def _window(self, out):
        """The slices of the output (out=True) and of x (out=False) that hold the same values (constant mode)."""
        index = []
        for a, n in enumerate(self.shape):
            before, after = self.pairs.get(a, (0, 0))
            start, stop = max(-before, 0), n - max(-after, 0)  # the part of x kept (negative pads crop)
            index.append(slice(max(before, 0), max(before, 0) + max(stop - start, 0)) if out else slice(start, stop))
        return tuple(index)

    def backward(self, grad):
        xp = array_module(grad)
        if self.mode == "constant":
            if all(b >= 0 and e >= 0 for b, e in self.pairs.values()):
                return grad[self._window(out=True)]
            dx = xp.zeros(self.shape, dtype=grad.dtype)  # what was cropped gets no gradient
            dx[self._window(out=False)] = grad[self._window(out=True)]
            return dx
        for (axis, (before, _)), src in reversed(list(zip(self.pairs.items(), self.sources))):
            n = self.shape[axis]
            g = xp.moveaxis(grad, axis, 0)
            dx = g[before:before + n].copy()  # the cells x itself filled
            for j in [*range(before), *range(before + n, len(src))]:  # one step per border cell, not per pixel
                dx[src[j]] += g[j]
            grad = xp.moveaxis(dx, 0, axis)
        return grad


def pad(x, pad, mode="constant", value=None):
    """Pad (or, with negative sizes, crop) the last axes of x, as torch.nn.functional.pad.

    ``pad`` lists (before, after) sizes from the last axis backwards:
    ``(left, right)`` pads the width, ``(left, right, top, bottom)`` width and
    height. ``mode`` is 'constant' (``value``, default 0), 'reflect',
    'replicate' or 'circular'; the last three pad the last 1, 2 or 3 axes of a
    tensor with one or two more axes (a batch of images: 4 sizes for 4-D), as in PyTorch.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"pad: input must be a Tensor, got {type(x).__name__}")
    if not isinstance(pad, (tuple, list)) or any(isinstance(p, bool) or not isinstance(p, (int, np.integer))
                                                 for p in pad):
        raise TypeError(f"pad: pad must be a tuple of ints (left, right, top, bottom, ...), got {pad!r}")
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ShapeError(f"pad must hold (before, after) pairs for at most {x.ndim} axes (the input's), "
                         f"got {len(pad)} sizes {tuple(pad)} for input shape {x.shape}", op="pad")
    if mode not in PAD_MODES:
        raise ValueError(f"pad: mode must be one of {', '.join(map(repr, PAD_MODES))}, got {mode!r}")
    k = len(pad) // 2
    pairs = {x.ndim - 1 - i: (int(pad[2 * i]), int(pad[2 * i + 1])) for i in range(k)}
    pairs = dict(sorted(pairs.items()))
    if mode == "constant":
        for axis, (before, after) in pairs.items():
            if x.shape[axis] + before + after < 0:
                raise ShapeError(f"padding ({before}, {after}) of axis {axis} leaves a negative size "
                                 f"(input shape {x.shape})", op="pad")
        value = 0 if value is None else value
        return PadFunction.apply(x, pairs=pairs, mode=mode, value=value)
    if value is not None and value != 0:
        raise ValueError(f"pad: mode {mode!r} takes no value (got {value!r}); only 'constant' does")
    if k > 3 or x.ndim not in (k + 1, k + 2):
        axes = "axis" if k == 1 else "axes"
        raise ShapeError(f"mode {mode!r} with {len(pad)} sizes pads the last {k} {axes} of a {k + 1}-D or "
                         f"{k + 2}-D tensor (and at most 3 axes), got input shape {x.shape}", op="pad")
    for axis, (before, after) in pairs.items():
        n, most = x.shape[axis], max(before, after)
        if min(before, after) < 0:
            raise ValueError(f"pad: negative padding (cropping) is supported in 'constant' mode only, "
                             f"got {tuple(pad)} in mode {mode!r}")
        rule = {"reflect": ("less than", most >= n), "circular": ("at most", most > n),
                "replicate": ("at most", most > 0 and n == 0)}[mode]  # replicate: anything, but not from nothing
        if rule[1]:
            raise ShapeError(f"mode {mode!r} needs padding {rule[0]} the size of the axis it pads, got "
                             f"({before}, {after}) for axis {axis} of input shape {x.shape}", op="pad")
    return PadFunction.apply(x, pairs=pairs, mode=mode, value=0)


def pad_same(op, x, kernel, stride, padding, value=0.0):
    """(x, the symmetric padding the kernels take) for padding 'same' or 'valid'; a pair passes through.

    'same' is TensorFlow's rule at any stride: the output is ceil(H / stride)
    long, the total padding max((out - 1) * stride + kernel - H, 0), split with
    the smaller half at the top/left. The kernels pad both sides by the smaller
    half; an odd total's extra row or column (bottom/right) is padded here with ``value``.
    """
    if not isinstance(padding, str):
        return x, padding
    if padding == "valid":
        return x, (0, 0)
    if min(x.shape[2:]) < 1:
        raise ShapeError(f"padding 'same' needs an input with non-zero height and width, got shape {x.shape}",
                         op=op)
    (top, bottom), (left, right) = (same_padding(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride))
    if bottom > top or right > left:
        x = pad(x, (0, right - left, 0, bottom - top), value=value)
    return x, (top, left)


def same_counts(size, kernel, stride):
    """(oh, ow): how many real pixels (not padding) each window of 'same' pooling covers over (H, W)."""
    counts = []
    for n, k, s in zip(size, kernel, stride):
        before, _ = same_padding(n, k, s)
        starts = np.arange(-(-n // s)) * s - before  # each window's first row in x's coordinates
        counts.append(np.minimum(starts + k, n) - np.maximum(starts, 0))
    return np.outer(*counts)


# ---------------------------------------------------------------- leaky ReLU

class LeakyReLUFunction(Function):
    """y = x where x > 0, else slope * x;  dx = dy where x > 0, else slope * dy."""

    saved_inputs = ()  # only where x was positive

    def forward(self, x, slope):
        xp = array_module(x)
        self.positive, self.slope = x > 0, slope
        return xp.where(self.positive, x, x * x.dtype.type(slope))

    def backward(self, grad):
        xp = array_module(grad)
        return xp.where(self.positive, grad, grad * grad.dtype.type(self.slope))


def leaky_relu(x, negative_slope=0.01, inplace=False):
    """max(x, 0) + negative_slope * min(x, 0), as torch.nn.functional.leaky_relu (Keras' default slope is 0.3).

    ``inplace`` is accepted for ported code; the result is always a new tensor.
    """
    _floating("leaky_relu", input=x)
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float, np.integer, np.floating)):
        raise TypeError(f"leaky_relu: negative_slope must be a number, got {negative_slope!r}")
    return LeakyReLUFunction.apply(x, slope=float(negative_slope))


# ---------------------------------------------------------------- the NLL loss and the label check

class NLLLossFunction(Function):
    """loss = mean_i(-x_i[t_i]) of log-probabilities x;  dx_i = -onehot(t_i) / N (sum: no 1/N)."""

    saved_inputs = (1,)  # the labels

    def forward(self, x, target, reduction, bad=None):
        self.shape, self.reduction, self.bad = x.shape, reduction, bad
        loss, self.target = picked_losses(x, target, reduction, bad)
        return loss

    def backward(self, grad):
        xp = array_module(grad)
        n = self.shape[0]
        scale = grad / grad.dtype.type(max(n, 1)) if self.reduction == "mean" else grad
        share = -scale if self.reduction == "none" else xp.broadcast_to(-scale, (n,))
        if self.bad is not None:
            share = xp.where(self.bad, share.dtype.type(np.nan), share)
        dx = xp.zeros(self.shape, dtype=grad.dtype)
        dx[xp.arange(n), self.target] = share
        return dx, None


def picked_losses(log_probs, target, reduction, bad):
    """(-log_probs[i, target_i] reduced, the labels used): what nll_loss and cross_entropy return.

    ``bad`` marks device labels out of range (see _check_labels): they index
    within range here, and their losses are NaN, so no host sync is needed.
    """
    xp = array_module(log_probs)
    if bad is not None:
        target = target.clip(0, log_probs.shape[1] - 1)
    losses = -log_probs[xp.arange(log_probs.shape[0]), target]
    if bad is not None:
        losses = xp.where(bad, losses.dtype.type(np.nan), losses)
    if reduction == "none":
        return losses, target
    if reduction == "mean" and not losses.size:
        return xp.asarray(xp.nan, dtype=log_probs.dtype), target  # an empty batch's mean, as in PyTorch
    return (losses.sum() if reduction == "sum" else losses.mean()), target


def classification_args(op, scores, target, reduction, what="logits"):
    """Check (N, K) scores against integer labels (N,) and the reduction; returns the labels as a Tensor."""
    _floating(op, **{what: scores})
    if not isinstance(target, Tensor):
        target = Tensor(target)  # a list, a NumPy or a CuPy array: kept on its device
    if target.dtype.kind not in "iu":
        raise DTypeError(f"target must hold integer class labels, got dtype {target.dtype} "
                         f"(shape {target.shape})", op=op)
    if scores.ndim != 2 or target.shape != (scores.shape[0],):
        raise ShapeError(f"expected {what} (N, K) and target (N,), got {what} {scores.shape} and "
                         f"target {target.shape}", op=op)
    if not isinstance(reduction, str) or reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return target


def nll_loss(input, target, reduction="mean"):
    """Negative log-likelihood of log-probabilities (N, K) at integer labels (N,), as torch.nn.functional.nll_loss.

    ``nll_loss(log_softmax(z, 1), t)`` equals ``cross_entropy(z, t)``; the labels are checked the same way.
    """
    target = classification_args("nll_loss", input, target, reduction, what="input")
    bad = _check_labels(target.data, input.shape[1], "nll_loss") if target.size else None
    return NLLLossFunction.apply(input, target, reduction=reduction, bad=bad)


# (op, number of classes, device id) -> (smallest, largest) device label since the last check_labels(), on the device
_pending_labels = {}


def _label_error(classes, low, high, op="cross_entropy"):
    return ValueError(f"{op}: labels must lie in [0, {classes}), got min {low} and max {high}")


def _check_labels(labels, classes, op="cross_entropy"):
    """Check that class labels lie in [0, classes): host labels now, device labels on their device.

    Reading a NumPy array costs nothing, so host labels raise here. Reading a GPU array makes the host
    wait for the GPU, so a device batch's smallest and largest labels stay on the device, folded into
    ``_pending_labels`` until ``check_labels()`` reads them; the returned device flag turns that batch's
    loss and gradient into NaN meanwhile. Returns None for host labels.
    """
    if isinstance(labels, np.ndarray):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise _label_error(classes, low, high, op)
        return None
    xp = array_module(labels)
    low, high = labels.min(), labels.max()
    bad = (low < 0) | (high >= classes)
    key = (op, classes, getattr(getattr(labels, "device", None), "id", None))
    if key in _pending_labels:
        old_low, old_high = _pending_labels[key]
        low, high = xp.minimum(low, old_low), xp.maximum(high, old_high)
    _pending_labels[key] = (low, high)
    return bad


def check_labels():
    """Raise the ValueError that ``cross_entropy`` or ``nll_loss`` defers for GPU labels, if any was out of range.

    GPU labels are checked on the GPU, so a training step never waits for it; this reads those checks
    (one wait), for every ``cross_entropy`` / ``nll_loss`` call since the last ``check_labels()``. Until then a batch
    with a bad label has a NaN loss and NaN gradients. The training loop calls it whenever it reads its
    metrics; code that trains on a GPU by hand can call it as often as it reads its loss.
    """
    pending = dict(_pending_labels)
    _pending_labels.clear()
    for (op, classes, _), (low, high) in pending.items():
        low, high = int(low), int(high)
        if low < 0 or high >= classes:
            raise _label_error(classes, low, high, op)
