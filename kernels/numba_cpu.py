"""Numba CPU kernels: the reference's loops, compiled with ``@njit(parallel=True)``.

Read this file next to ``numpy_ref.py``: every public function has the same
signature and returns the same arrays. Each one allocates its output and
calls one compiled kernel that loops over pixels explicitly; ``prange``
spreads independent work (samples, (sample, channel) planes, channels) over
the cores, so no two threads ever write the same element. The index
arithmetic lives in ``_index.py``, shared with the CUDA kernels.

The convolutions are the exception to the reference's layouts. Those with
few channels (ResNet's 16-128) take the direct route (``numba_direct.py``):
no GEMM, every output's taps summed in vector registers (``numba_tile.py``),
the result handed back channels-last (NHWC memory seen as NCHW). Wider ones
take one of the BLAS routes (``numba_conv.py``: unfolded pixel-major rows,
shifted windows at stride 1, 1x1 as GEMMs), through ``numba_blas.py``, in
the layout their input came in. Batch norm, the residual add and max pooling
take channels-last arrays as they lie (``numba_nhwc.py``), so activations
stay channels-last from one convolution to the next. Those kernels run on
Python threads in compiled code that releases the GIL (``numba_threads.py``:
``prange`` cost seconds of compilation per kernel).

Numba compiles for float32 and float64; other dtypes (float16) are served by
the NumPy reference. ``cache=True`` keeps the machine code on disk, so only
the first run pays for compilation. (Numba checks only the file of the
function it cached: after editing ``_index.py``, ``numba_blas.py`` or
``numba_tile.py``, delete ``kernels/__pycache__`` so their callers recompile.)
"""
import functools
import os

# Numba's OpenMP workers spin between parallel regions by default, burning a
# core while the rest of a step (NumPy ops, BLAS outside the kernels, other
# processes) wants it: kernels ran up to 10x slower on a 2-core machine.
# Asleep, a worker costs ~60 us to wake per kernel call, which measured no
# slower over a resnet20 step than a short spin. Must be set before Numba
# loads OpenMP; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from . import _index, numba_conv, numba_direct, numba_nhwc, numpy_ref  # noqa: E402
from ._index import conv_output_size  # noqa: E402

NAME = "numba"

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


def _channels_last_by(index):
    """Send the call to ``numba_nhwc``'s kernel of the same name when argument ``index`` lies channels-last."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args):
            if numba_nhwc.is_channels_last(args[index]):
                return getattr(numba_nhwc, fn.__name__)(*args)
            return fn(*args)
        return wrapper
    return decorate


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
# The reference unfolds the whole batch into one matrix and runs one big
# GEMM; here each thread takes one sample at a time, by the route that suits
# the convolution's shape (see numba_conv.py).

@_compiled_dtypes
def conv2d_forward(x, weight, stride, padding):
    """y = W * x, sample by sample: direct tiles, pointwise GEMMs, shifted windows or unfolded rows."""
    if numba_direct.serves(x.shape, weight.shape, stride, padding):
        return numba_direct.forward(x, weight, numba_direct.plan(x.shape, weight.shape, stride, padding))
    return numba_conv.forward(x, weight, numba_conv.geometry(x.shape, weight.shape, stride, padding))


@_compiled_dtypes
def conv2d_backward_input(grad_out, weight, x_shape, stride, padding):
    """dx = the adjoint of the forward's unfolding applied to dy^T @ W, sample by sample, by the same route."""
    if numba_direct.serves(x_shape, weight.shape, stride, padding):
        return numba_direct.backward_input(grad_out, weight, numba_direct.plan(x_shape, weight.shape, stride, padding))
    return numba_conv.backward_input(grad_out, weight, numba_conv.geometry(x_shape, weight.shape, stride, padding))


@_compiled_dtypes
def conv2d_backward_weight(grad_out, x, weight_shape, stride, padding):
    """dW = the sum over samples of dy[n] @ unfolded x[n], by the forward's route; nothing is kept from forward."""
    if numba_direct.serves(x.shape, weight_shape, stride, padding):
        return numba_direct.backward_weight(grad_out, x, numba_direct.plan(x.shape, weight_shape, stride, padding))
    return numba_conv.backward_weight(grad_out, x, numba_conv.geometry(x.shape, weight_shape, stride, padding))


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
@_channels_last_by(0)
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
@_channels_last_by(1)
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
# The kernels see images as (N, C, H*W) views, made once per call, and walk
# each (sample, channel) plane as one flat run indexed by the loop counter, so
# short rows (8x8 maps) still vectorise. (A view made inside the loops, one a
# plane, costs an atomic reference count each: it ran the 8x8 layers 2-3x
# slower on two threads.) Reductions run one channel per prange step with
# float64 sums; fastmath's "reassoc" lets LLVM reorder those sums into SIMD
# lanes (several times faster; the result differs from a strict left-to-right
# sum only in rounding). The statistics' second pass finds the channel (N*H*W
# numbers, 512 KiB for a CIFAR batch of 128) still in the core's cache.

def _planes(a):
    """a (N, C, H, W) as a C-contiguous (N, C, H*W) array (a view when it already is contiguous)."""
    return _c(a).reshape(a.shape[0], a.shape[1], -1)


def _channels(v, dtype):
    """A per-channel vector (C,) as a contiguous array of the images' dtype, so each kernel compiles once a dtype."""
    return np.ascontiguousarray(v, dtype=dtype)


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _channel_mean_var(x, mean, var):
    """mean[c] = sum(x[:, c]) / M and var[c] = sum((x[:, c] - mean[c])^2) / M, M = N*H*W; x is (N, C, H*W).

    Two passes over each channel (the one-pass E[x^2] - E[x]^2 loses every
    digit when the mean is large).
    """
    n, c, hw = x.shape
    m = n * hw
    for ch in prange(c):
        total = 0.0
        for b in range(n):
            for q in range(hw):
                total += x[b, ch, q]
        mu = total / m
        squares = 0.0
        for b in range(n):
            for q in range(hw):
                d = x[b, ch, q] - mu
                squares += d * d
        mean[ch] = mu
        var[ch] = squares / m


@_compiled_dtypes
@_channels_last_by(0)
def batch_norm_stats(x):
    """Per-channel mean and biased variance over (N, H, W) of x (N, C, H, W)."""
    c = x.shape[1]
    mean = np.empty(c, dtype=x.dtype)
    var = np.empty(c, dtype=x.dtype)
    _channel_mean_var(_planes(x), mean, var)
    return mean, var


@njit(parallel=True, cache=True)
def _channel_affine(x, scale, shift, y):
    """y[n, c] = x[n, c] * scale[c] + shift[c]; x and y are (N, C, H*W)."""
    n, c, hw = x.shape
    for p in prange(n * c):
        b, ch = p // c, p % c
        k, d = scale[ch], shift[ch]
        for q in range(hw):
            y[b, ch, q] = x[b, ch, q] * k + d


@_compiled_dtypes
@_channels_last_by(0)
def batch_norm_forward(x, scale, shift):
    """y = x * scale + shift, per channel."""
    y = np.empty(x.shape, dtype=x.dtype)
    _channel_affine(_planes(x), _channels(scale, x.dtype), _channels(shift, x.dtype), _planes(y))
    return y


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _bn_grad_sums(grad_out, x, mean, invstd, dbias, dweight):
    """dbias[c] = sum(dy[:, c]) and dweight[c] = sum(dy[:, c] * xhat[:, c]) in one pass, xhat = (x - mean) * invstd."""
    n, c, hw = x.shape
    for ch in prange(c):
        mu, inv = mean[ch], invstd[ch]
        sum_dy = 0.0
        sum_dy_xhat = 0.0
        for b in range(n):
            for q in range(hw):
                dy = grad_out[b, ch, q]
                sum_dy += dy
                sum_dy_xhat += dy * ((x[b, ch, q] - mu) * inv)
        dbias[ch] = sum_dy
        dweight[ch] = sum_dy_xhat


@_compiled_dtypes
@_channels_last_by(1)
def batch_norm_grad_sums(grad_out, x, mean, invstd):
    """(dbias, dweight) = (sum(dy), sum(dy * xhat)) per channel over (N, H, W), xhat = (x - mean) * invstd."""
    dtype, c = x.dtype, x.shape[1]
    dbias = np.empty(c, dtype=dtype)
    dweight = np.empty(c, dtype=dtype)
    _bn_grad_sums(_planes(grad_out), _planes(x), _channels(mean, dtype), _channels(invstd, dtype), dbias, dweight)
    return dbias, dweight


@njit(parallel=True, cache=True)
def _bn_backward_dx(grad_out, x, mean, invstd, scale, mean_dy, mean_dy_xhat, dx):
    """dx = (dy - mean(dy) - xhat * mean(dy * xhat)) * scale, per channel (batch statistics)."""
    n, c, hw = x.shape
    for p in prange(n * c):
        b, ch = p // c, p % c
        mu, inv, k, g, gx = mean[ch], invstd[ch], scale[ch], mean_dy[ch], mean_dy_xhat[ch]
        for q in range(hw):
            dx[b, ch, q] = (grad_out[b, ch, q] - g - (x[b, ch, q] - mu) * inv * gx) * k


@_compiled_dtypes
@_channels_last_by(1)
def batch_norm_backward_input(grad_out, x, mean, invstd, scale, dbias, dweight):
    """dx = scale * (dy - dbias / M - xhat * dweight / M), M = N*H*W: the input gradient with batch statistics."""
    dtype = x.dtype
    m = dtype.type(grad_out.size // x.shape[1])
    dx = np.empty(x.shape, dtype=dtype)
    _bn_backward_dx(_planes(grad_out), _planes(x), _channels(mean, dtype), _channels(invstd, dtype),
                    _channels(scale, dtype), _channels(dbias, dtype) / m, _channels(dweight, dtype) / m, _planes(dx))
    return dx


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
@_channels_last_by(0)
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
@_channels_last_by(1)
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
