"""Numba CPU kernels: the reference's loops, compiled with ``@njit(parallel=True)``.

Read this file next to ``numpy_ref.py``: every public function has the same
signature and returns the same arrays. Each one allocates its output and
calls one compiled kernel that loops over pixels explicitly; ``prange``
spreads independent work (samples, (sample, channel) planes, channels) over
the cores, so no two threads ever write the same element. The convolutions
call BLAS for their GEMMs, one sample at a time inside the parallel loop
(np.dot inside @njit). The index arithmetic lives in ``_index.py``, shared
with the CUDA kernels.

Numba compiles for float32 and float64; other dtypes (float16) are served by
the NumPy reference. ``cache=True`` keeps the machine code on disk, so only
the first run pays for compilation.
"""
import contextlib
import functools
import os

# Numba's OpenMP workers spin between parallel regions by default. Here they
# alternate with BLAS calls on few cores, and spinning workers steal the cores
# the other side needs (kernels ran up to 10x slower on a 2-core machine).
# Must be set before Numba loads OpenMP; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from . import _index, numpy_ref  # noqa: E402

NAME = "numba"

conv_output_size = _index.conv_output_size  # the plain-Python version, for the wrappers

# the shared index helpers, compiled for the CPU
_out_size = njit(cache=True)(_index.conv_output_size)
_tap_input = njit(cache=True)(_index.tap_input)
_col_row = njit(cache=True)(_index.col_row)
_inside_range = njit(cache=True)(_index.inside_range)


def _compiled_dtypes(fn):
    """Send arrays Numba is not compiled for (anything but float32/float64) to the NumPy reference."""
    reference = getattr(numpy_ref, fn.__name__)

    @functools.wraps(fn)
    def wrapper(first, *args, **kwargs):
        if first.dtype not in (np.float32, np.float64):
            return reference(first, *args, **kwargs)
        return fn(first, *args, **kwargs)

    return wrapper


def _c(a):
    """``a`` as a C-contiguous array (no copy when it already is one), so each kernel compiles once."""
    return np.ascontiguousarray(a)


# ---------------------------------------------------------------- im2col / col2im

@njit(cache=True)
def _unfold(x, kh, kw, sh, sw, ph, pw, cols):
    """One sample's im2col: cols[(c, i, j), (oy, ox)] = x[c, oy*sh + i - ph, ox*sw + j - pw], 0 in the padding."""
    c, h, w = x.shape
    oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                row = _col_row(ch, i, j, kh, kw)
                for oy in range(oh):
                    iy = _tap_input(oy, i, sh, ph)
                    for ox in range(ow):
                        ix = _tap_input(ox, j, sw, pw)
                        if 0 <= iy < h and 0 <= ix < w:
                            cols[row, oy * ow + ox] = x[ch, iy, ix]
                        else:
                            cols[row, oy * ow + ox] = 0


@njit(cache=True)
def _fold(cols, kh, kw, sh, sw, ph, pw, x):
    """One sample's col2im: x[c, iy, ix] = the sum of every cols entry that _unfold copied from there.

    _unfold's loops with the assignment reversed (+=). Entries that came from
    the padding are dropped: the loops run only over the output positions
    whose tap lands inside the image (about 20% faster than testing each one).
    """
    c, h, w = x.shape
    oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    x[:] = 0
    for ch in range(c):
        for i in range(kh):
            y0, y1 = _inside_range(i, sh, ph, h, oh)
            for j in range(kw):
                x0, x1 = _inside_range(j, sw, pw, w, ow)
                row = _col_row(ch, i, j, kh, kw)
                for oy in range(y0, y1):
                    iy = _tap_input(oy, i, sh, ph)
                    for ox in range(x0, x1):
                        x[ch, iy, _tap_input(ox, j, sw, pw)] += cols[row, oy * ow + ox]


@njit(parallel=True, cache=True)
def _im2col(x, kh, kw, sh, sw, ph, pw, cols):
    """Unfold every sample into its block of columns; prange over the samples."""
    n = x.shape[0]
    p = cols.shape[1] // n
    for b in prange(n):
        _unfold(x[b], kh, kw, sh, sw, ph, pw, cols[:, b * p:(b + 1) * p])


@_compiled_dtypes
def im2col(x, kh, kw, stride, padding):
    """Unfold x (N, C, H, W) into columns (C*kh*kw, N*OH*OW): row (c, i, j) is what tap (i, j) of channel c sees."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    cols = np.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    _im2col(_c(x), kh, kw, sh, sw, ph, pw, cols)
    return cols


@njit(parallel=True, cache=True)
def _col2im(cols, kh, kw, sh, sw, ph, pw, x):
    """Fold every sample's block of columns back; each prange step owns one sample, so the += has no races."""
    n = x.shape[0]
    p = cols.shape[1] // n
    for b in prange(n):
        _fold(cols[:, b * p:(b + 1) * p], kh, kw, sh, sw, ph, pw, x[b])


@_compiled_dtypes
def col2im(cols, x_shape, kh, kw, stride, padding):
    """The adjoint of im2col: scatter-add columns (C*kh*kw, N*OH*OW) back into an (N, C, H, W) image."""
    (sh, sw), (ph, pw) = stride, padding
    x = np.empty(tuple(x_shape), dtype=cols.dtype)
    _col2im(_c(cols), kh, kw, sh, sw, ph, pw, x)
    return x


# ---------------------------------------------------------------- convolution
#
# The reference unfolds the whole batch into one (C*kh*kw, N*OH*OW) matrix and
# runs one big GEMM. Here each thread takes a chunk of the samples; for each
# sample it unfolds the image into its own scratch columns (C*kh*kw, OH*OW) and
# runs that sample's GEMM at once, while the columns are still in the core's
# cache: they never travel to main memory, and y[n] = W @ cols lands in NCHW
# order with no transpose. Each thread calls a single-threaded BLAS (np.dot
# inside @njit; see _blas_threads).

@njit(cache=True)
def _chunk(t, chunks, n):
    """The items [start, stop) of chunk t when n items are cut into ``chunks`` nearly equal chunks."""
    return t * n // chunks, (t + 1) * n // chunks


@njit(parallel=True, cache=True)
def _conv_forward(x, w2t, kh, kw, sh, sw, ph, pw, cols, yt, y):
    """y[n] = W (O, C*kh*kw) @ unfold(x[n]) (C*kh*kw, OH*OW); thread t works in scratch cols[t] and yt[t].

    The GEMM computes y[n]^T = cols^T @ W^T (OH*OW, O) and is copied back
    transposed: BLAS runs this orientation of the skinny product faster.
    """
    chunks = cols.shape[0]
    for t in prange(chunks):
        start, stop = _chunk(t, chunks, x.shape[0])
        for b in range(start, stop):
            _unfold(x[b], kh, kw, sh, sw, ph, pw, cols[t])
            np.dot(cols[t].T, w2t, yt[t])
            y[b] = yt[t].T


@njit(parallel=True, cache=True)
def _conv_backward_input(dy, w2t, kh, kw, sh, sw, ph, pw, dcols, dx):
    """dx[n] = fold(W^T (C*kh*kw, O) @ dy[n] (O, OH*OW)); thread t multiplies into scratch dcols[t]."""
    chunks = dcols.shape[0]
    for t in prange(chunks):
        start, stop = _chunk(t, chunks, dx.shape[0])
        for b in range(start, stop):
            np.dot(w2t, dy[b], dcols[t])
            _fold(dcols[t], kh, kw, sh, sw, ph, pw, dx[b])


@njit(parallel=True, cache=True)
def _conv_backward_weight(dy, x, kh, kw, sh, sw, ph, pw, cols, parts):
    """parts[t] = the sum over thread t's samples of unfold(x[n]) @ dy[n]^T (C*kh*kw, O); dW^T = the sum of the parts.

    Each thread adds into its own partial sum, so no two threads write the same
    dW. (dW^T rather than dW: BLAS runs this orientation of the product faster.)
    """
    chunks = cols.shape[0]
    for t in prange(chunks):
        start, stop = _chunk(t, chunks, x.shape[0])
        product = np.empty_like(parts[t])
        for b in range(start, stop):
            _unfold(x[b], kh, kw, sh, sw, ph, pw, cols[t])
            np.dot(cols[t], dy[b].T, product)
            parts[t] += product


_blas_controller = None


def _blas_threads(count):
    """A context in which the BLAS libraries use ``count`` threads (1 inside our prange loops).

    Every prange thread runs its own small GEMM; if the BLAS also started
    threads of its own, the two thread pools would fight over the cores.
    Needs threadpoolctl (installed with scikit-learn); without it this does nothing.
    """
    global _blas_controller
    if _blas_controller is None:
        try:
            import scipy.linalg.cython_blas  # noqa: F401  (the BLAS that np.dot inside @njit calls)
            from threadpoolctl import ThreadpoolController
            _blas_controller = ThreadpoolController().select(user_api="blas")
        except ImportError:
            _blas_controller = False
    return _blas_controller.limit(limits=count) if _blas_controller else contextlib.nullcontext()


def _geometry(x_shape, weight_shape, stride, padding):
    """A convolution's sizes: (kh, kw, sh, sw, ph, pw, oh, ow, chunks of the batch, rows of the columns)."""
    (sh, sw), (ph, pw) = stride, padding
    n, c = x_shape[:2]
    _, _, kh, kw = weight_shape
    oh, ow = conv_output_size(x_shape[2], kh, sh, ph), conv_output_size(x_shape[3], kw, sw, pw)
    return kh, kw, sh, sw, ph, pw, oh, ow, min(n, numba.get_num_threads()), c * kh * kw


@_compiled_dtypes
def conv2d_forward(x, weight, stride, padding):
    """y = W * x: for each sample, (O, C*kh*kw) @ (C*kh*kw, OH*OW) -> (O, OH, OW)."""
    n, o = x.shape[0], weight.shape[0]
    kh, kw, sh, sw, ph, pw, oh, ow, chunks, k = _geometry(x.shape, weight.shape, stride, padding)
    y = np.empty((n, o, oh, ow), dtype=x.dtype)
    cols = np.empty((chunks, k, oh * ow), dtype=x.dtype)
    yt = np.empty((chunks, oh * ow, o), dtype=x.dtype)
    w2t = np.ascontiguousarray(weight.reshape(o, k).T)
    with _blas_threads(1):
        _conv_forward(_c(x), w2t, kh, kw, sh, sw, ph, pw, cols, yt, y.reshape(n, o, oh * ow))
    return y


@_compiled_dtypes
def conv2d_backward_input(grad_out, weight, x_shape, stride, padding):
    """dx = col2im(W^T @ dy), sample by sample."""
    n, o, oh, ow = grad_out.shape
    kh, kw, sh, sw, ph, pw, _, _, chunks, k = _geometry(x_shape, weight.shape, stride, padding)
    dx = np.empty(tuple(x_shape), dtype=grad_out.dtype)
    dcols = np.empty((chunks, k, oh * ow), dtype=grad_out.dtype)
    w2t = np.ascontiguousarray(weight.reshape(o, k).T)
    with _blas_threads(1):
        _conv_backward_input(_c(grad_out).reshape(n, o, oh * ow), w2t, kh, kw, sh, sw, ph, pw, dcols, dx)
    return dx


@_compiled_dtypes
def conv2d_backward_weight(grad_out, x, weight_shape, stride, padding):
    """dW = dy @ im2col(x)^T, summed sample by sample; the columns are recomputed rather than kept from forward."""
    n, o, oh, ow = grad_out.shape
    kh, kw, sh, sw, ph, pw, _, _, chunks, k = _geometry(x.shape, weight_shape, stride, padding)
    cols = np.empty((chunks, k, oh * ow), dtype=x.dtype)
    parts = np.zeros((chunks, k, o), dtype=grad_out.dtype)
    with _blas_threads(1):
        _conv_backward_weight(_c(grad_out).reshape(n, o, oh * ow), _c(x), kh, kw, sh, sw, ph, pw, cols, parts)
    return np.ascontiguousarray(parts.sum(axis=0).T).reshape(weight_shape)


# ---------------------------------------------------------------- residual add

@njit(parallel=True, cache=True)
def _residual_add(f, s, relu, y):
    """y = relu(f + s) (or f + s), element by element over flat arrays."""
    for k in prange(y.size):
        v = f[k] + s[k]
        if relu and v < 0:
            v = 0
        y[k] = v


@_compiled_dtypes
def residual_add_forward(f, s, relu):
    """y = relu(f + s) (or f + s)."""
    y = np.empty(f.shape, dtype=f.dtype)
    _residual_add(_c(f).reshape(-1), _c(s).reshape(-1), bool(relu), y.reshape(-1))
    return y


@njit(parallel=True, cache=True)
def _relu_mask(grad_out, y, g):
    """g = dy * (y > 0), element by element over flat arrays."""
    for k in prange(g.size):
        g[k] = grad_out[k] if y[k] > 0 else 0


@_compiled_dtypes
def residual_add_backward(grad_out, y, relu):
    """Returns (grad into the residual branch, grad into the shortcut), both g = dy * (y > 0).

    The add passes g unchanged to each input; the shortcut's copy is the "1"
    of dx = g (1 + dF/dx).
    """
    if not relu:
        return grad_out, grad_out
    g = np.empty(grad_out.shape, dtype=grad_out.dtype)
    _relu_mask(_c(grad_out).reshape(-1), _c(y).reshape(-1), g.reshape(-1))
    return g, g


# ---------------------------------------------------------------- batch norm
#
# Reductions run one channel per prange step with float64 sums. fastmath's
# "reassoc" lets LLVM reorder those sums into SIMD lanes (several times faster;
# the result differs from a strict left-to-right sum only in rounding). Per-channel
# numbers are read into locals before the pixel loops, so the loops vectorise.

@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _channel_mean_var(x, mean, var):
    """mean[c] = sum(x[:, c]) / M and var[c] = sum((x[:, c] - mean[c])^2) / M, M = N*H*W.

    Two passes over each channel (the one-pass E[x^2] - E[x]^2 loses every
    digit when the mean is large).
    """
    n, c, h, w = x.shape
    m = n * h * w
    for ch in prange(c):
        total = 0.0
        for b in range(n):
            for iy in range(h):
                for ix in range(w):
                    total += x[b, ch, iy, ix]
        mu = total / m
        squares = 0.0
        for b in range(n):
            for iy in range(h):
                for ix in range(w):
                    d = x[b, ch, iy, ix] - mu
                    squares += d * d
        mean[ch] = mu
        var[ch] = squares / m


@_compiled_dtypes
def batch_norm_stats(x):
    """Per-channel mean and biased variance over (N, H, W) of x (N, C, H, W)."""
    c = x.shape[1]
    mean = np.empty(c, dtype=x.dtype)
    var = np.empty(c, dtype=x.dtype)
    _channel_mean_var(_c(x), mean, var)
    return mean, var


@njit(parallel=True, cache=True)
def _channel_affine(x, scale, shift, y):
    """y[n, c] = x[n, c] * scale[c] + shift[c]."""
    n, c, h, w = x.shape
    for plane in prange(n * c):
        b, ch = plane // c, plane % c
        k, d = scale[ch], shift[ch]
        for iy in range(h):
            for ix in range(w):
                y[b, ch, iy, ix] = x[b, ch, iy, ix] * k + d


def _scale_shift(mean, invstd, weight, bias):
    """Per-channel scale = invstd * weight and shift = bias - mean * scale (C numbers, plain NumPy)."""
    scale = invstd if weight is None else invstd * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    return _c(scale), _c(shift)


@_compiled_dtypes
def batch_norm_forward(x, mean, invstd, weight, bias):
    """y = (x - mean) * invstd * weight + bias, per channel."""
    scale, shift = _scale_shift(mean, invstd, weight, bias)
    y = np.empty(x.shape, dtype=x.dtype)
    _channel_affine(_c(x), scale.astype(x.dtype), shift.astype(x.dtype), y)
    return y


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _bn_grad_sums(grad_out, x, mean, invstd, dbias, dweight):
    """dbias[c] = sum(dy[:, c]) and dweight[c] = sum(dy[:, c] * xhat[:, c]) in one pass, xhat = (x - mean) * invstd."""
    n, c, h, w = x.shape
    for ch in prange(c):
        mu, inv = mean[ch], invstd[ch]
        sum_dy = 0.0
        sum_dy_xhat = 0.0
        for b in range(n):
            for iy in range(h):
                for ix in range(w):
                    dy = grad_out[b, ch, iy, ix]
                    sum_dy += dy
                    sum_dy_xhat += dy * ((x[b, ch, iy, ix] - mu) * inv)
        dbias[ch] = sum_dy
        dweight[ch] = sum_dy_xhat


@njit(parallel=True, cache=True)
def _bn_backward_dx(grad_out, x, mean, invstd, scale, mean_dy, mean_dy_xhat, dx):
    """dx = (dy - mean(dy) - xhat * mean(dy * xhat)) * scale, per channel (batch statistics)."""
    n, c, h, w = x.shape
    for plane in prange(n * c):
        b, ch = plane // c, plane % c
        mu, inv, k, g, gx = mean[ch], invstd[ch], scale[ch], mean_dy[ch], mean_dy_xhat[ch]
        for iy in range(h):
            for ix in range(w):
                xhat = (x[b, ch, iy, ix] - mu) * inv
                dx[b, ch, iy, ix] = (grad_out[b, ch, iy, ix] - g - xhat * gx) * k


@_compiled_dtypes
def batch_norm_backward(grad_out, x, mean, invstd, weight, training):
    """Returns (dx, dweight, dbias).

    Training (batch statistics depend on x):
    dx = weight * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat)).
    Eval (running statistics are constants): dx = dy * weight * invstd.
    """
    grad_out, x = _c(grad_out), _c(x)
    dtype, c = x.dtype, x.shape[1]
    m = grad_out.size // c
    mean, invstd = _c(mean).astype(dtype), _c(invstd).astype(dtype)
    dbias = np.empty(c, dtype=dtype)
    dweight = np.empty(c, dtype=dtype)
    _bn_grad_sums(grad_out, x, mean, invstd, dbias, dweight)
    scale = (invstd if weight is None else invstd * weight).astype(dtype)
    dx = np.empty(x.shape, dtype=dtype)
    if training:
        _bn_backward_dx(grad_out, x, mean, invstd, scale, dbias / dtype.type(m), dweight / dtype.type(m), dx)
    else:
        _channel_affine(grad_out, scale, np.zeros(c, dtype=dtype), dx)
    return dx, dweight, dbias


# ---------------------------------------------------------------- pooling

@njit(parallel=True, cache=True)
def _max_pool(x, kh, kw, sh, sw, ph, pw, y, argmax):
    """y = the largest input in each window and argmax = its tap i*kw + j; the first maximum wins."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for plane in prange(n * c):
        b, ch = plane // c, plane % c
        for oy in range(oh):
            for ox in range(ow):
                best = -np.inf  # the padding: it never wins
                tap = 0
                for i in range(kh):
                    iy = _tap_input(oy, i, sh, ph)
                    for j in range(kw):
                        ix = _tap_input(ox, j, sw, pw)
                        if 0 <= iy < h and 0 <= ix < w and x[b, ch, iy, ix] > best:  # strict: first wins
                            best = x[b, ch, iy, ix]
                            tap = i * kw + j
                y[b, ch, oy, ox] = best
                argmax[b, ch, oy, ox] = tap


@_compiled_dtypes
def max_pool2d_forward(x, kernel, stride, padding):
    """Returns (y, argmax) where argmax in [0, kh*kw) is the winning tap of each window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    argmax = np.empty((n, c, oh, ow), dtype=np.int32)
    _max_pool(_c(x), kh, kw, sh, sw, ph, pw, y, argmax)
    return y, argmax


@njit(parallel=True, cache=True)
def _max_pool_backward(grad_out, argmax, kh, kw, sh, sw, ph, pw, dx):
    """dx[winner of each window] += dy of that window; each prange step owns one (n, c) plane."""
    n, c, h, w = dx.shape
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    for plane in prange(n * c):
        b, ch = plane // c, plane % c
        dx[b, ch] = 0
        for oy in range(oh):
            for ox in range(ow):
                tap = argmax[b, ch, oy, ox]
                iy = _tap_input(oy, tap // kw, sh, ph)
                ix = _tap_input(ox, tap % kw, sw, pw)
                if 0 <= iy < h and 0 <= ix < w:
                    dx[b, ch, iy, ix] += grad_out[b, ch, oy, ox]


@_compiled_dtypes
def max_pool2d_backward(grad_out, argmax, x_shape, kernel, stride, padding):
    """Route each output gradient to the input pixel that won its window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    dx = np.empty(tuple(x_shape), dtype=grad_out.dtype)
    _max_pool_backward(_c(grad_out), _c(argmax).astype(np.int32, copy=False), kh, kw, sh, sw, ph, pw, dx)
    return dx


@njit(parallel=True, cache=True)
def _avg_pool(x, kh, kw, sh, sw, ph, pw, y):
    """y = the sum of each window's inputs / (kh*kw); taps in the padding add 0 but still count."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for plane in prange(n * c):
        b, ch = plane // c, plane % c
        for oy in range(oh):
            for ox in range(ow):
                total = 0.0
                for i in range(kh):
                    iy = _tap_input(oy, i, sh, ph)
                    for j in range(kw):
                        ix = _tap_input(ox, j, sw, pw)
                        if 0 <= iy < h and 0 <= ix < w:
                            total += x[b, ch, iy, ix]
                y[b, ch, oy, ox] = total / (kh * kw)


@_compiled_dtypes
def avg_pool2d_forward(x, kernel, stride, padding):
    """Window mean; padded zeros count in the divisor (PyTorch's count_include_pad=True)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    _avg_pool(_c(x), kh, kw, sh, sw, ph, pw, y)
    return y


@njit(parallel=True, cache=True)
def _avg_pool_backward(grad_out, kh, kw, sh, sw, ph, pw, dx):
    """dx[every pixel of a window] += dy of that window / (kh*kw); each prange step owns one (n, c) plane."""
    n, c, h, w = dx.shape
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    for plane in prange(n * c):
        b, ch = plane // c, plane % c
        dx[b, ch] = 0
        for oy in range(oh):
            for ox in range(ow):
                share = grad_out[b, ch, oy, ox] / (kh * kw)
                for i in range(kh):
                    iy = _tap_input(oy, i, sh, ph)
                    for j in range(kw):
                        ix = _tap_input(ox, j, sw, pw)
                        if 0 <= iy < h and 0 <= ix < w:
                            dx[b, ch, iy, ix] += share


@_compiled_dtypes
def avg_pool2d_backward(grad_out, x_shape, kernel, stride, padding):
    """Spread each output gradient evenly over its window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    dx = np.empty(tuple(x_shape), dtype=grad_out.dtype)
    _avg_pool_backward(_c(grad_out), kh, kw, sh, sw, ph, pw, dx)
    return dx
