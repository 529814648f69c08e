"""Batch norm and the residual add of the Numba CPU backend on channels-last activations.

The direct convolutions (``numba_direct``) hand back channels-last arrays:
NHWC memory seen as (N, C, H, W), as PyTorch's channels_last. Batch norm and
the residual add take them as they lie, so a layer's output reaches the next
convolution without a transpose: ``numba_cpu`` sends every array that lies
channels-last here (``is_channels_last``), with the same arguments and
results as its own kernels. Other arrays among the arguments are first
brought to the deciding array's layout.

In NHWC memory an image is an (N*H*W, C) matrix: a row per pixel, the
channels contiguous. Every kernel walks rows in ``prange`` chunks with an
inner loop over the channels, which LLVM vectorises; per-channel sums are
float64 partial sums per chunk, added at the end.
"""
import numba
import numpy as np
from numba import njit, prange


def is_channels_last(a):
    """True for a 4-D array whose memory is NHWC (and not also NCHW-contiguous)."""
    return (a.ndim == 4 and not a.flags.c_contiguous and a.strides[1] == a.itemsize
            and a.transpose(0, 2, 3, 1).flags.c_contiguous)


def rows(a):
    """The (N*H*W, C) matrix of an NCHW-shaped array in NHWC memory (a copy when it lies otherwise)."""
    n, c, h, w = a.shape
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).reshape(n * h * w, c)


def empty_like(a):
    """An uninitialised (N, C, H, W) array of a's shape and dtype, laid out channels-last."""
    n, c, h, w = a.shape
    return np.empty((n, h, w, c), dtype=a.dtype).transpose(0, 3, 1, 2)


def _chunks(m):
    """Row chunks for prange: a few per thread, so a slow core does not hold up the others."""
    return max(1, min(m, 4 * numba.get_num_threads()))


@njit(cache=True)
def _span(k, chunks, m):
    return k * m // chunks, (k + 1) * m // chunks


@njit(parallel=True, cache=True)
def _sums(x, chunks, center, square, out):
    """out[k, c] = sum over chunk k's rows of x[:, c] (minus ``center``, squared when ``square``), in float64."""
    m, c = x.shape
    for k in prange(chunks):
        lo, hi = _span(k, chunks, m)
        acc = np.zeros(c)
        for p in range(lo, hi):
            row = x[p]
            if square:
                for ch in range(c):
                    d = row[ch] - center[ch]
                    acc[ch] += d * d
            else:
                for ch in range(c):
                    acc[ch] += row[ch]
        out[k] = acc


def batch_norm_stats(x):
    """Per-channel mean and biased variance over (N, H, W), in two passes (as ``numba_cpu``'s)."""
    r = rows(x)
    m, c = r.shape
    chunks = _chunks(m)
    parts = np.empty((chunks, c))
    _sums(r, chunks, np.zeros(c), False, parts)
    mean = parts.sum(axis=0) / m
    _sums(r, chunks, mean, True, parts)
    return mean.astype(x.dtype), (parts.sum(axis=0) / m).astype(x.dtype)


@njit(parallel=True, cache=True)
def _affine(x, scale, shift, chunks, y):
    """y[p, c] = x[p, c] * scale[c] + shift[c]."""
    m, c = x.shape
    for k in prange(chunks):
        lo, hi = _span(k, chunks, m)
        for p in range(lo, hi):
            src, dst = x[p], y[p]
            for ch in range(c):
                dst[ch] = src[ch] * scale[ch] + shift[ch]


def batch_norm_forward(x, scale, shift):
    """y = x * scale + shift per channel; y comes back channels-last."""
    r = rows(x)
    y = empty_like(x)
    _affine(r, scale.astype(x.dtype), shift.astype(x.dtype), _chunks(r.shape[0]), rows(y))
    return y


@njit(parallel=True, cache=True)
def _grad_sums(dy, x, mean, invstd, chunks, out):
    """out[k, 0, c] = sum(dy[:, c]), out[k, 1, c] = sum(dy * (x - mean) * invstd) over chunk k's rows, float64."""
    m, c = x.shape
    for k in prange(chunks):
        lo, hi = _span(k, chunks, m)
        s0 = np.zeros(c)
        s1 = np.zeros(c)
        for p in range(lo, hi):
            g, v = dy[p], x[p]
            for ch in range(c):
                s0[ch] += g[ch]
                s1[ch] += g[ch] * ((v[ch] - mean[ch]) * invstd[ch])
        out[k, 0] = s0
        out[k, 1] = s1


def batch_norm_grad_sums(grad_out, x, mean, invstd):
    """(dbias, dweight) = (sum(dy), sum(dy * xhat)) per channel, xhat = (x - mean) * invstd."""
    r = rows(x)
    m, c = r.shape
    chunks = _chunks(m)
    parts = np.empty((chunks, 2, c))
    _grad_sums(rows(grad_out), r, mean.astype(x.dtype), invstd.astype(x.dtype), chunks, parts)
    total = parts.sum(axis=0).astype(x.dtype)
    return total[0], total[1]


@njit(parallel=True, cache=True)
def _bn_dx(dy, x, mean, invstd, scale, mean_dy, mean_dy_xhat, chunks, dx):
    """dx = (dy - mean(dy) - xhat * mean(dy * xhat)) * scale, per channel."""
    m, c = x.shape
    for k in prange(chunks):
        lo, hi = _span(k, chunks, m)
        for p in range(lo, hi):
            g, v, d = dy[p], x[p], dx[p]
            for ch in range(c):
                d[ch] = (g[ch] - mean_dy[ch] - (v[ch] - mean[ch]) * invstd[ch] * mean_dy_xhat[ch]) * scale[ch]


def batch_norm_backward_input(grad_out, x, mean, invstd, scale, dbias, dweight):
    """dx = scale * (dy - dbias / M - xhat * dweight / M), M = N*H*W; dx comes back channels-last."""
    r = rows(x)
    dtype, m = x.dtype, r.shape[0]
    dx = empty_like(x)
    _bn_dx(rows(grad_out), r, mean.astype(dtype), invstd.astype(dtype), scale.astype(dtype),
           dbias.astype(dtype) / dtype.type(m), dweight.astype(dtype) / dtype.type(m), _chunks(m), rows(dx))
    return dx


@njit(parallel=True, cache=True)
def _add(f, s, relu, chunks, y):
    """y = relu(f + s) (or f + s) over flat arrays."""
    m = y.size
    for k in prange(chunks):
        lo, hi = _span(k, chunks, m)
        a, b, out = f[lo:hi], s[lo:hi], y[lo:hi]  # indexed by the loop counter: no wraparound test, vectorised
        for q in range(hi - lo):
            v = a[q] + b[q]
            out[q] = 0 if relu and v < 0 else v


def residual_add_forward(f, s, relu):
    """y = relu(f + s) (or f + s); y comes back channels-last."""
    y = empty_like(f)
    _add(rows(f).reshape(-1), rows(s).reshape(-1), bool(relu), _chunks(f.size // 4096 + 1), rows(y).reshape(-1))
    return y


@njit(parallel=True, cache=True)
def _mask(grad, y, chunks, g):
    """g = dy * (y > 0) over flat arrays."""
    m = g.size
    for k in prange(chunks):
        lo, hi = _span(k, chunks, m)
        d, v, out = grad[lo:hi], y[lo:hi], g[lo:hi]
        for q in range(hi - lo):
            out[q] = d[q] if v[q] > 0 else 0


def residual_add_backward(grad_out, y, relu):
    """(g, g) with g = dy * (y > 0) (or dy): into the residual branch and into the shortcut."""
    if not relu:
        return grad_out, grad_out
    g = empty_like(y)
    _mask(rows(grad_out).reshape(-1), rows(y).reshape(-1), _chunks(y.size // 4096 + 1), rows(g).reshape(-1))
    return g, g
