"""CuPy kernels: the reference's functions as CUDA C (RawModule, ElementwiseKernel), cuBLAS for GEMMs.

Read this file next to ``numpy_ref.py`` and ``numba_cuda.py``: the same
functions with the same signatures, taking and returning CuPy arrays. The
window kernels (im2col, col2im; pooling in ``cupy_base.py``) are written in
CUDA C with one thread per output element; col2im *gathers* (each input pixel
sums the outputs that read it), so no two threads write one element. The
batch-norm sums split every channel over several blocks, so that even 16
channels fill a GPU of a hundred SMs. Elementwise ops are ``ElementwiseKernel``s
(SGD's fused update too, in ``cupy_base.py``). The convolution GEMMs are
``cupy.matmul`` (cuBLAS), batched over the images so that the forward writes
NCHW directly; a 1x1 convolution is a GEMM and nothing else.

``_SOURCE`` and ``_ELEMENTWISE`` are literals on purpose: the compile check
(tests/test_gpu_compile.py) reads them from this file without CuPy or a GPU
and compiles them with NVRTC. Importing this module needs CuPy, a usable GPU,
and CuPy's NVRTC and cuBLAS: it compiles and runs a few kernels and a GEMM
first (``cupy_base.probe``), and the registry turns a failure into one line.
"""
import functools

import cupy
import numpy as np

from ._index import conv_output_size
from .cupy_base import (THREADS, avg_pool2d_backward, avg_pool2d_forward, contiguous as _c,  # noqa: F401
                        launch, max_pool2d_backward, max_pool2d_forward, probe, sgd_update, window as _window)

NAME = "cupy"


# ---------------------------------------------------------------- the kernels in CUDA C
#
# T is float or double: cupy_base.module compiles the source once per dtype, with "typedef float T;" (or
# double) and cupy_base's prelude in front: 64-bit integers (i64), BLOCK, the index helpers of _index.py.

_SOURCE = r"""
// where column entry (row, image b, pixel p) lies: batch_major lays the columns out (N, rows, OH*OW), one
// matrix per image for a batched GEMM; else (rows, N*OH*OW), one matrix for the whole batch
__device__ i64 col_offset(i64 row, i64 b, i64 p, i64 rows, i64 n, i64 pixels, i64 batch_major) {
    return batch_major ? (b * rows + row) * pixels + p : row * (n * pixels) + b * pixels + p;
}

// one thread per column entry: cols[(c, i, j), (n, oy, ox)] = x[n, c, oy*sh + i - ph, ox*sw + j - pw], or 0
extern "C" __global__ void im2col(const T* x, i64 n, i64 c, i64 h, i64 w, i64 kh, i64 kw, i64 sh, i64 sw,
                                  i64 ph, i64 pw, i64 oh, i64 ow, i64 batch_major, T* cols) {
    i64 k = thread_index(), rows = c * kh * kw, pixels = oh * ow;
    if (k >= rows * n * pixels) return;
    i64 b, row, p;
    if (batch_major) { b = k / (rows * pixels); row = k / pixels % rows; p = k % pixels; }
    else { row = k / (n * pixels); b = k / pixels % n; p = k % pixels; }
    i64 ch = row / (kh * kw), i = row / kw % kh, j = row % kw, oy = p / ow, ox = p % ow;
    i64 iy = tap_input(oy, i, sh, ph), ix = tap_input(ox, j, sw, pw);
    bool inside = 0 <= iy && iy < h && 0 <= ix && ix < w;
    cols[k] = inside ? x[((b * c + ch) * h + iy) * w + ix] : (T)0;
}

// one thread per image pixel (n, c, iy, ix): the sum of the column entries that im2col copied from it
extern "C" __global__ void col2im(const T* cols, i64 n, i64 c, i64 h, i64 w, i64 kh, i64 kw, i64 sh, i64 sw,
                                  i64 ph, i64 pw, i64 oh, i64 ow, i64 batch_major, T* x) {
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
            total += cols[col_offset((ch * kh + i) * kw + j, b, oy * ow + ox, c * kh * kw, n, oh * ow,
                                     batch_major)];
        }
    }
    x[k] = total;
}

// ---- the batch-norm sums over (N, H, W), per channel, in double, in two launches:
// *_partials: grid (parts, C); block (part, c) sums its share of channel c's N*H*W values into
//             partials[(c * parts + part) * 2 + {0, 1}] (a warp reads consecutive pixels of one plane);
// *_finish:   one block per channel adds its `parts` partials and writes the results.

// the sums of a and b over the block (a tree in shared memory), in thread 0; the block has BLOCK threads
__device__ void block_sum2(double& a, double& b) {
    __shared__ double sa[BLOCK], sb[BLOCK];
    unsigned t = threadIdx.x;
    sa[t] = a;
    sb[t] = b;
    __syncthreads();
    for (unsigned step = BLOCK / 2; step > 0; step /= 2) {
        if (t < step) { sa[t] += sa[t + step]; sb[t] += sb[t + step]; }
        __syncthreads();
    }
    a = sa[0];
    b = sb[0];
}

// in thread 0 of block c: the sums of channel c's `parts` pairs of partials
__device__ void channel_totals(i64 parts, const double* partials, double& s1, double& s2) {
    s1 = 0;
    s2 = 0;
    for (i64 s = threadIdx.x; s < parts; s += BLOCK) {
        s1 += partials[(blockIdx.x * parts + s) * 2];
        s2 += partials[(blockIdx.x * parts + s) * 2 + 1];
    }
    block_sum2(s1, s2);
}

// sum(x - shift) and sum((x - shift)^2), shift = x[0, c, 0, 0]: a value of the channel, so that the
// variance keeps its digits when the mean is far from 0
extern "C" __global__ void bn_stats_partials(const T* x, i64 n, i64 c, i64 hw, double* partials) {
    i64 part = blockIdx.x, parts = gridDim.x, ch = blockIdx.y, m = n * hw;
    double shift = (double)x[ch * hw], s1 = 0, s2 = 0;
    for (i64 k = part * BLOCK + threadIdx.x; k < m; k += parts * BLOCK) {
        double v = (double)x[(k / hw * c + ch) * hw + k % hw] - shift;
        s1 += v;
        s2 += v * v;
    }
    block_sum2(s1, s2);
    if (threadIdx.x == 0) { partials[(ch * parts + part) * 2] = s1; partials[(ch * parts + part) * 2 + 1] = s2; }
}

// mean = shift + s1 / M, var = s2 / M - (s1 / M)^2 (biased, never below 0)
extern "C" __global__ void bn_stats_finish(const T* x, i64 hw, i64 m, i64 parts, const double* partials,
                                           T* mean, T* var) {
    double s1, s2;
    channel_totals(parts, partials, s1, s2);
    i64 ch = blockIdx.x;
    if (threadIdx.x == 0) {
        double d = s1 / m, v = s2 / m - d * d;
        mean[ch] = (T)((double)x[ch * hw] + d);
        var[ch] = (T)(v > 0 ? v : 0);
    }
}

// sum(dy) and sum(dy * xhat), xhat = (x - mean) * invstd
extern "C" __global__ void bn_grad_partials(const T* dy, const T* x, const T* mean, const T* invstd,
                                            i64 n, i64 c, i64 hw, double* partials) {
    i64 part = blockIdx.x, parts = gridDim.x, ch = blockIdx.y, m = n * hw;
    double mu = mean[ch], is = invstd[ch], s1 = 0, s2 = 0;
    for (i64 k = part * BLOCK + threadIdx.x; k < m; k += parts * BLOCK) {
        i64 at = (k / hw * c + ch) * hw + k % hw;
        double g = dy[at];
        s1 += g;
        s2 += g * (((double)x[at] - mu) * is);
    }
    block_sum2(s1, s2);
    if (threadIdx.x == 0) { partials[(ch * parts + part) * 2] = s1; partials[(ch * parts + part) * 2 + 1] = s2; }
}

extern "C" __global__ void bn_grad_finish(i64 parts, const double* partials, T* dbias, T* dweight) {
    double s1, s2;
    channel_totals(parts, partials, s1, s2);
    if (threadIdx.x == 0) { dbias[blockIdx.x] = (T)s1; dweight[blockIdx.x] = (T)s2; }
}
"""



def _launch(name, dtype, size, *args, grid=None):
    launch(_SOURCE, name, dtype, size, *args, grid=grid)


# ---------------------------------------------------------------- elementwise kernels
#
# name -> (input parameters, output parameters, operation): cupy.ElementwiseKernel's arguments. Parameters
# that come as (1, C, 1, 1) arrays broadcast over (N, C, H, W); outputs given as arrays are updated in place.

_ELEMENTWISE = {
    "minires_residual_add": ("T f, T s, bool relu", "T y", "T v = f + s; y = (relu && v < (T)0) ? (T)0 : v;"),
    "minires_relu_mask": ("T dy, T y", "T g", "g = y > (T)0 ? dy : (T)0;"),
    "minires_affine": ("T x, T scale, T shift", "T y", "y = x * scale + shift;"),
    "minires_bn_backward_dx": (
        "T dy, T x, T mean, T invstd, T scale, T dbias, T dweight, T m", "T dx",
        "dx = (dy - dbias / m - (x - mean) * invstd * (dweight / m)) * scale;"),
}

_ew = {name: cupy.ElementwiseKernel(*spec, name=name) for name, spec in _ELEMENTWISE.items()}


# ---------------------------------------------------------------- im2col / col2im

def _columns(x, kh, kw, stride, padding, batch_major):
    """im2col's columns, laid out (N, C*kh*kw, OH*OW) when ``batch_major``, else (C*kh*kw, N*OH*OW)."""
    sizes = n, c, _, _, _, _, _, _, _, _, oh, ow = _window(x.shape, (kh, kw), stride, padding)
    shape = (n, c * kh * kw, oh * ow) if batch_major else (c * kh * kw, n * oh * ow)
    cols = cupy.empty(shape, dtype=x.dtype)
    _launch("im2col", x.dtype, cols.size, _c(x), *sizes, int(batch_major), cols)
    return cols


def _image(cols, x_shape, kh, kw, stride, padding, batch_major):
    """col2im of columns laid out as ``_columns`` lays them."""
    x = cupy.empty(tuple(x_shape), dtype=cols.dtype)
    _launch("col2im", cols.dtype, x.size, _c(cols), *_window(x_shape, (kh, kw), stride, padding), int(batch_major),
            x)
    return x


def im2col(x, kh, kw, stride, padding):
    """Unfold x (N, C, H, W) into columns (C*kh*kw, N*OH*OW): row (c, i, j) is what tap (i, j) of channel c sees."""
    return _columns(x, kh, kw, stride, padding, batch_major=False)


def col2im(cols, x_shape, kh, kw, stride, padding):
    """The adjoint of im2col: sum columns (C*kh*kw, N*OH*OW) back into an (N, C, H, W) image."""
    return _image(cols, x_shape, kh, kw, stride, padding, batch_major=False)


# ---------------------------------------------------------------- convolution
#
# The forward and the input gradient are GEMMs batched over the images, with the columns laid out
# (N, C*kh*kw, OH*OW): y[n] = W @ cols[n] is already NCHW, dcols[n] = W^T @ dy[n] reads dy as it lies.
# The weight gradient sums over images and pixels together, so it needs dy as (O, N*OH*OW): its one
# transpose. A 1x1 convolution without padding needs no columns: x itself (every stride-th pixel) is.

def _pointwise(kh, kw, padding):
    """True when the convolution is a plain GEMM over the channels: a 1x1 kernel without padding."""
    return kh == 1 and kw == 1 and tuple(padding) == (0, 0)


def _sampled(x, stride):
    """The pixels a 1x1 convolution with ``stride`` reads, as (N, C, OH*OW), contiguous."""
    n, c = x.shape[:2]
    if tuple(stride) != (1, 1):
        x = x[:, :, ::stride[0], ::stride[1]]
    return _c(x).reshape(n, c, -1)


def conv2d_forward(x, weight, stride, padding):
    """y = W * x as GEMMs: (O, C*kh*kw) @ (N, C*kh*kw, OH*OW) -> (N, O, OH, OW), batched over the images."""
    n, (o, c, kh, kw) = x.shape[0], weight.shape
    oh = conv_output_size(x.shape[2], kh, stride[0], padding[0])
    ow = conv_output_size(x.shape[3], kw, stride[1], padding[1])
    cols = _sampled(x, stride) if _pointwise(kh, kw, padding) else _columns(x, kh, kw, stride, padding, True)
    return cupy.matmul(_c(weight).reshape(o, c * kh * kw), cols).reshape(n, o, oh, ow)  # cuBLAS


def _grad_rows(grad_out):
    """(N, O, OH, OW) -> (O, N*OH*OW), the layout of one GEMM over the whole batch."""
    o = grad_out.shape[1]
    return cupy.ascontiguousarray(grad_out.transpose(1, 0, 2, 3)).reshape(o, -1)


def conv2d_backward_input(grad_out, weight, x_shape, stride, padding):
    """dx = col2im(W^T @ dy), the GEMM batched over the images; for a 1x1 convolution the GEMM alone."""
    (o, c, kh, kw), (n, _, oh, ow) = weight.shape, grad_out.shape
    dcols = cupy.matmul(_c(weight).reshape(o, c * kh * kw).T, _c(grad_out).reshape(n, o, oh * ow))
    if not _pointwise(kh, kw, padding):
        return _image(dcols, x_shape, kh, kw, stride, padding, batch_major=True)
    if tuple(stride) == (1, 1):
        return dcols.reshape(x_shape)
    dx = cupy.zeros(x_shape, dtype=grad_out.dtype)
    dx[:, :, ::stride[0], ::stride[1]] = dcols.reshape(n, c, oh, ow)
    return dx


def conv2d_backward_weight(grad_out, x, weight_shape, stride, padding):
    """dW = dy @ im2col(x)^T; the columns are recomputed rather than kept from forward (1x1: x's pixels)."""
    o, c, kh, kw = weight_shape
    if _pointwise(kh, kw, padding):
        cols = _c(_sampled(x, stride).transpose(1, 0, 2)).reshape(c, -1)
    else:
        cols = im2col(x, kh, kw, stride, padding)
    return cupy.matmul(_grad_rows(grad_out), cols.T).reshape(weight_shape)


# ---------------------------------------------------------------- residual add

def residual_add_forward(f, s, relu):
    """y = relu(f + s) (or f + s)."""
    return _ew["minires_residual_add"](f, s, bool(relu))


def residual_add_backward(grad_out, y, relu):
    """Returns (grad into the residual branch, grad into the shortcut), both g = dy * (y > 0).

    The add passes g unchanged to each input; the shortcut's copy is the "1"
    of dx = g (1 + dF/dx).
    """
    g = _ew["minires_relu_mask"](grad_out, y) if relu else grad_out
    return g, g


# ---------------------------------------------------------------- batch norm

@functools.lru_cache(maxsize=None)
def _multiprocessors(device_id):
    return int(cupy.cuda.Device(device_id).attributes["MultiProcessorCount"])  # read once per device


def reduction_parts(channels, per_channel, multiprocessors, threads=THREADS):
    """Blocks per channel for the batch-norm sums: about four blocks per SM in all, each with work for its threads.

    One block per channel left a GPU of 132 SMs with 16 busy for resnet20's first stage.
    """
    wanted = -(-4 * multiprocessors // max(1, channels))
    return max(1, min(wanted, -(-per_channel // threads)))


def _channel_sums(partials_kernel, finish_kernel, like, first_args, finish_args, outputs):
    """The two launches of a batch-norm sum: partials over a (parts, C) grid, then one block per channel."""
    n, c, h, w = like.shape
    parts = reduction_parts(c, n * h * w, _multiprocessors(cupy.cuda.runtime.getDevice()))
    partials = cupy.empty(c * parts * 2, dtype=np.float64)
    _launch(partials_kernel, like.dtype, 0, *first_args, n, c, h * w, partials, grid=(parts, c))
    _launch(finish_kernel, like.dtype, 0, *finish_args(parts), partials, *outputs, grid=(c,))
    return outputs


def _per_channel(v):
    """(C,) -> (1, C, 1, 1), to broadcast against (N, C, H, W)."""
    return v.reshape(1, -1, 1, 1)


def batch_norm_stats(x):
    """Per-channel mean and biased variance over (N, H, W) of x (N, C, H, W), in double, shifted by a sample."""
    x = _c(x)
    n, c, h, w = x.shape
    mean, var = cupy.empty(c, dtype=x.dtype), cupy.empty(c, dtype=x.dtype)
    return _channel_sums("bn_stats_partials", "bn_stats_finish", x, (x,),
                         lambda parts: (x, h * w, n * h * w, parts), (mean, var))


def batch_norm_forward(x, scale, shift):
    """y = x * scale + shift, per channel."""
    return _ew["minires_affine"](x, _per_channel(scale), _per_channel(shift))


def batch_norm_grad_sums(grad_out, x, mean, invstd):
    """(dbias, dweight) = (sum(dy), sum(dy * xhat)) per channel over (N, H, W), xhat = (x - mean) * invstd."""
    grad_out, x = _c(grad_out), _c(x)
    c = x.shape[1]
    dbias, dweight = cupy.empty(c, dtype=x.dtype), cupy.empty(c, dtype=x.dtype)
    return _channel_sums("bn_grad_partials", "bn_grad_finish", x, (grad_out, x, _c(mean), _c(invstd)),
                         lambda parts: (parts,), (dbias, dweight))


def batch_norm_backward_input(grad_out, x, mean, invstd, scale, dbias, dweight):
    """dx = scale * (dy - dbias / M - xhat * dweight / M), M = N*H*W: the input gradient with batch statistics."""
    m = x.dtype.type(grad_out.size // grad_out.shape[1])
    return _ew["minires_bn_backward_dx"](grad_out, x, _per_channel(mean), _per_channel(invstd),
                                         _per_channel(scale), _per_channel(dbias), _per_channel(dweight), m)


# ---------------------------------------------------------------- can this GPU run them?

def _probe_kernels():
    a = cupy.ones((2, 1, 2, 2), dtype=np.float32)
    col2im(im2col(a, 1, 1, (1, 1), (0, 0)), a.shape, 1, 1, (1, 1), (0, 0))  # NVRTC: this file's source
    avg_pool2d_forward(a, (2, 2), (1, 1), (0, 0))  # NVRTC: cupy_base's
    residual_add_forward(a, a, True)  # NVRTC: an ElementwiseKernel
    cupy.matmul(a.reshape(2, 4), a.reshape(4, 2))  # cuBLAS


probe(_probe_kernels)
