"""Numba CUDA kernels: the reference's functions as ``@cuda.jit`` kernels, one GPU thread per output element.

Read this file next to ``numpy_ref.py`` and ``numba_cpu.py``: the same
signatures, and the same ``_index.py`` helpers, compiled here with
``cuda.jit(device=True)``. Each kernel writes each output element from
exactly one thread (col2im and the pooling backwards *gather* what the CPU
versions scatter: no atomics, no races); the batch-norm sums split each
channel over several blocks that reduce in shared memory, then add the parts.

Arrays may be CuPy arrays (how minires keeps GPU tensors; Numba launches on
them through ``__cuda_array_interface__``), Numba device arrays, or host NumPy
arrays (under Numba's CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``); results come
back as the same kind. The convolution GEMMs go to cuBLAS through
``cupy.matmul``, or to NumPy on the host when CuPy is absent.
"""
import numpy as np
from numba import cuda

from ._index import conv_output_size
from .numba_cuda_base import (THREADS, _col_column, _col_row, _empty, _flat, _launch, _matmul,  # noqa: F401
                              _tap_input, _tap_output, _unravel3, _unravel4, avg_pool2d_backward,
                              avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward)

NAME = "numba-cuda"


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


_kept_rows = [None, None]  # (dy, _grad_rows(dy)) from conv2d_backward_input, for the weight gradient that follows


def _grad_rows(grad_out, keep=False):
    """(N, O, OH, OW) -> (O, N*OH*OW), the layout of the forward GEMM's output.

    A convolution's backward asks twice for the same dy (input, then weight gradient): ``keep`` holds
    the transpose for the second call, which takes it, so each backward transposes dy once.
    """
    kept, _kept_rows[:] = _kept_rows[:], [None, None]
    if kept[0] is grad_out:
        return kept[1]
    n, o, oh, ow = grad_out.shape
    rows = _swapped(grad_out, (o, n, oh * ow)).reshape(o, n * oh * ow)
    if keep:
        _kept_rows[:] = [grad_out, rows]
    return rows


def _pointwise(weight_shape, stride, padding):
    """A 1x1 convolution with stride 1 and no padding: a GEMM over the channels, x needs no im2col."""
    return tuple(weight_shape[2:]) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def conv2d_forward(x, weight, stride, padding):
    """y = W * x as one GEMM: (O, C*kh*kw) @ (C*kh*kw, N*OH*OW), brought into (N, O, OH, OW).

    1x1 (stride 1, no padding): (O, C) @ x as (N, C, H*W), batched over the images, is NCHW already.
    """
    (n, _, h, w), (o, c, kh, kw) = x.shape, weight.shape
    if _pointwise(weight.shape, stride, padding):
        return _matmul(weight.reshape(o, c), x.reshape(n, c, h * w)).reshape(n, o, h, w)
    oh, ow = conv_output_size(h, kh, stride[0], padding[0]), conv_output_size(w, kw, stride[1], padding[1])
    rows = _matmul(weight.reshape(o, c * kh * kw), im2col(x, kh, kw, stride, padding))
    return _swapped(rows, (n, o, oh * ow)).reshape(n, o, oh, ow)


def conv2d_backward_input(grad_out, weight, x_shape, stride, padding):
    """dx = col2im(W^T @ dy); 1x1: W^T @ dy as (N, O, H*W), batched over the images."""
    o, c, kh, kw = weight.shape
    if _pointwise(weight.shape, stride, padding):
        n, _, h, w = grad_out.shape
        return _matmul(weight.reshape(o, c), grad_out.reshape(n, o, h * w), transpose_a=True).reshape(n, c, h, w)
    dcols = _matmul(weight.reshape(o, c * kh * kw), _grad_rows(grad_out, keep=True), transpose_a=True)
    return col2im(dcols, x_shape, kh, kw, stride, padding)


def conv2d_backward_weight(grad_out, x, weight_shape, stride, padding):
    """dW = dy @ im2col(x)^T; the columns are recomputed rather than kept from forward (1x1: x as (C, N*H*W))."""
    o, c, kh, kw = weight_shape
    if _pointwise(weight_shape, stride, padding):
        n, _, h, w = x.shape
        cols = _swapped(x, (c, n, h * w)).reshape(c, n * h * w)
    else:
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
def _parts_sums(partials, c, t):
    """This thread's share of the finishing launch: the sums of partials[c, p] (both entries) over its parts p."""
    s1 = 0.0
    s2 = 0.0
    for p in range(t, partials.shape[1], cuda.blockDim.x):
        s1 += partials[c, p, 0]
        s2 += partials[c, p, 1]
    return s1, s2


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


def _parts(channels, per_channel):
    """Blocks per channel for the batch-norm sums: about four per SM in all, each with work for all its threads.

    One block per channel left a GPU of 132 SMs with 16 busy for resnet20's first stage.
    """
    sms = getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", None) or 2  # the simulator has none
    return max(1, min(-(-4 * sms // channels), -(-per_channel // THREADS)))


@cuda.jit
def _bn_stats_kernel(x, partials, mean, var, finish):
    """Two launches. First, grid (parts, C): block (p, c) sums part p of channel c, shifted by x[0, c, 0, 0]
    (a value of the channel, so the variance keeps its digits), into partials[c, p] = (sum d, sum d^2) in
    float64. Then ``finish``, grid (1, C): block c adds its parts: mean = shift + S1/M, var = S2/M - (S1/M)^2."""
    part, c, t = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
    n, _, h, w = x.shape
    m, parts = n * h * w, partials.shape[1]
    partial = cuda.shared.array(THREADS, np.float64)
    s1 = 0.0
    s2 = 0.0
    if finish:
        s1, s2 = _parts_sums(partials, c, t)
    else:
        shift = np.float64(x[0, c, 0, 0])
        for k in range(part * cuda.blockDim.x + t, m, parts * cuda.blockDim.x):
            b, iy, ix = _unravel3(k, h, w)
            d = x[b, c, iy, ix] - shift
            s1 += d
            s2 += d * d
    s1 = _block_sum(partial, s1)
    s2 = _block_sum(partial, s2)
    if t == 0 and finish:
        mu = s1 / m
        mean[c], var[c] = x[0, c, 0, 0] + mu, max(s2 / m - mu * mu, 0.0)
    elif t == 0:
        partials[c, part, 0], partials[c, part, 1] = s1, s2


def batch_norm_stats(x):
    """Per-channel mean and biased variance over (N, H, W) of x (N, C, H, W)."""
    n, c, h, w = x.shape
    parts = _parts(c, n * h * w)
    mean, var = _empty(x, (c,), x.dtype), _empty(x, (c,), x.dtype)
    partials = _empty(x, (c, parts, 2), np.float64)
    _bn_stats_kernel[(parts, c), THREADS](x, partials, mean, var, False)
    _bn_stats_kernel[(1, c), THREADS](x, partials, mean, var, True)
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
def _bn_grad_sums_kernel(grad_out, x, mean, invstd, partials, dbias, dweight, finish):
    """Two launches, as _bn_stats_kernel's: block (p, c) sums part p of dy[:, c] and dy[:, c] * xhat[:, c],
    xhat = (x - mean) * invstd, into partials[c, p]; then (``finish``) block c adds its parts into dbias[c]
    and dweight[c]."""
    part, c, t = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
    n, _, h, w = x.shape
    parts = partials.shape[1]
    partial = cuda.shared.array(THREADS, np.float64)
    sum_dy = 0.0
    sum_dy_xhat = 0.0
    if finish:
        sum_dy, sum_dy_xhat = _parts_sums(partials, c, t)
    else:
        for k in range(part * cuda.blockDim.x + t, n * h * w, parts * cuda.blockDim.x):
            b, iy, ix = _unravel3(k, h, w)
            dy = grad_out[b, c, iy, ix]
            sum_dy += dy
            sum_dy_xhat += dy * ((x[b, c, iy, ix] - mean[c]) * invstd[c])
    sum_dy = _block_sum(partial, sum_dy)
    sum_dy_xhat = _block_sum(partial, sum_dy_xhat)
    if t == 0 and finish:
        dbias[c], dweight[c] = sum_dy, sum_dy_xhat
    elif t == 0:
        partials[c, part, 0], partials[c, part, 1] = sum_dy, sum_dy_xhat


def batch_norm_grad_sums(grad_out, x, mean, invstd):
    """(dbias, dweight) = (sum(dy), sum(dy * xhat)) per channel over (N, H, W), xhat = (x - mean) * invstd."""
    n, c, h, w = x.shape
    parts = _parts(c, n * h * w)
    dbias, dweight = _empty(x, (c,), x.dtype), _empty(x, (c,), x.dtype)
    partials = _empty(x, (c, parts, 2), np.float64)
    _bn_grad_sums_kernel[(parts, c), THREADS](grad_out, x, mean, invstd, partials, dbias, dweight, False)
    _bn_grad_sums_kernel[(1, c), THREADS](grad_out, x, mean, invstd, partials, dbias, dweight, True)
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
