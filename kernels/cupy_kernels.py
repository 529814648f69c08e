"""CuPy kernels: the reference's functions as CUDA C (RawKernel, ElementwiseKernel, ReductionKernel), cuBLAS for GEMMs.

Read this file next to ``numpy_ref.py`` and ``numba_cuda.py``: the same
functions with the same signatures, taking and returning CuPy arrays. The
window kernels (im2col, col2im, pooling) are written in CUDA C with one thread
per output element; col2im and the pooling backwards *gather* (each input
pixel sums the outputs that read it), so no two threads write one element.
Elementwise ops are ``ElementwiseKernel``s, the batch-norm sums are
``ReductionKernel``s over (N, H, W) accumulated in double, and the
convolution GEMMs are ``cupy.matmul`` (cuBLAS).

Importing this module needs CuPy and a usable GPU; the registry turns the
ImportError into a one-line message saying what to install.
"""
import functools
import math

import cupy
import numpy as np

from ._index import conv_output_size

if not cupy.is_available():
    raise ImportError("cupy is installed but finds no usable CUDA GPU")

NAME = "cupy"
THREADS = 256  # threads per block


# ---------------------------------------------------------------- the window kernels, in CUDA C
#
# T is float or double: the source is compiled once per dtype with a typedef in
# front (see _kernel). Integers are long long so that N*C*H*W never overflows.
# The index helpers are those of _index.py, written in C.

_SOURCE = r"""
typedef long long i64;

// input coordinate read by tap `tap` at output position `out_pos` (may lie in the padding)
__device__ i64 tap_input(i64 out_pos, i64 tap, i64 stride, i64 padding) {
    return out_pos * stride + tap - padding;
}

// output position whose tap `tap` reads input coordinate `in_pos`, or -1 if there is none
__device__ i64 tap_output(i64 in_pos, i64 tap, i64 stride, i64 padding, i64 out_size) {
    i64 t = in_pos + padding - tap;
    if (t < 0 || t % stride != 0) return -1;
    i64 o = t / stride;
    return o < out_size ? o : -1;
}

__device__ i64 thread_index() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }

// one thread per entry of cols (C*kh*kw, N*OH*OW):
// cols[(c, i, j), (n, oy, ox)] = x[n, c, oy*sh + i - ph, ox*sw + j - pw], or 0 in the padding
extern "C" __global__ void im2col(const T* x, i64 n, i64 c, i64 h, i64 w, i64 kh, i64 kw,
                                  i64 sh, i64 sw, i64 ph, i64 pw, i64 oh, i64 ow, T* cols) {
    i64 k = thread_index(), columns = n * oh * ow;
    if (k >= c * kh * kw * columns) return;
    i64 row = k / columns, column = k % columns;
    i64 ch = row / (kh * kw), i = row / kw % kh, j = row % kw;
    i64 b = column / (oh * ow), oy = column / ow % oh, ox = column % ow;
    i64 iy = tap_input(oy, i, sh, ph), ix = tap_input(ox, j, sw, pw);
    bool inside = 0 <= iy && iy < h && 0 <= ix && ix < w;
    cols[k] = inside ? x[((b * c + ch) * h + iy) * w + ix] : (T)0;
}

// one thread per image pixel (n, c, iy, ix): the sum of the cols entries that im2col copied from it
extern "C" __global__ void col2im(const T* cols, i64 n, i64 c, i64 h, i64 w, i64 kh, i64 kw,
                                  i64 sh, i64 sw, i64 ph, i64 pw, i64 oh, i64 ow, T* x) {
    i64 k = thread_index();
    if (k >= n * c * h * w) return;
    i64 b = k / (c * h * w), ch = k / (h * w) % c, iy = k / w % h, ix = k % w;
    T total = 0;
    for (i64 i = 0; i < kh; ++i) {
        i64 oy = tap_output(iy, i, sh, ph, oh);
        if (oy < 0) continue;
        for (i64 j = 0; j < kw; ++j) {
            i64 ox = tap_output(ix, j, sw, pw, ow);
            if (ox < 0) continue;
            total += cols[((ch * kh + i) * kw + j) * (n * oh * ow) + (b * oh + oy) * ow + ox];
        }
    }
    x[k] = total;
}

// one thread per output (n, c, oy, ox): the largest input in the window and its tap i*kw + j;
// the padding holds `padding_value` (-inf), and a later tap must be strictly larger to win
extern "C" __global__ void max_pool(const T* x, i64 n, i64 c, i64 h, i64 w, i64 kh, i64 kw,
                                    i64 sh, i64 sw, i64 ph, i64 pw, i64 oh, i64 ow, T padding_value,
                                    T* y, int* argmax) {
    i64 k = thread_index();
    if (k >= n * c * oh * ow) return;
    i64 plane = k / (oh * ow), oy = k / ow % oh, ox = k % ow;
    T best = padding_value;
    int tap = 0;
    for (i64 i = 0; i < kh; ++i) {
        i64 iy = tap_input(oy, i, sh, ph);
        for (i64 j = 0; j < kw; ++j) {
            i64 ix = tap_input(ox, j, sw, pw);
            if (0 <= iy && iy < h && 0 <= ix && ix < w && x[(plane * h + iy) * w + ix] > best) {
                best = x[(plane * h + iy) * w + ix];
                tap = (int)(i * kw + j);
            }
        }
    }
    y[k] = best;
    argmax[k] = tap;
}

// one thread per input pixel (n, c, iy, ix): the sum of dy over the windows that it won
extern "C" __global__ void max_pool_backward(const T* grad_out, const int* argmax, i64 n, i64 c,
                                             i64 h, i64 w, i64 kh, i64 kw, i64 sh, i64 sw,
                                             i64 ph, i64 pw, i64 oh, i64 ow, T* dx) {
    i64 k = thread_index();
    if (k >= n * c * h * w) return;
    i64 plane = k / (h * w), iy = k / w % h, ix = k % w;
    T total = 0;
    for (i64 i = 0; i < kh; ++i) {
        i64 oy = tap_output(iy, i, sh, ph, oh);
        if (oy < 0) continue;
        for (i64 j = 0; j < kw; ++j) {
            i64 ox = tap_output(ix, j, sw, pw, ow);
            i64 out = (plane * oh + oy) * ow + ox;
            if (ox >= 0 && argmax[out] == i * kw + j) total += grad_out[out];
        }
    }
    dx[k] = total;
}

// one thread per output (n, c, oy, ox): the sum of the window / (kh*kw); padded taps count as 0
extern "C" __global__ void avg_pool(const T* x, i64 n, i64 c, i64 h, i64 w, i64 kh, i64 kw,
                                    i64 sh, i64 sw, i64 ph, i64 pw, i64 oh, i64 ow, T* y) {
    i64 k = thread_index();
    if (k >= n * c * oh * ow) return;
    i64 plane = k / (oh * ow), oy = k / ow % oh, ox = k % ow;
    T total = 0;
    for (i64 i = 0; i < kh; ++i) {
        i64 iy = tap_input(oy, i, sh, ph);
        for (i64 j = 0; j < kw; ++j) {
            i64 ix = tap_input(ox, j, sw, pw);
            if (0 <= iy && iy < h && 0 <= ix && ix < w) total += x[(plane * h + iy) * w + ix];
        }
    }
    y[k] = total / (T)(kh * kw);
}

// one thread per input pixel (n, c, iy, ix): the sum of dy / (kh*kw) over the windows that cover it
extern "C" __global__ void avg_pool_backward(const T* grad_out, i64 n, i64 c, i64 h, i64 w,
                                             i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw,
                                             i64 oh, i64 ow, T* dx) {
    i64 k = thread_index();
    if (k >= n * c * h * w) return;
    i64 plane = k / (h * w), iy = k / w % h, ix = k % w;
    T total = 0;
    for (i64 i = 0; i < kh; ++i) {
        i64 oy = tap_output(iy, i, sh, ph, oh);
        if (oy < 0) continue;
        for (i64 j = 0; j < kw; ++j) {
            i64 ox = tap_output(ix, j, sw, pw, ow);
            if (ox >= 0) total += grad_out[(plane * oh + oy) * ow + ox];
        }
    }
    dx[k] = total / (T)(kh * kw);
}
"""

_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


@functools.lru_cache(maxsize=None)
def _module(dtype):
    """The window kernels compiled for one dtype (CuPy caches the binary on disk too)."""
    if dtype not in _C_TYPES:
        raise TypeError(f"the cupy kernels support float32 and float64, got {dtype}")
    return cupy.RawModule(code=f"typedef {_C_TYPES[dtype]} T;\n" + _SOURCE)


def _launch(name, dtype, size, *args):
    """Run window kernel ``name`` with one thread per element of a ``size``-element output."""
    kernel = _module(np.dtype(dtype)).get_function(name)
    args = tuple(np.int64(a) if isinstance(a, (int, np.integer)) else a for a in args)
    kernel((max(1, math.ceil(size / THREADS)),), (THREADS,), args)


def _c(a):
    return cupy.ascontiguousarray(a)


# ---------------------------------------------------------------- im2col / col2im

def im2col(x, kh, kw, stride, padding):
    """Unfold x (N, C, H, W) into columns (C*kh*kw, N*OH*OW): row (c, i, j) is what tap (i, j) of channel c sees."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    cols = cupy.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    _launch("im2col", x.dtype, cols.size, _c(x), n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow, cols)
    return cols


def col2im(cols, x_shape, kh, kw, stride, padding):
    """The adjoint of im2col: sum columns (C*kh*kw, N*OH*OW) back into an (N, C, H, W) image."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x_shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    x = cupy.empty((n, c, h, w), dtype=cols.dtype)
    _launch("col2im", cols.dtype, x.size, _c(cols), n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow, x)
    return x


# ---------------------------------------------------------------- convolution

def conv2d_forward(x, weight, stride, padding):
    """y = W * x as one GEMM: (O, C*kh*kw) @ (C*kh*kw, N*OH*OW) -> (N, O, OH, OW)."""
    n = x.shape[0]
    o, _, kh, kw = weight.shape
    y = cupy.matmul(weight.reshape(o, -1), im2col(x, kh, kw, stride, padding))  # cuBLAS
    oh = conv_output_size(x.shape[2], kh, stride[0], padding[0])
    ow = conv_output_size(x.shape[3], kw, stride[1], padding[1])
    return cupy.ascontiguousarray(y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3))


def _grad_rows(grad_out):
    """(N, O, OH, OW) -> (O, N*OH*OW), the layout of the forward GEMM's output."""
    o = grad_out.shape[1]
    return cupy.ascontiguousarray(grad_out.transpose(1, 0, 2, 3)).reshape(o, -1)


def conv2d_backward_input(grad_out, weight, x_shape, stride, padding):
    """dx = col2im(W^T @ dy)."""
    o, _, kh, kw = weight.shape
    dcols = cupy.matmul(weight.reshape(o, -1).T, _grad_rows(grad_out))
    return col2im(dcols, x_shape, kh, kw, stride, padding)


def conv2d_backward_weight(grad_out, x, weight_shape, stride, padding):
    """dW = dy @ im2col(x)^T; the columns are recomputed rather than kept from forward."""
    _, _, kh, kw = weight_shape
    cols = im2col(x, kh, kw, stride, padding)
    return cupy.matmul(_grad_rows(grad_out), cols.T).reshape(weight_shape)


# ---------------------------------------------------------------- residual add

_residual_add = cupy.ElementwiseKernel(
    "T f, T s, bool relu", "T y",
    "T v = f + s; y = (relu && v < (T)0) ? (T)0 : v;",
    "minires_residual_add")

_relu_mask = cupy.ElementwiseKernel(
    "T dy, T y", "T g",
    "g = y > (T)0 ? dy : (T)0;",
    "minires_relu_mask")


def residual_add_forward(f, s, relu):
    """y = relu(f + s) (or f + s)."""
    return _residual_add(f, s, bool(relu))


def residual_add_backward(grad_out, y, relu):
    """Returns (grad into the residual branch, grad into the shortcut), both g = dy * (y > 0).

    The add passes g unchanged to each input; the shortcut's copy is the "1"
    of dx = g (1 + dF/dx).
    """
    g = _relu_mask(grad_out, y) if relu else grad_out
    return g, g


# ---------------------------------------------------------------- batch norm

_AXES = (0, 2, 3)  # batch norm reduces over N, H and W, per channel

_channel_sum = cupy.ReductionKernel(
    "T x", "T total", "x", "a + b", "total = a", "0", "minires_channel_sum", reduce_type="double")

_channel_squares = cupy.ReductionKernel(
    "T x, T mean", "T total", "((double)x - mean) * ((double)x - mean)", "a + b", "total = a", "0",
    "minires_channel_squares", reduce_type="double")

_channel_dy_xhat = cupy.ReductionKernel(
    "T dy, T x, T mean, T invstd", "T total", "(double)dy * (((double)x - mean) * invstd)", "a + b",
    "total = a", "0", "minires_channel_dy_xhat", reduce_type="double")

_affine = cupy.ElementwiseKernel(
    "T x, T scale, T shift", "T y", "y = x * scale + shift", "minires_affine")

_bn_backward_dx = cupy.ElementwiseKernel(
    "T dy, T x, T mean, T invstd, T scale, T mean_dy, T mean_dy_xhat", "T dx",
    "dx = (dy - mean_dy - (x - mean) * invstd * mean_dy_xhat) * scale",
    "minires_bn_backward_dx")


def _per_channel(v):
    """(C,) -> (1, C, 1, 1), to broadcast against (N, C, H, W)."""
    return v.reshape(1, -1, 1, 1)


def batch_norm_stats(x):
    """Per-channel mean and biased variance over (N, H, W) of x (N, C, H, W), two passes with double sums."""
    m = x.size // x.shape[1]
    mean = _channel_sum(x, axis=_AXES) / x.dtype.type(m)
    var = _channel_squares(x, _per_channel(mean), axis=_AXES) / x.dtype.type(m)
    return mean, var


def batch_norm_forward(x, scale, shift):
    """y = x * scale + shift, per channel."""
    return _affine(x, _per_channel(scale), _per_channel(shift))


def batch_norm_grad_sums(grad_out, x, mean, invstd):
    """(dbias, dweight) = (sum(dy), sum(dy * xhat)) per channel over (N, H, W), xhat = (x - mean) * invstd."""
    dbias = _channel_sum(grad_out, axis=_AXES)
    dweight = _channel_dy_xhat(grad_out, x, _per_channel(mean), _per_channel(invstd), axis=_AXES)
    return dbias, dweight


def batch_norm_backward_input(grad_out, x, mean, invstd, scale, dbias, dweight):
    """dx = scale * (dy - dbias / M - xhat * dweight / M), M = N*H*W: the input gradient with batch statistics."""
    m = x.dtype.type(grad_out.size // grad_out.shape[1])
    return _bn_backward_dx(grad_out, x, _per_channel(mean), _per_channel(invstd), _per_channel(scale),
                           _per_channel(dbias / m), _per_channel(dweight / m))


# ---------------------------------------------------------------- pooling

def max_pool2d_forward(x, kernel, stride, padding):
    """Returns (y, argmax) where argmax in [0, kh*kw) is the winning tap of each window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    y = cupy.empty((n, c, oh, ow), dtype=x.dtype)
    argmax = cupy.empty((n, c, oh, ow), dtype=np.int32)
    _launch("max_pool", x.dtype, y.size, _c(x), n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow,
            x.dtype.type(-np.inf), y, argmax)
    return y, argmax


def max_pool2d_backward(grad_out, argmax, x_shape, kernel, stride, padding):
    """Route each output gradient to the input pixel that won its window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x_shape
    oh, ow = grad_out.shape[2:]
    dx = cupy.empty((n, c, h, w), dtype=grad_out.dtype)
    _launch("max_pool_backward", grad_out.dtype, dx.size, _c(grad_out), _c(argmax).astype(np.int32, copy=False),
            n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow, dx)
    return dx


def avg_pool2d_forward(x, kernel, stride, padding):
    """Window mean; padded zeros count in the divisor (PyTorch's count_include_pad=True)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    y = cupy.empty((n, c, oh, ow), dtype=x.dtype)
    _launch("avg_pool", x.dtype, y.size, _c(x), n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow, y)
    return y


def avg_pool2d_backward(grad_out, x_shape, kernel, stride, padding):
    """Spread each output gradient evenly over its window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x_shape
    oh, ow = grad_out.shape[2:]
    dx = cupy.empty((n, c, h, w), dtype=grad_out.dtype)
    _launch("avg_pool_backward", grad_out.dtype, dx.size, _c(grad_out), n, c, h, w, kh, kw, sh, sw, ph, pw,
            oh, ow, dx)
    return dx
