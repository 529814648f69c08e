"""The CuPy backend's groundwork, and its kernels that no exercise hands out (pooling, SGD's update).

CUDA C is compiled once per source and dtype, with ``typedef float T;`` (or
double) and ``_PRELUDE`` in front, and each kernel object is made once: CuPy's
``get_function`` builds a new one at every call. ``window`` gives the window
kernels their integer arguments. ``probe`` runs a few kernels at import:
``cupy.is_available()`` needs only the driver, so a CuPy installed without its
CUDA libraries (libnvrtc.so.12, libcublas.so.12) says True and fails at the
first kernel instead.

``_PRELUDE``, ``_POOL_SOURCE`` and ``_ELEMENTWISE`` are literals on purpose:
tests/test_gpu_compile.py reads them from this file without CuPy or a GPU and
compiles them with NVRTC.
"""
import functools
import math

import cupy
import numpy as np

from ._index import conv_output_size

if not cupy.is_available():
    raise ImportError("cupy is installed but finds no usable CUDA GPU")

THREADS = 256  # threads per block; the prelude's BLOCK is the same number (the reductions' shared arrays)

# in front of every source: 64-bit integers (N*C*H*W never overflows), the index helpers of _index.py in C
_PRELUDE = r"""
typedef long long i64;
#define BLOCK 256

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

"""

_POOL_SOURCE = r"""
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
assert f"#define BLOCK {THREADS}\n" in _PRELUDE


@functools.lru_cache(maxsize=None)
def module(source, dtype):
    """``source``'s kernels compiled for one dtype (CuPy caches the binary on disk too).

    The text compiled is "typedef <float|double> T;\n" + _PRELUDE + source; the compile check builds the same.
    """
    if dtype not in _C_TYPES:
        raise TypeError(f"the cupy kernels support float32 and float64, got {dtype}")
    return cupy.RawModule(code=f"typedef {_C_TYPES[dtype]} T;\n" + _PRELUDE + source)


@functools.lru_cache(maxsize=None)
def function(source, name, dtype):
    """Kernel ``name`` of ``module(source, dtype)``, made once per (source, name, dtype)."""
    return module(source, dtype).get_function(name)


def launch(source, name, dtype, size, *args, grid=None):
    """Run kernel ``name``: one thread per element of a ``size``-element output, or on ``grid`` blocks."""
    kernel = function(source, name, np.dtype(dtype))
    args = tuple(np.int64(a) if isinstance(a, (int, np.integer)) else a for a in args)
    kernel(grid or (max(1, math.ceil(size / THREADS)),), (THREADS,), args)


def contiguous(a):
    return cupy.ascontiguousarray(a)


def window(x_shape, kernel, stride, padding):
    """(n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow): the window kernels' integer arguments."""
    (n, c, h, w), (kh, kw), (sh, sw), (ph, pw) = x_shape, kernel, stride, padding
    return n, c, h, w, kh, kw, sh, sw, ph, pw, conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)


# ---------------------------------------------------------------- pooling

def max_pool2d_forward(x, kernel, stride, padding):
    """Returns (y, argmax) where argmax in [0, kh*kw) is the winning tap of each window."""
    sizes = window(x.shape, kernel, stride, padding)
    y = cupy.empty((*x.shape[:2], *sizes[-2:]), dtype=x.dtype)
    argmax = cupy.empty(y.shape, dtype=np.int32)
    launch(_POOL_SOURCE, "max_pool", x.dtype, y.size, contiguous(x), *sizes, x.dtype.type(-np.inf), y, argmax)
    return y, argmax


def max_pool2d_backward(grad_out, argmax, x_shape, kernel, stride, padding):
    """Route each output gradient to the input pixel that won its window."""
    dx = cupy.empty(tuple(x_shape), dtype=grad_out.dtype)
    launch(_POOL_SOURCE, "max_pool_backward", grad_out.dtype, dx.size, contiguous(grad_out),
           contiguous(argmax).astype(np.int32, copy=False), *window(x_shape, kernel, stride, padding), dx)
    return dx


def avg_pool2d_forward(x, kernel, stride, padding):
    """Window mean; padded zeros count in the divisor (PyTorch's count_include_pad=True)."""
    sizes = window(x.shape, kernel, stride, padding)
    y = cupy.empty((*x.shape[:2], *sizes[-2:]), dtype=x.dtype)
    launch(_POOL_SOURCE, "avg_pool", x.dtype, y.size, contiguous(x), *sizes, y)
    return y


def avg_pool2d_backward(grad_out, x_shape, kernel, stride, padding):
    """Spread each output gradient evenly over its window."""
    dx = cupy.empty(tuple(x_shape), dtype=grad_out.dtype)
    launch(_POOL_SOURCE, "avg_pool_backward", grad_out.dtype, dx.size, contiguous(grad_out),
           *window(x_shape, kernel, stride, padding), dx)
    return dx


# ---------------------------------------------------------------- SGD's update, one kernel per parameter
#
# name -> (input parameters, output parameters, operation): cupy.ElementwiseKernel's arguments; the
# outputs are the parameter (and momentum buffer), updated in place. The arithmetic of optim.sgd_update:
# d = g + wd p; buf = d (first step) or momentum buf + (1 - dampening) d; d = d + momentum buf (Nesterov)
# or buf; p = p - lr d.

_ELEMENTWISE = {
    "minires_sgd": ("T g, T lr, T wd", "T p", "T d = wd != (T)0 ? g + wd * p : g; p = p - lr * d;"),
    "minires_sgd_momentum": (
        "T g, T lr, T wd, T momentum, T one_minus_dampening, bool nesterov, bool first", "T p, T buf",
        "T d = wd != (T)0 ? g + wd * p : g; "
        "T b = first ? d : momentum * buf + one_minus_dampening * d; "
        "buf = b; "
        "d = nesterov ? d + momentum * b : b; "
        "p = p - lr * d;"),
}

_ew = {name: cupy.ElementwiseKernel(*spec, name=name) for name, spec in _ELEMENTWISE.items()}


def sgd_update(p, g, buf, lr, weight_decay, momentum, one_minus_dampening, nesterov, first):
    """optim.sgd_update in one kernel: p (and buf, None without momentum) updated in place."""
    t = p.dtype.type
    if buf is None:
        _ew["minires_sgd"](g, t(lr), t(weight_decay), p)
    else:
        _ew["minires_sgd_momentum"](g, t(lr), t(weight_decay), t(momentum), t(one_minus_dampening),
                                    bool(nesterov), bool(first), p, buf)


# ---------------------------------------------------------------- can this GPU run them?

def probe(run):
    """Call ``run()`` (a few kernels and a GEMM) and wait for the GPU; any failure becomes an ImportError saying why."""
    try:
        run()
        cupy.cuda.runtime.deviceSynchronize()
    except Exception as exc:  # CompileException, a missing library (OSError, RuntimeError), a CUDA error
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise ImportError(f"CuPy sees a GPU but cannot compile or run a kernel on it ({reason}); CuPy needs "
                          "its NVRTC and cuBLAS: pip install 'minires[cuda]' installs them "
                          "(cupy-cuda12x[ctk])") from None
