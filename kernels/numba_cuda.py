"""Numba CUDA kernels: the reference's functions as ``@cuda.jit`` kernels, one GPU thread per output element.

Read this file next to ``numpy_ref.py`` and ``numba_cpu.py``: the same
signatures, and the same ``_index.py`` helpers, compiled here with
``cuda.jit(device=True)``. Each kernel writes each output element from
exactly one thread (col2im and the pooling backwards *gather* what the CPU
versions scatter: no atomics, no races); the batch-norm sums give each
channel one block that reduces in shared memory.

Arrays may be CuPy arrays (how minires keeps GPU tensors; Numba launches on
them through ``__cuda_array_interface__``), Numba device arrays, or host NumPy
arrays (under Numba's CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``); results come
back as the same kind. The convolution GEMMs go to cuBLAS through
``cupy.matmul``, or to NumPy on the host when CuPy is absent.
"""
import math
import os

import numpy as np
from numba import config, cuda

from . import _index
from ._index import conv_output_size

try:
    import cupy
    if config.ENABLE_CUDASIM or not cupy.is_available():
        cupy = None  # the simulator cannot launch on CuPy's memory; host arrays need no CuPy
except ImportError:
    cupy = None

if not cuda.is_available():
    raise ImportError("numba-cuda finds no usable CUDA GPU; to run these kernels without one, "
                      "set NUMBA_ENABLE_CUDASIM=1 before Python starts")

# By default Numba waits for a CuPy array's stream before every launch, once per
# CuPy argument: the host could never queue work ahead of the GPU. CuPy and these
# kernels both launch on the legacy default stream, already in order; a value
# the user set (NUMBA_CUDA_ARRAY_INTERFACE_SYNC) wins.
if cupy is not None and "NUMBA_CUDA_ARRAY_INTERFACE_SYNC" not in os.environ:
    try:  # numba-cuda keeps its own settings module (the same object as numba.config in recent versions)
        from numba.cuda.core import config as _cuda_config
    except ImportError:
        _cuda_config = config
    config.CUDA_ARRAY_INTERFACE_SYNC = _cuda_config.CUDA_ARRAY_INTERFACE_SYNC = 0

NAME = "numba-cuda"

# threads per block, a power of two (the reductions halve it); small in the simulator, a Python thread each
THREADS = 32 if config.ENABLE_CUDASIM else 256

# the shared index helpers, compiled for the GPU
_tap_input = cuda.jit(device=True)(_index.tap_input)
_tap_output = cuda.jit(device=True)(_index.tap_output)
_col_row = cuda.jit(device=True)(_index.col_row)
_col_column = cuda.jit(device=True)(_index.col_column)
_unravel3 = cuda.jit(device=True)(_index.unravel3)
_unravel4 = cuda.jit(device=True)(_index.unravel4)


# ---------------------------------------------------------------- arrays of three kinds

def _is_cupy(a):
    return cupy is not None and isinstance(a, cupy.ndarray)


def _is_numba_device(a):
    return hasattr(a, "copy_to_host")  # DeviceNDArray, or the simulator's FakeCUDAArray


def _empty(like, shape, dtype):
    """An uninitialised array of the same kind as ``like`` (CuPy, Numba device or NumPy)."""
    if _is_cupy(like):
        return cupy.empty(shape, dtype=dtype)
    if _is_numba_device(like):
        return cuda.device_array(shape, dtype=dtype)
    return np.empty(shape, dtype=dtype)


def _flat(a):
    """A 1-D view of a contiguous array of any kind."""
    return a.reshape(a.size)


def _matmul(a, b, transpose_a=False, transpose_b=False):
    """a @ b (a^T or b^T when asked) by the library that owns the arrays: cuBLAS via CuPy, or NumPy.

    Numba device arrays go through CuPy without a copy, or without CuPy through the host (slow: the simulator).
    """
    device = _is_numba_device(a)
    if device:
        a, b = (cupy.asarray(a), cupy.asarray(b)) if cupy is not None else (a.copy_to_host(), b.copy_to_host())
    a, b = (a.T if transpose_a else a), (b.T if transpose_b else b)
    out = cupy.matmul(a, b) if _is_cupy(a) else np.matmul(a, b)
    if device:
        return cuda.as_cuda_array(out) if _is_cupy(out) else cuda.to_device(out)
    return out


def _launch(kernel, size):
    """``kernel`` configured with one thread per element of a ``size``-element output."""
    return kernel[max(1, math.ceil(size / THREADS)), THREADS]


# ---------------------------------------------------------------- im2col / col2im

@cuda.jit
def _im2col_kernel(x, kh, kw, sh, sw, ph, pw, oh, ow, cols):
    # BEGIN EXERCISE gpu.im2col
    # HINT: thread k = cuda.grid(1) writes element k of cols (C*kh*kw rows, N*OH*OW columns) and nothing
    # HINT: else; threads past the end return; _unravel3 and _tap_input find the pixel; 0 in the padding.
    """Thread (row, column) of cols: cols[(c, i, j), (n, oy, ox)] = x[n, c, oy*sh + i - ph, ox*sw + j - pw], or 0."""
    k = cuda.grid(1)
    rows, columns = cols.shape
    if k >= rows * columns:
        return
    row, column = k // columns, k % columns
    c, i, j = _unravel3(row, kh, kw)
    n, oy, ox = _unravel3(column, oh, ow)
    iy, ix = _tap_input(oy, i, sh, ph), _tap_input(ox, j, sw, pw)
    if 0 <= iy < x.shape[2] and 0 <= ix < x.shape[3]:
        cols[row, column] = x[n, c, iy, ix]
    else:
        cols[row, column] = 0
    # END EXERCISE


def im2col(x, kh, kw, stride, padding):
    """Unfold x (N, C, H, W) into columns (C*kh*kw, N*OH*OW): row (c, i, j) is what tap (i, j) of channel c sees."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    cols = _empty(x, (c * kh * kw, n * oh * ow), x.dtype)
    _launch(_im2col_kernel, cols.size)(x, kh, kw, sh, sw, ph, pw, oh, ow, cols)
    return cols


@cuda.jit
def _col2im_kernel(cols, kh, kw, sh, sw, ph, pw, oh, ow, x):
    # BEGIN EXERCISE gpu.col2im
    # HINT: thread k writes pixel k of x (N, C, H, W): it gathers, over every tap (i, j), the column entry
    # HINT: that read this pixel, if any (_tap_output, _col_row, _col_column), so no two threads write
    # HINT: the same element and no atomics are needed.
    """Thread (n, c, iy, ix) of the image sums cols[(c, i, j), (n, oy, ox)] over every tap (i, j) that read it."""
    k = cuda.grid(1)
    _, channels, h, w = x.shape
    if k >= x.size:
        return
    n, c, iy, ix = _unravel4(k, channels, h, w)
    total = 0.0
    for i in range(kh):
        oy = _tap_output(iy, i, sh, ph, oh)
        if oy < 0:
            continue
        for j in range(kw):
            ox = _tap_output(ix, j, sw, pw, ow)
            if ox >= 0:
                total += cols[_col_row(c, i, j, kh, kw), _col_column(n, oy, ox, oh, ow)]
    x[n, c, iy, ix] = total
    # END EXERCISE


def col2im(cols, x_shape, kh, kw, stride, padding):
    """The adjoint of im2col: sum columns (C*kh*kw, N*OH*OW) back into an (N, C, H, W) image."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x_shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    x = _empty(cols, tuple(x_shape), cols.dtype)
    _launch(_col2im_kernel, x.size)(cols, kh, kw, sh, sw, ph, pw, oh, ow, x)
    return x


# ---------------------------------------------------------------- convolution

@cuda.jit
def _swap_kernel(src, dst):
    """Thread (i, j, q) of dst (I, J, Q): dst[i, j, q] = src[j, i, q], the first two axes swapped."""
    k = cuda.grid(1)
    if k >= dst.size:
        return
    i, j, q = _unravel3(k, dst.shape[1], dst.shape[2])
    dst[i, j, q] = src[j, i, q]


def _swapped(src, shape):
    """A new (I, J, Q) array from src viewed as (J, I, Q): the GEMM's (O, N, P) order to NCHW's (N, O, P), or back."""
    dst = _empty(src, shape, src.dtype)
    _launch(_swap_kernel, dst.size)(src.reshape(shape[1], shape[0], shape[2]), dst)
    return dst


def _grad_rows(grad_out):
    """(N, O, OH, OW) -> (O, N*OH*OW), the layout of the forward GEMM's output."""
    n, o, oh, ow = grad_out.shape
    return _swapped(grad_out, (o, n, oh * ow)).reshape(o, n * oh * ow)


def conv2d_forward(x, weight, stride, padding):
    """y = W * x as one GEMM: (O, C*kh*kw) @ (C*kh*kw, N*OH*OW), brought into (N, O, OH, OW)."""
    (n, _, h, w), (o, c, kh, kw) = x.shape, weight.shape
    oh, ow = conv_output_size(h, kh, stride[0], padding[0]), conv_output_size(w, kw, stride[1], padding[1])
    rows = _matmul(weight.reshape(o, c * kh * kw), im2col(x, kh, kw, stride, padding))
    return _swapped(rows, (n, o, oh * ow)).reshape(n, o, oh, ow)


def conv2d_backward_input(grad_out, weight, x_shape, stride, padding):
    """dx = col2im(W^T @ dy)."""
    o, c, kh, kw = weight.shape
    dcols = _matmul(weight.reshape(o, c * kh * kw), _grad_rows(grad_out), transpose_a=True)
    return col2im(dcols, x_shape, kh, kw, stride, padding)


def conv2d_backward_weight(grad_out, x, weight_shape, stride, padding):
    """dW = dy @ im2col(x)^T; the columns are recomputed rather than kept from forward."""
    _, _, kh, kw = weight_shape
    cols = im2col(x, kh, kw, stride, padding)
    return _matmul(_grad_rows(grad_out), cols, transpose_b=True).reshape(tuple(weight_shape))


# ---------------------------------------------------------------- residual add

@cuda.jit
def _residual_add_kernel(f, s, relu, y):
    """Thread k: y[k] = relu(f[k] + s[k]) (or f[k] + s[k])."""
    # BEGIN EXERCISE gpu.residual_forward
    # HINT: one thread per element of the flat arrays; threads past the end do nothing.
    k = cuda.grid(1)
    if k >= y.size:
        return
    v = f[k] + s[k]
    if relu and v < 0:
        v = 0
    y[k] = v
    # END EXERCISE


def residual_add_forward(f, s, relu):
    """y = relu(f + s) (or f + s)."""
    y = _empty(f, f.shape, f.dtype)
    _launch(_residual_add_kernel, y.size)(_flat(f), _flat(s), relu, _flat(y))
    return y


@cuda.jit
def _relu_mask_kernel(grad_out, y, g):
    # BEGIN EXERCISE gpu.residual_backward
    # HINT: thread k writes g[k], the gradient that flows back through y = relu(f + s) at element k
    # HINT: (the flat arrays grad_out and y are the upstream gradient and the forward's output).
    """Thread k: g[k] = dy[k] where y[k] > 0, else 0."""
    k = cuda.grid(1)
    if k >= g.size:
        return
    g[k] = grad_out[k] if y[k] > 0 else 0
    # END EXERCISE


def residual_add_backward(grad_out, y, relu):
    """Returns (grad into the residual branch, grad into the shortcut), both g = dy * (y > 0).

    The add passes g unchanged to each input; the shortcut's copy is the "1"
    of dx = g (1 + dF/dx).
    """
    if not relu:
        return grad_out, grad_out
    g = _empty(grad_out, grad_out.shape, grad_out.dtype)
    _launch(_relu_mask_kernel, g.size)(_flat(grad_out), _flat(y), _flat(g))
    return g, g


# ---------------------------------------------------------------- batch norm

@cuda.jit(device=True)
def _block_sum(partial, value):
    """The sum of ``value`` over the block's threads (a tree in shared memory ``partial``); every thread gets it."""
    t = cuda.threadIdx.x
    partial[t] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    total = partial[0]
    cuda.syncthreads()  # all have read partial[0] before anyone reuses it
    return total


@cuda.jit
def _bn_stats_kernel(x, mean, var):
    """Block c, channel c: mean = sum(x[:, c]) / M, then var = sum((x[:, c] - mean)^2) / M, with float64 sums."""
    c, t = cuda.blockIdx.x, cuda.threadIdx.x
    n, _, h, w = x.shape
    m = n * h * w
    partial = cuda.shared.array(THREADS, np.float64)
    total = 0.0
    for k in range(t, m, cuda.blockDim.x):  # each thread strides over the channel's N*H*W values
        b, iy, ix = _unravel3(k, h, w)
        total += x[b, c, iy, ix]
    mu = _block_sum(partial, total) / m
    squares = 0.0
    for k in range(t, m, cuda.blockDim.x):
        b, iy, ix = _unravel3(k, h, w)
        d = x[b, c, iy, ix] - mu
        squares += d * d
    sigma2 = _block_sum(partial, squares) / m
    if t == 0:
        mean[c], var[c] = mu, sigma2


def batch_norm_stats(x):
    """Per-channel mean and biased variance over (N, H, W) of x (N, C, H, W)."""
    c = x.shape[1]
    mean, var = _empty(x, (c,), x.dtype), _empty(x, (c,), x.dtype)
    _bn_stats_kernel[c, THREADS](x, mean, var)
    return mean, var


@cuda.jit
def _channel_affine_kernel(x, scale, shift, y):
    """Thread (n, c, iy, ix): y = x * scale[c] + shift[c]."""
    k = cuda.grid(1)
    _, channels, h, w = x.shape
    if k >= x.size:
        return
    n, c, iy, ix = _unravel4(k, channels, h, w)
    y[n, c, iy, ix] = x[n, c, iy, ix] * scale[c] + shift[c]


def batch_norm_forward(x, scale, shift):
    """y = x * scale + shift, per channel."""
    y = _empty(x, x.shape, x.dtype)
    _launch(_channel_affine_kernel, y.size)(x, scale, shift, y)
    return y


@cuda.jit
def _bn_grad_sums_kernel(grad_out, x, mean, invstd, dbias, dweight):
    """Block c: dbias[c] = sum(dy[:, c]) and dweight[c] = sum(dy[:, c] * xhat[:, c]), xhat = (x - mean) * invstd."""
    c, t = cuda.blockIdx.x, cuda.threadIdx.x
    n, _, h, w = x.shape
    partial = cuda.shared.array(THREADS, np.float64)
    sum_dy = 0.0
    sum_dy_xhat = 0.0
    for k in range(t, n * h * w, cuda.blockDim.x):
        b, iy, ix = _unravel3(k, h, w)
        dy = grad_out[b, c, iy, ix]
        sum_dy += dy
        sum_dy_xhat += dy * ((x[b, c, iy, ix] - mean[c]) * invstd[c])
    sum_dy = _block_sum(partial, sum_dy)
    sum_dy_xhat = _block_sum(partial, sum_dy_xhat)
    if t == 0:
        dbias[c], dweight[c] = sum_dy, sum_dy_xhat


def batch_norm_grad_sums(grad_out, x, mean, invstd):
    """(dbias, dweight) = (sum(dy), sum(dy * xhat)) per channel over (N, H, W), xhat = (x - mean) * invstd."""
    c = x.shape[1]
    dbias, dweight = _empty(x, (c,), x.dtype), _empty(x, (c,), x.dtype)
    _bn_grad_sums_kernel[c, THREADS](grad_out, x, mean, invstd, dbias, dweight)
    return dbias, dweight


@cuda.jit
def _bn_backward_dx_kernel(grad_out, x, mean, invstd, scale, dbias, dweight, dx):
    """Thread (n, c, iy, ix): dx = (dy - dbias/M - xhat * dweight/M) * scale, xhat = (x - mean) * invstd."""
    k = cuda.grid(1)
    _, channels, h, w = x.shape
    if k >= x.size:
        return
    n, c, iy, ix = _unravel4(k, channels, h, w)
    m = x.size // channels  # N*H*W
    xhat = (x[n, c, iy, ix] - mean[c]) * invstd[c]
    dx[n, c, iy, ix] = (grad_out[n, c, iy, ix] - dbias[c] / m - xhat * (dweight[c] / m)) * scale[c]


def batch_norm_backward_input(grad_out, x, mean, invstd, scale, dbias, dweight):
    """dx = scale * (dy - dbias / M - xhat * dweight / M), M = N*H*W: the input gradient with batch statistics."""
    dx = _empty(x, x.shape, x.dtype)
    _launch(_bn_backward_dx_kernel, dx.size)(grad_out, x, mean, invstd, scale, dbias, dweight, dx)
    return dx


# ---------------------------------------------------------------- pooling

@cuda.jit
def _max_pool_kernel(x, kh, kw, sh, sw, ph, pw, y, argmax):
    """Thread (n, c, oy, ox): the largest input in the window and its tap i*kw + j; the first maximum wins."""
    k = cuda.grid(1)
    _, channels, oh, ow = y.shape
    if k >= y.size:
        return
    n, c, oy, ox = _unravel4(k, channels, oh, ow)
    best = -math.inf  # the padding: it never wins
    tap = 0
    for i in range(kh):
        iy = _tap_input(oy, i, sh, ph)
        for j in range(kw):
            ix = _tap_input(ox, j, sw, pw)
            if 0 <= iy < x.shape[2] and 0 <= ix < x.shape[3] and x[n, c, iy, ix] > best:  # strict: first wins
                best = x[n, c, iy, ix]
                tap = i * kw + j
    y[n, c, oy, ox] = best
    argmax[n, c, oy, ox] = tap


def max_pool2d_forward(x, kernel, stride, padding):
    """Returns (y, argmax) where argmax in [0, kh*kw) is the winning tap of each window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    y, argmax = _empty(x, (n, c, oh, ow), x.dtype), _empty(x, (n, c, oh, ow), np.int32)
    _launch(_max_pool_kernel, y.size)(x, kh, kw, sh, sw, ph, pw, y, argmax)
    return y, argmax


@cuda.jit
def _max_pool_backward_kernel(grad_out, argmax, kh, kw, sh, sw, ph, pw, dx):
    """Thread (n, c, iy, ix): the sum of dy over the windows that (iy, ix) won."""
    k = cuda.grid(1)
    _, channels, h, w = dx.shape
    if k >= dx.size:
        return
    n, c, iy, ix = _unravel4(k, channels, h, w)
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    total = 0.0
    for i in range(kh):
        oy = _tap_output(iy, i, sh, ph, oh)
        if oy < 0:
            continue
        for j in range(kw):
            ox = _tap_output(ix, j, sw, pw, ow)
            if ox >= 0 and argmax[n, c, oy, ox] == i * kw + j:
                total += grad_out[n, c, oy, ox]
    dx[n, c, iy, ix] = total


def max_pool2d_backward(grad_out, argmax, x_shape, kernel, stride, padding):
    """Route each output gradient to the input pixel that won its window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    dx = _empty(grad_out, tuple(x_shape), grad_out.dtype)
    _launch(_max_pool_backward_kernel, dx.size)(grad_out, argmax, kh, kw, sh, sw, ph, pw, dx)
    return dx


@cuda.jit
def _avg_pool_kernel(x, kh, kw, sh, sw, ph, pw, y):
    """Thread (n, c, oy, ox): the sum of the window's inputs / (kh*kw); taps in the padding add 0 but still count."""
    k = cuda.grid(1)
    _, channels, oh, ow = y.shape
    if k >= y.size:
        return
    n, c, oy, ox = _unravel4(k, channels, oh, ow)
    total = 0.0
    for i in range(kh):
        iy = _tap_input(oy, i, sh, ph)
        for j in range(kw):
            ix = _tap_input(ox, j, sw, pw)
            if 0 <= iy < x.shape[2] and 0 <= ix < x.shape[3]:
                total += x[n, c, iy, ix]
    y[n, c, oy, ox] = total / (kh * kw)


def avg_pool2d_forward(x, kernel, stride, padding):
    """Window mean; padded zeros count in the divisor (PyTorch's count_include_pad=True)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    y = _empty(x, (n, c, oh, ow), x.dtype)
    _launch(_avg_pool_kernel, y.size)(x, kh, kw, sh, sw, ph, pw, y)
    return y


@cuda.jit
def _avg_pool_backward_kernel(grad_out, kh, kw, sh, sw, ph, pw, dx):
    """Thread (n, c, iy, ix): the sum of dy / (kh*kw) over the windows that cover (iy, ix)."""
    k = cuda.grid(1)
    _, channels, h, w = dx.shape
    if k >= dx.size:
        return
    n, c, iy, ix = _unravel4(k, channels, h, w)
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    total = 0.0
    for i in range(kh):
        oy = _tap_output(iy, i, sh, ph, oh)
        if oy < 0:
            continue
        for j in range(kw):
            ox = _tap_output(ix, j, sw, pw, ow)
            if ox >= 0:
                total += grad_out[n, c, oy, ox]
    dx[n, c, iy, ix] = total / (kh * kw)


def avg_pool2d_backward(grad_out, x_shape, kernel, stride, padding):
    """Spread each output gradient evenly over its window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    dx = _empty(grad_out, tuple(x_shape), grad_out.dtype)
    _launch(_avg_pool_backward_kernel, dx.size)(grad_out, kh, kw, sh, sw, ph, pw, dx)
    return dx
