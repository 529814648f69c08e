"""Batch norm and the residual add of the Numba CPU backend on channels-last activations.

The direct convolutions (``numba_direct``) hand back channels-last arrays:
NHWC memory seen as (N, C, H, W), as PyTorch's channels_last. Batch norm and
the residual add take them as they lie, so a layer's output reaches the next
convolution without a transpose: ``numba_cpu`` sends every array that lies
channels-last here (``is_channels_last``), with the same arguments and
results as its own kernels. Other arrays among the arguments are first
brought to the deciding array's layout.

In NHWC memory an image is an (N*H*W, C) matrix: a row per pixel, the
channels contiguous. Every kernel walks chunks of rows on the kernel threads
(``numba_threads``) with an inner loop over the channels, which LLVM
vectorises; per-channel sums are float64 partial sums per chunk, added in
chunk order at the end.
"""
import numpy as np
from numba import njit

from .numba_threads import chunks_for, run


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


@njit(nogil=True, cache=True)
def _sums(chunk, lo, hi, worker, x, shift, out):
    """out[chunk] = (sum(x[:, c] - shift[c]), sum((x[:, c] - shift[c])^2)) over the rows [lo, hi), in float64."""
    c = x.shape[1]
    s1, s2 = out[chunk, 0], out[chunk, 1]
    for ch in range(c):  # loops, not array expressions (each of those would compile a broadcast)
        s1[ch] = 0.0
        s2[ch] = 0.0
    for p in range(lo, hi):
        row = x[p]
        for ch in range(c):
            d = row[ch] - shift[ch]
            s1[ch] += d
            s2[ch] += d * d


def batch_norm_stats(x):
    """Per-channel mean and biased variance over (N, H, W), in one pass over x.

    The sums are of x minus a shift, one of the channel's own values (the
    first pixel's): the one-pass E[d^2] - E[d]^2 then cancels no digits that
    matter, because E[d] is within a few standard deviations of 0 however large
    the mean (``numba_cpu``'s NCHW kernel makes two passes instead).
    """
    r = rows(x)
    m, c = r.shape
    parts = np.empty((chunks_for(m), 2, c))
    shift = r[0].astype(np.float64)
    run(_sums, m, r, shift, parts, chunks=len(parts))  # a chunk's partial sums at parts[chunk]
    total = parts.sum(axis=0) / m
    mean_d = total[0]
    return (shift + mean_d).astype(x.dtype), np.maximum(total[1] - mean_d * mean_d, 0.0).astype(x.dtype)


@njit(nogil=True, cache=True)
def _affine(chunk, lo, hi, worker, x, scale, shift, y):
    """y[p, c] = x[p, c] * scale[c] + shift[c] for the rows p in [lo, hi)."""
    c = x.shape[1]
    for p in range(lo, hi):
        src, dst = x[p], y[p]
        for ch in range(c):
            dst[ch] = src[ch] * scale[ch] + shift[ch]


def batch_norm_forward(x, scale, shift):
    """y = x * scale + shift per channel; y comes back channels-last."""
    r = rows(x)
    y = empty_like(x)
    run(_affine, r.shape[0], r, scale.astype(x.dtype), shift.astype(x.dtype), rows(y))
    return y


@njit(nogil=True, cache=True)
def _grad_sums(chunk, lo, hi, worker, dy, x, mean, invstd, out):
    """out[chunk] = (sum(dy[:, c]), sum(dy * (x - mean) * invstd)) over the rows [lo, hi), float64."""
    c = x.shape[1]
    s0, s1 = out[chunk, 0], out[chunk, 1]
    for ch in range(c):
        s0[ch] = 0.0
        s1[ch] = 0.0
    for p in range(lo, hi):
        g, v = dy[p], x[p]
        for ch in range(c):
            s0[ch] += g[ch]
            s1[ch] += g[ch] * ((v[ch] - mean[ch]) * invstd[ch])


def batch_norm_grad_sums(grad_out, x, mean, invstd):
    """(dbias, dweight) = (sum(dy), sum(dy * xhat)) per channel, xhat = (x - mean) * invstd."""
    r = rows(x)
    m, c = r.shape
    parts = np.empty((chunks_for(m), 2, c))
    run(_grad_sums, m, rows(grad_out), r, mean.astype(x.dtype), invstd.astype(x.dtype), parts,
        chunks=len(parts))
    total = parts.sum(axis=0).astype(x.dtype)
    return total[0], total[1]


@njit(nogil=True, cache=True)
def _bn_dx(chunk, lo, hi, worker, dy, x, mean, invstd, scale, mean_dy, mean_dy_xhat, dx):
    """dx = (dy - mean(dy) - xhat * mean(dy * xhat)) * scale per channel, for the rows [lo, hi)."""
    c = x.shape[1]
    for p in range(lo, hi):
        g, v, d = dy[p], x[p], dx[p]
        for ch in range(c):
            d[ch] = (g[ch] - mean_dy[ch] - (v[ch] - mean[ch]) * invstd[ch] * mean_dy_xhat[ch]) * scale[ch]


def batch_norm_backward_input(grad_out, x, mean, invstd, scale, dbias, dweight):
    """dx = scale * (dy - dbias / M - xhat * dweight / M), M = N*H*W; dx comes back channels-last."""
    r = rows(x)
    dtype, m = x.dtype, r.shape[0]
    dx = empty_like(x)
    run(_bn_dx, m, rows(grad_out), r, mean.astype(dtype), invstd.astype(dtype), scale.astype(dtype),
        dbias.astype(dtype) / dtype.type(m), dweight.astype(dtype) / dtype.type(m), rows(dx))
    return dx


@njit(nogil=True, cache=True)
def _add(chunk, lo, hi, worker, f, s, relu, y):
    """y = relu(f + s) (or f + s) over [lo, hi) of flat arrays."""
    a, b, out = f[lo:hi], s[lo:hi], y[lo:hi]  # indexed by the loop counter: no wraparound test, vectorised
    for q in range(hi - lo):
        v = a[q] + b[q]
        out[q] = 0 if relu and v < 0 else v


def residual_add_forward(f, s, relu):
    """y = relu(f + s) (or f + s); y comes back channels-last."""
    y = empty_like(f)
    run(_add, f.size, rows(f).reshape(-1), rows(s).reshape(-1), bool(relu), rows(y).reshape(-1))
    return y


@njit(nogil=True, cache=True)
def _mask(chunk, lo, hi, worker, grad, y, g):
    """g = dy * (y > 0) over [lo, hi) of flat arrays."""
    d, v, out = grad[lo:hi], y[lo:hi], g[lo:hi]
    for q in range(hi - lo):
        out[q] = d[q] if v[q] > 0 else 0


def residual_add_backward(grad_out, y, relu):
    """(g, g) with g = dy * (y > 0) (or dy): into the residual branch and into the shortcut."""
    if not relu:
        return grad_out, grad_out
    g = empty_like(y)
    run(_mask, y.size, rows(grad_out).reshape(-1), rows(y).reshape(-1), rows(g).reshape(-1))
    return g, g


# ---------------------------------------------------------------- max pooling
#
# One output pixel's window compared a channel vector at a time; the taps in
# order with a strict >, so the first maximum wins, as in the reference.

@njit(nogil=True, cache=True)
def _max_pool(chunk, first, stop, worker, x, kh, kw, sh, sw, ph, pw, y, argmax):
    """y[n, oy, ox, c] = the window's largest x, argmax = its tap i*kw + j, for the samples [first, stop)."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = y.shape[1], y.shape[2]
    for b in range(first, stop):
        for oy in range(oh):
            for ox in range(ow):
                best, tap = y[b, oy, ox], argmax[b, oy, ox]
                for ch in range(c):
                    best[ch] = -np.inf  # the padding: it never wins
                    tap[ch] = 0
                for i in range(kh):
                    iy = oy * sh + i - ph
                    if iy < 0 or iy >= h:
                        continue
                    for j in range(kw):
                        ix = ox * sw + j - pw
                        if ix < 0 or ix >= w:
                            continue
                        v = x[b, iy, ix]
                        for ch in range(c):
                            if v[ch] > best[ch]:
                                best[ch] = v[ch]
                                tap[ch] = i * kw + j


def max_pool2d_forward(x, kernel, stride, padding):
    """(y, argmax), both channels-last: the window maxima and their taps in [0, kh*kw)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.empty((n, oh, ow, c), dtype=x.dtype)
    argmax = np.empty((n, oh, ow, c), dtype=np.int32)
    run(_max_pool, n, x.transpose(0, 2, 3, 1), kh, kw, sh, sw, ph, pw, y, argmax)
    return y.transpose(0, 3, 1, 2), argmax.transpose(0, 3, 1, 2)


@njit(nogil=True, cache=True)
def _max_pool_backward(chunk, first, stop, worker, grad, argmax, kh, kw, sh, sw, ph, pw, dx):
    """dx[winner of each window] += dy of that window, for the samples [first, stop) (each chunk owns its own)."""
    h, w, c = dx.shape[1], dx.shape[2], dx.shape[3]
    oh, ow = grad.shape[1], grad.shape[2]
    for b in range(first, stop):
        dx[b] = 0
        for oy in range(oh):
            for ox in range(ow):
                g, tap = grad[b, oy, ox], argmax[b, oy, ox]
                for ch in range(c):
                    iy = oy * sh + tap[ch] // kw - ph
                    ix = ox * sw + tap[ch] % kw - pw
                    if 0 <= iy < h and 0 <= ix < w:
                        dx[b, iy, ix, ch] += g[ch]


def max_pool2d_backward(grad_out, argmax, x_shape, kernel, stride, padding):
    """Each output gradient routed to the input pixel that won its window; dx comes back channels-last."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x_shape
    dx = np.empty((n, h, w, c), dtype=grad_out.dtype)
    run(_max_pool_backward, n, rows(grad_out).reshape(grad_out.shape[0], grad_out.shape[2], grad_out.shape[3], c),
        np.ascontiguousarray(argmax.transpose(0, 2, 3, 1)).astype(np.int32, copy=False), kh, kw, sh, sw, ph, pw, dx)
    return dx.transpose(0, 3, 1, 2)
