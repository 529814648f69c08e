"""What the Numba CUDA kernels share, and their pooling kernels (no exercise hands those out).

The checks at import (numba-cuda finds a GPU, or runs in the simulator), the
``_index.py`` helpers compiled for the GPU, the three kinds of arrays a kernel
may get (CuPy, Numba device arrays, host arrays under the simulator) and how
to make and multiply them, and the launch of one thread per output element.
``numba_cuda.py`` imports all of it; read that file first.
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
