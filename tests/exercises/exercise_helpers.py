"""Oracles and checks shared by the exercise tests.

Every expected value here is computed independently of the code under test:
by direct loops over indices, by finite differences in float64 of a
loss projected on a fixed random tensor, or by PyTorch where it is installed.
The checks fail with a message a student can act on: which call, which
shape, which element, expected against got.
"""
import itertools

import numpy as np
import pytest


# ---------------------------------------------------------------- checks

def _fmt(v):
    return f"{v:.6g}" if np.isscalar(v) or np.ndim(v) == 0 else repr(v)


def check_array(got, want, what, rtol=1e-5, atol=1e-6, dtype=None):
    """Fail unless ``got`` is an array of ``want``'s shape (and ``dtype``) with close values."""
    if got is None:
        pytest.fail(f"{what}: got None, expected an array of shape {np.shape(want)}", pytrace=False)
    if not hasattr(got, "shape"):
        pytest.fail(f"{what}: got a {type(got).__name__}, expected an array of shape {np.shape(want)}",
                    pytrace=False)
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        pytest.fail(f"{what}: got shape {got.shape}, expected {want.shape}", pytrace=False)
    if dtype is not None and got.dtype != dtype:
        pytest.fail(f"{what}: got dtype {got.dtype}, expected {np.dtype(dtype)} (keep the input's dtype)",
                    pytrace=False)
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    bad = ~np.isclose(g64, w64, rtol=rtol, atol=atol)
    bad |= np.isnan(g64) != np.isnan(w64)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        err = np.nanmax(np.abs(g64 - w64)) if np.isfinite(g64).all() else float("nan")
        pytest.fail(f"{what}: {int(bad.sum())} of {bad.size} elements are wrong; the first at index {first}: "
                    f"expected {_fmt(want[first])}, got {_fmt(got[first])} (largest error {err:.3g})",
                    pytrace=False)


def check_unchanged(array, copy, what):
    """Fail if ``array`` was modified (it must equal ``copy``, taken before the call)."""
    if not np.array_equal(array, copy):
        first = tuple(int(i) for i in np.argwhere(array != copy)[0])
        pytest.fail(f"{what} was changed in place: at index {first} it held {_fmt(copy[first])} and now holds "
                    f"{_fmt(array[first])}", pytrace=False)


def numerical_gradient(f, x, eps=1e-6):
    """The gradient of scalar f at float64 array x by central differences (x is restored)."""
    grad = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        up = f()
        x[idx] = old - eps
        down = f()
        x[idx] = old
        grad[idx] = (up - down) / (2 * eps)
    return grad


# ---------------------------------------------------------------- loop oracles

def out_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def im2col_loop(x, kh, kw, stride, padding):
    """cols[(c, i, j), (n, oy, ox)] = x[n, c, oy*sh + i - ph, ox*sw + j - pw] (0 outside), one element at a time."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    cols = np.zeros((c * kh * kw, n * oh * ow), dtype=x.dtype)
    for ci, i, j in itertools.product(range(c), range(kh), range(kw)):
        row = (ci * kh + i) * kw + j
        for b, oy, ox in itertools.product(range(n), range(oh), range(ow)):
            iy, ix = oy * sh + i - ph, ox * sw + j - pw
            if 0 <= iy < h and 0 <= ix < w:
                cols[row, (b * oh + oy) * ow + ox] = x[b, ci, iy, ix]
    return cols


def col2im_loop(cols, x_shape, kh, kw, stride, padding):
    """Every column entry added back onto the pixel it was read from (entries read from the padding dropped)."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x_shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    x = np.zeros(x_shape, dtype=np.float64)
    for ci, i, j in itertools.product(range(c), range(kh), range(kw)):
        row = (ci * kh + i) * kw + j
        for b, oy, ox in itertools.product(range(n), range(oh), range(ow)):
            iy, ix = oy * sh + i - ph, ox * sw + j - pw
            if 0 <= iy < h and 0 <= ix < w:
                x[b, ci, iy, ix] += cols[row, (b * oh + oy) * ow + ox]
    return x.astype(cols.dtype)


def conv2d_loop(x, weight, stride, padding):
    """y[n, o, oy, ox] = sum over c, i, j of weight[o, c, i, j] * padded x[n, c, oy*sh + i, ox*sw + j], in float64."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + w] = x
    y = np.zeros((n, o, oh, ow))
    w64 = weight.astype(np.float64)
    for b, oc, oy, ox in itertools.product(range(n), range(o), range(oh), range(ow)):
        y[b, oc, oy, ox] = np.sum(w64[oc] * xp[b, :, oy * sh:oy * sh + kh, ox * sw:ox * sw + kw])
    return y


def conv2d_input_grad_loop(grad_out, weight, x_shape, stride, padding):
    """dx[n, c, iy, ix] = sum of weight[o, c, i, j] * dy[n, o, oy, ox] over every (o, oy, ox, i, j) that read it."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x_shape
    o, _, kh, kw = weight.shape
    _, _, oh, ow = grad_out.shape
    dx = np.zeros(x_shape)
    for b, oc, oy, ox, i, j in itertools.product(range(n), range(o), range(oh), range(ow), range(kh), range(kw)):
        iy, ix = oy * sh + i - ph, ox * sw + j - pw
        if 0 <= iy < h and 0 <= ix < w:
            dx[b, :, iy, ix] += weight[oc, :, i, j] * grad_out[b, oc, oy, ox]
    return dx


def conv2d_weight_grad_loop(grad_out, x, weight_shape, stride, padding):
    """dW[o, c, i, j] = sum over n, oy, ox of dy[n, o, oy, ox] * x[n, c, oy*sh + i - ph, ox*sw + j - pw]."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    o, _, kh, kw = weight_shape
    _, _, oh, ow = grad_out.shape
    dw = np.zeros(weight_shape)
    for b, oc, oy, ox, i, j in itertools.product(range(n), range(o), range(oh), range(ow), range(kh), range(kw)):
        iy, ix = oy * sh + i - ph, ox * sw + j - pw
        if 0 <= iy < h and 0 <= ix < w:
            dw[oc, :, i, j] += grad_out[b, oc, oy, ox] * x[b, :, iy, ix]
    return dw


def channel_stats_loop(x):
    """Per-channel mean and biased variance of x (N, C, H, W), by explicit sums in float64."""
    c = x.shape[1]
    mean, var = np.zeros(c), np.zeros(c)
    for ch in range(c):
        values = [float(v) for v in x[:, ch].ravel()]
        mean[ch] = sum(values) / len(values)
        var[ch] = sum((v - mean[ch]) ** 2 for v in values) / len(values)
    return mean, var


def batch_norm_loop(x, mean, invstd, weight, bias):
    """y[n, c, ...] = (x - mean[c]) * invstd[c] * weight[c] + bias[c], channel by channel in float64."""
    y = np.zeros(x.shape)
    for ch in range(x.shape[1]):
        scale = float(invstd[ch]) * (1.0 if weight is None else float(weight[ch]))
        shift = 0.0 if bias is None else float(bias[ch])
        y[:, ch] = (x[:, ch].astype(np.float64) - float(mean[ch])) * scale + shift
    return y


def batch_norm_train_loop(x, weight, bias, eps):
    """Batch norm with the batch's own statistics, in float64: the training-mode forward."""
    mean, var = channel_stats_loop(x)
    return batch_norm_loop(x, mean, 1 / np.sqrt(var + eps), weight, bias)


def unbroadcast_loop(grad, shape):
    """Sum every element of grad into the element of ``shape`` that broadcasting copied it from."""
    out = np.zeros(shape, dtype=np.float64)
    extra = grad.ndim - len(shape)
    for idx in np.ndindex(grad.shape):
        target = tuple(0 if shape[k] == 1 else idx[k + extra] for k in range(len(shape)))
        out[target] += grad[idx]
    return out


# ---------------------------------------------------------------- fake kernel backends

class LoopKernels:
    """The kernel interface, implemented by the loops above: stands in for the backend in layer tests."""

    NAME = "test-loops"

    def __init__(self):
        self.calls = []

    def conv2d_forward(self, x, weight, stride, padding):
        self.calls.append("conv2d_forward")
        return conv2d_loop(x, weight, stride, padding).astype(x.dtype)

    def conv2d_backward_input(self, grad_out, weight, x_shape, stride, padding):
        self.calls.append("conv2d_backward_input")
        return conv2d_input_grad_loop(grad_out, weight, x_shape, stride, padding).astype(grad_out.dtype)

    def conv2d_backward_weight(self, grad_out, x, weight_shape, stride, padding):
        self.calls.append("conv2d_backward_weight")
        return conv2d_weight_grad_loop(grad_out, x, weight_shape, stride, padding).astype(grad_out.dtype)

    def batch_norm_stats(self, x):
        self.calls.append("batch_norm_stats")
        mean, var = channel_stats_loop(x)
        return mean.astype(x.dtype), var.astype(x.dtype)

    def batch_norm_forward(self, x, scale, shift):
        self.calls.append("batch_norm_forward")
        return batch_norm_loop(x, np.zeros(x.shape[1]), scale, None, shift).astype(x.dtype)  # x * scale + shift

    def residual_add_forward(self, f, s, relu):
        self.calls.append("residual_add_forward")
        y = f + s
        return np.where(y > 0, y, 0).astype(f.dtype) if relu else y


def use_loop_kernels(monkeypatch):
    """Route minires.functional's ops to LoopKernels (so a layer test does not depend on other exercises)."""
    import minires.functional as F
    kernels = LoopKernels()
    monkeypatch.setattr(F, "for_array", lambda array: kernels)
    return kernels


def describe_window(kernel, stride, padding):
    return f"kernel {kernel}, stride {stride}, padding {padding}"


WINDOWS = [((3, 3), (1, 1), (1, 1)), ((2, 2), (2, 2), (0, 0)), ((3, 2), (2, 1), (1, 0)), ((1, 1), (2, 2), (0, 0))]
WINDOW_IDS = ["3x3-s1-p1", "2x2-s2", "3x2-s2x1-p1x0", "1x1-s2"]
