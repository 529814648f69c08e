"""Numba CPU kernels: the reference's loops, compiled with ``@njit(parallel=True)``.

Read this file next to ``numpy_ref.py``: every public function has the same
signature and returns the same arrays. Each one allocates its output and
calls one compiled kernel that loops over pixels explicitly; ``prange``
spreads independent work (samples, (sample, channel) planes, channels) over
the cores, so no two threads ever write the same element. The convolutions
call BLAS for their GEMMs, one sample at a time inside the parallel loop, in
layouts chosen for BLAS rather than read from the reference (see
"convolution" below: pixel-major unfolded rows, shifted windows for stride
1, the NCHW image itself for 1x1). The index arithmetic lives in
``_index.py``, shared with the CUDA kernels.

Numba compiles for float32 and float64; other dtypes (float16) are served by
the NumPy reference. ``cache=True`` keeps the machine code on disk, so only
the first run pays for compilation.
"""
import contextlib
import functools
import os

# Numba's OpenMP workers spin between parallel regions by default, burning a
# core while the rest of a step (NumPy ops, BLAS outside the kernels, other
# processes) wants it: kernels ran up to 10x slower on a 2-core machine.
# Asleep, a worker costs ~60 us to wake per kernel call, which measured no
# slower over a resnet20 step than a short spin. Must be set before Numba
# loads OpenMP; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

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
# runs one big GEMM. Here each thread takes one sample at a time and keeps
# everything it touches in its core's cache. Three routes, by the shape of the
# convolution (_geometry picks one): unfolded rows (below; strided windows
# and images with few channels), shifted windows (stride 1) and pointwise
# (1x1). The rows:
#
#   1. copy the sample into a zero-bordered scratch image in HWC order
#      (channels last; the border is the padding, written once per call);
#   2. unfold it into scratch rows (OH*OW, kh*kw*C), one row per output
#      pixel: the taps i of a pixel read kw*C consecutive numbers of the HWC
#      image, so a row is kh contiguous copies;
#   3. run that sample's GEMM with a single-threaded BLAS (_gemm; see
#      _blas_threads), rows (P, K) @ W^T (K, O) -> (P, O), and copy the
#      result transposed into y[n] (O, OH, OW).
#
# Pixel-major rows make every GEMM of ResNet's skinny shapes one that BLAS
# runs near its peak (80-100 GFLOP/s a core here, against 40-60 for the
# tap-major (K, P) columns of the reference). The weights are reordered to
# (O, kh, kw, C) to match the rows, once per call.
#
# Inner loops index with the loop counter itself (over 1-D views), never with
# a computed offset: Numba then knows the index is not negative, drops its
# wraparound check, and LLVM vectorises the copy (7x faster, measured).

@njit(cache=True)
def _copy(dst, src):
    """dst[:] = src for 1-D arrays (a loop Numba vectorises)."""
    for q in range(dst.size):
        dst[q] = src[q]


@njit(cache=True)
def _add_into(dst, src):
    """dst += src for 1-D arrays."""
    for q in range(dst.size):
        dst[q] += src[q]


@njit(cache=True)
def _transpose(a, out):
    """out = a.T for a 2-D a, eight rows of a at a time (about twice as fast as element by element)."""
    m, n = a.shape
    m8 = m - m % 8
    for i0 in range(0, m8, 8):
        for j in range(n):
            dst, src = out[j, i0:i0 + 8], a[i0:i0 + 8, j]
            for q in range(8):
                dst[q] = src[q]
    for i in range(m8, m):
        for j in range(n):
            out[j, i] = a[i, j]


@njit(cache=True)
def _to_hwc(x, ph, pw, xp):
    """xp[ph + iy, pw + ix, c] = x[c, iy, ix]: one CHW sample into the interior of an HWC scratch image."""
    h, w = x.shape[1], x.shape[2]
    for iy in range(h):
        _transpose(x[:, iy, :], xp[ph + iy, pw:pw + w])


@njit(cache=True)
def _from_hwc(xp, ph, pw, x):
    """x[c, iy, ix] = xp[ph + iy, pw + ix, c]: the interior of an HWC scratch image back into a CHW sample."""
    h, w = x.shape[1], x.shape[2]
    for iy in range(h):
        _transpose(xp[ph + iy, pw:pw + w], x[:, iy, :])


@njit(cache=True)
def _rows(xp, kh, kw, sh, sw, oh, ow, rows):
    """rows[oy*OW + ox, (i, j, c)] = xp[oy*sh + i, ox*sw + j, c]: a padded HWC image unfolded, a row a pixel."""
    wp, c = xp.shape[1], xp.shape[2]
    flat = xp.reshape(-1)
    run = kw * c  # taps (i, 0..kw-1) of one pixel: consecutive in HWC
    for oy in range(oh):
        for ox in range(ow):
            row = rows[oy * ow + ox]
            for i in range(kh):
                start = ((oy * sh + i) * wp + ox * sw) * c
                _copy(row[i * run:(i + 1) * run], flat[start:start + run])


@njit(cache=True)
def _unrows(rows, kh, kw, sh, sw, oh, ow, xp):
    """The adjoint of _rows: xp = 0, then xp[oy*sh + i, ox*sw + j, c] += rows[oy*OW + ox, (i, j, c)]."""
    wp, c = xp.shape[1], xp.shape[2]
    flat = xp.reshape(-1)
    flat[:] = 0
    run = kw * c
    for oy in range(oh):
        for ox in range(ow):
            row = rows[oy * ow + ox]
            for i in range(kh):
                start = ((oy * sh + i) * wp + ox * sw) * c
                _add_into(flat[start:start + run], row[i * run:(i + 1) * run])


# ---- the GEMM
#
# np.dot inside @njit calls SciPy's BLAS. When NumPy's own OpenBLAS (the
# scipy-openblas that NumPy's wheels ship) is loaded, the kernels call its
# CBLAS gemm directly instead: it is a newer build that runs these skinny
# products up to 40% faster here, and it can add into its output (beta = 1),
# which saves a temporary per sample. The call goes through the function's
# address, passed in as an argument, so the compiled kernels stay cacheable.

@intrinsic
def _cblas_gemm(typingctx, address, ilp64, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """cblas_?gemm(RowMajor, ta, tb, m, n, k, 1, a, lda, b, ldb, beta, c, ldc) through the function at ``address``.

    ``ilp64`` (a literal bool) says whether the library's integers are 64-bit.
    """
    if not isinstance(ilp64, types.BooleanLiteral):
        return None

    def codegen(context, builder, signature, args):
        address, _, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc = args
        aty, bty, cty = signature.args[7], signature.args[9], signature.args[12]
        blas_int, i32 = ir.IntType(64 if ilp64.literal_value else 32), ir.IntType(32)
        real = context.get_value_type(cty.dtype)
        ptr = real.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, blas_int, blas_int, blas_int, real, ptr, blas_int,
                                               ptr, blas_int, real, ptr, blas_int])

        def integer(v, width=blas_int):
            return builder.trunc(v, width) if width.width < 64 else v

        def data(ty, value):
            return builder.bitcast(context.make_array(ty)(context, builder, value).data, ptr)

        beta = builder.fptrunc(beta, real) if real != ir.DoubleType() else beta
        row_major = ir.Constant(i32, 101)
        builder.call(builder.inttoptr(address, fnty.as_pointer()),
                     [row_major, integer(ta, i32), integer(tb, i32), integer(m), integer(n), integer(k),
                      ir.Constant(real, 1.0), data(aty, a), integer(lda), data(bty, b), integer(ldb), beta,
                      data(cty, c), integer(ldc)])
        return context.get_dummy_value()

    sig = types.void(types.intp, ilp64, types.intp, types.intp, types.intp, types.intp, types.intp,
                     a, types.intp, b, types.intp, types.float64, c, types.intp)
    return sig, codegen


@njit(cache=True)
def _blas_operand(a):
    """(CBLAS transpose flag, leading dimension) of a 2-D operand whose rows or columns are contiguous.

    The stride of an axis of length 1 means nothing (a (1, n) view may say 1),
    so such an axis never decides the layout and the leading dimension is at
    least what BLAS requires.
    """
    m, n = a.shape
    s0, s1 = a.strides[0] // a.itemsize, a.strides[1] // a.itemsize
    if (n == 1 or s1 == 1) and (m == 1 or s0 >= n):
        return 111, max(s0, n, 1) if m > 1 else max(n, 1)  # CblasNoTrans: row-major
    return 112, max(s1, m, 1) if n > 1 else max(m, 1)      # CblasTrans: the transpose of a row-major matrix


@njit(cache=True)
def _gemm(blas, a, b, c, accumulate):
    """c = a @ b, or c += a @ b when ``accumulate``; blas = (address of NumPy's cblas gemm or 0, ilp64)."""
    address, ilp64 = blas
    if address == 0:
        if accumulate:
            c += np.dot(a, b)
        else:
            np.dot(a, b, c)
        return
    ta, lda = _blas_operand(a)
    tb, ldb = _blas_operand(b)
    m, n, k = c.shape[0], c.shape[1], a.shape[1]
    ldc = max(c.strides[0] // c.itemsize, n, 1) if m > 1 else max(n, 1)  # c: row-major (rows contiguous)
    beta = 1.0 if accumulate else 0.0
    if ilp64:
        _cblas_gemm(address, True, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc)
    else:
        _cblas_gemm(address, False, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc)


# NumPy's wheels ship OpenBLAS built as "scipy-openblas" with prefixed names: 64-bit integers
# in NumPy's (suffix 64_), 32-bit in SciPy's. Other BLAS builds are left to np.dot.
_CBLAS_NAMES = (("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", True),
                ("scipy_cblas_sgemm", "scipy_cblas_dgemm", False))


def _find_cblas():
    """{dtype: (address of the cblas gemm for it, ilp64)} from the BLAS NumPy loaded; address 0 when none is known."""
    found = {np.dtype(np.float32): (0, False), np.dtype(np.float64): (0, False)}
    try:
        import ctypes
        from threadpoolctl import threadpool_info
        paths = [i["filepath"] for i in threadpool_info() if i.get("user_api") == "blas"]
    except Exception:  # no threadpoolctl, or it could not inspect the process
        return found
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for single, double, ilp64 in _CBLAS_NAMES:
            if hasattr(lib, single) and hasattr(lib, double):
                found[np.dtype(np.float32)] = (ctypes.cast(getattr(lib, single), ctypes.c_void_p).value, ilp64)
                found[np.dtype(np.float64)] = (ctypes.cast(getattr(lib, double), ctypes.c_void_p).value, ilp64)
                return found
    return found


_CBLAS = _find_cblas()


@njit(parallel=True, cache=True)
def _conv_forward(blas, x, wt, kh, kw, sh, sw, ph, pw, xp, rows, yt, y):
    """y[n] = (rows(x[n]) @ W^T)^T, sample by sample; thread t works in its scratch xp[t], rows[t], yt[t]."""
    for b in prange(x.shape[0]):
        t = numba.get_thread_id()
        _to_hwc(x[b], ph, pw, xp[t])
        _rows(xp[t], kh, kw, sh, sw, y.shape[2], y.shape[3], rows[t])
        _gemm(blas, rows[t], wt, yt[t], False)  # (P, K) @ (K, O)
        _transpose(yt[t], y[b].reshape(y.shape[1], -1))


@njit(parallel=True, cache=True)
def _conv_backward_input(blas, dy, w2, kh, kw, sh, sw, ph, pw, dxp, drows, dx):
    """dx[n] = unrows(dy[n]^T @ W), sample by sample; thread t works in its scratch drows[t] and dxp[t]."""
    o, oh, ow = dy.shape[1], dy.shape[2], dy.shape[3]
    for b in prange(dx.shape[0]):
        t = numba.get_thread_id()
        _gemm(blas, dy[b].reshape(o, oh * ow).T, w2, drows[t], False)  # (P, O) @ (O, K)
        _unrows(drows[t], kh, kw, sh, sw, oh, ow, dxp[t])
        _from_hwc(dxp[t], ph, pw, dx[b])


@njit(parallel=True, cache=True)
def _conv_backward_weight(blas, dy, x, kh, kw, sh, sw, ph, pw, xp, rows, parts):
    """parts[t] = the sum over thread t's samples of dy[n] (O, P) @ rows(x[n]) (P, K); dW = the sum of the parts.

    Each thread adds into its own partial sum, so no two threads write the same dW.
    """
    o, oh, ow = dy.shape[1], dy.shape[2], dy.shape[3]
    for b in prange(x.shape[0]):
        t = numba.get_thread_id()
        _to_hwc(x[b], ph, pw, xp[t])
        _rows(xp[t], kh, kw, sh, sw, oh, ow, rows[t])
        _gemm(blas, dy[b].reshape(o, oh * ow), rows[t], parts[t], True)  # += (O, P) @ (P, K)


# ---- stride 1: shifted windows instead of unfolded rows
#
# With stride 1 the unfolding can be skipped. Lay the outputs out on the
# scratch image's grid, output (oy, ox) at position q = oy*Wp + ox; then tap
# (i, j) of every output reads the image at q + (i*Wp + j) (plus a constant),
# so the pixels one tap sees are one contiguous block of the flat HWC image:
# a (OH*Wp, C) matrix that BLAS takes as it is. The convolution is kh*kw
# GEMMs, one per tap, each adding into the same (OH*Wp, O) output; the
# Wp - OW positions at the end of each row are computed and dropped. Each
# scratch row is Z zero columns and then the W pixels, Z = pw (more only when
# the padding outgrows the kernel): the zeros after a row's last pixel are
# the next row's leading ones, so one band of zeros pads both sides and only
# Z positions a row are wasted (11% on an 8x8 map, against 20% with both).
# No unfolded copy is made, and for 16 and 32 channels this is 20-40% faster
# than the rows. With few channels (the 3 of an RGB input) each GEMM would
# be too thin, so those keep the rows. The backward passes run the same
# GEMMs transposed, with dy laid out on the same grid and zero at the
# dropped positions, so those add nothing.

@njit(cache=True)
def _shifted(xp, start, rows):
    """The (rows, C) block of the flat HWC image xp from pixel ``start`` on: a tap's inputs, output q's in row q."""
    c = xp.shape[2]
    return xp.reshape(-1)[start * c:(start + rows) * c].reshape(rows, c)


@njit(cache=True)
def _on_grid(dy, wp, dyg):
    """dyg[oy*Wp + ox, o] = dy[o, oy, ox]: one sample's (O, OH, OW) gradient on the grid (the rest stays 0)."""
    oh, ow = dy.shape[1], dy.shape[2]
    for oy in range(oh):
        _transpose(dy[:, oy, :], dyg[oy * wp:oy * wp + ow])


@njit(parallel=True, cache=True)
def _conv_forward_shifted(blas, x, wtaps, kh, kw, ph, pw, z, xp, yg, y):
    """y[n] = the sum over taps (i, j) of shifted(x[n]) (OH*Wp, C) @ W[:, :, i, j]^T (C, O), on the grid."""
    oh, ow = y.shape[2], y.shape[3]
    wp = xp.shape[2]
    for b in prange(x.shape[0]):
        t = numba.get_thread_id()
        _to_hwc(x[b], ph, z, xp[t])
        for i in range(kh):
            for j in range(kw):
                tap = _shifted(xp[t], i * wp + j + z - pw, oh * wp)
                _gemm(blas, tap, wtaps[i * kw + j], yg[t], i + j > 0)
        for oy in range(oh):
            _transpose(yg[t, oy * wp:oy * wp + ow], y[b, :, oy, :])


@njit(parallel=True, cache=True)
def _conv_backward_input_shifted(blas, dy, wtaps, kh, kw, ph, pw, z, dyg, dxp, dx):
    """dxp = 0, then shifted(dxp) += dy[n] on the grid (OH*Wp, O) @ W[:, :, i, j] (O, C) for every tap (i, j)."""
    oh = dy.shape[2]
    wp = dxp.shape[2]
    for b in prange(dx.shape[0]):
        t = numba.get_thread_id()
        _on_grid(dy[b], wp, dyg[t])
        dxp[t] = 0
        for i in range(kh):
            for j in range(kw):
                tap = _shifted(dxp[t], i * wp + j + z - pw, oh * wp)
                _gemm(blas, dyg[t], wtaps[i * kw + j], tap, True)
        _from_hwc(dxp[t], ph, z, dx[b])


@njit(parallel=True, cache=True)
def _conv_backward_weight_shifted(blas, dy, x, kh, kw, ph, pw, z, xp, dyg, parts):
    """parts[t, (i, j)] += (dy[n] on the grid)^T (O, OH*Wp) @ shifted(x[n]) (OH*Wp, C), over thread t's samples."""
    oh = dy.shape[2]
    wp = xp.shape[2]
    for b in prange(x.shape[0]):
        t = numba.get_thread_id()
        _to_hwc(x[b], ph, z, xp[t])
        _on_grid(dy[b], wp, dyg[t])
        for i in range(kh):
            for j in range(kw):
                tap = _shifted(xp[t], i * wp + j + z - pw, oh * wp)
                _gemm(blas, dyg[t].T, tap, parts[t, i * kw + j], True)


# ---- 1x1, stride 1, no padding: the image as it lies
#
# A pointwise convolution is a plain GEMM on each sample's (C, H*W) matrix,
# which is how NCHW already stores it: no scratch, no copies, no transposes
# (60-90 GFLOP/s a core on ResNet-50's 1x1 layers, against 40-70 through the
# HWC scratch).

@njit(parallel=True, cache=True)
def _conv_forward_pointwise(blas, x, w2, y):
    """y[n] (O, H*W) = W (O, C) @ x[n] (C, H*W)."""
    c, o = x.shape[1], y.shape[1]
    for b in prange(x.shape[0]):
        _gemm(blas, w2, x[b].reshape(c, -1), y[b].reshape(o, -1), False)


@njit(parallel=True, cache=True)
def _conv_backward_input_pointwise(blas, dy, w2, dx):
    """dx[n] (C, H*W) = W^T (C, O) @ dy[n] (O, H*W)."""
    c, o = dx.shape[1], dy.shape[1]
    for b in prange(dx.shape[0]):
        _gemm(blas, w2.T, dy[b].reshape(o, -1), dx[b].reshape(c, -1), False)


@njit(parallel=True, cache=True)
def _conv_backward_weight_pointwise(blas, dy, x, parts):
    """parts[t] += dy[n] (O, H*W) @ x[n]^T (H*W, C) over thread t's samples; dW = the sum of the parts."""
    c, o = x.shape[1], dy.shape[1]
    for b in prange(x.shape[0]):
        t = numba.get_thread_id()
        _gemm(blas, dy[b].reshape(o, -1), x[b].reshape(c, -1).T, parts[t], True)


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


_SHIFTED_MIN_CHANNELS = 8  # fewer input channels make each tap's GEMM too thin: unfold rows instead


def _geometry(x_shape, weight_shape, stride, padding):
    """A convolution's sizes and scratch shapes, as a dict.

    pointwise: whether it is a 1x1 convolution with stride 1 and no padding
    (served on NCHW as it lies); shifted: whether the stride-1 shifted-window
    GEMMs serve it; padded: the
    per-thread HWC scratch image (when shifted, rows of z zeros then the
    pixels, and spare rows that the last taps' blocks run into); grid: the
    per-thread (OH*Wp, O) output grid.
    """
    (sh, sw), (ph, pw) = stride, padding
    _, c, h, w = x_shape
    o, _, kh, kw = weight_shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    threads = numba.get_num_threads()
    pointwise = kh == kw == sh == sw == 1 and ph == pw == 0
    shifted = sh == sw == 1 and c >= _SHIFTED_MIN_CHANNELS and not pointwise
    if shifted:  # Z zero columns before each row's pixels pad both sides; spare rows take the last taps' overrun
        z = max(pw, ow - w)
        wp = w + z
        hp = h + 2 * ph + -(-(kw + z) // wp)
    else:
        z, hp, wp = pw, h + 2 * ph, w + 2 * pw
    return dict(kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, z=z, oh=oh, ow=ow, k=kh * kw * c, threads=threads,
                pointwise=pointwise, shifted=shifted, padded=(threads, hp, wp, c), grid=(threads, oh * wp, o))


@_compiled_dtypes
def conv2d_forward(x, weight, stride, padding):
    """y = W * x, sample by sample, by the route _geometry picks (pointwise, shifted windows or unfolded rows)."""
    n, o = x.shape[0], weight.shape[0]
    g = _geometry(x.shape, weight.shape, stride, padding)
    kh, kw, ph, pw, oh, ow, k, threads = (g[name] for name in ("kh", "kw", "ph", "pw", "oh", "ow", "k", "threads"))
    y = np.empty((n, o, oh, ow), dtype=x.dtype)
    if g["pointwise"]:
        with _blas_threads(1):
            _conv_forward_pointwise(_CBLAS[x.dtype], _c(x), _c(weight.reshape(o, -1)), y)
        return y
    xp = np.zeros(g["padded"], dtype=x.dtype)
    wt = np.ascontiguousarray(weight.transpose(2, 3, 1, 0).reshape(k, o))  # (kh, kw, C, O): the rows' order
    with _blas_threads(1):
        if g["shifted"]:
            yg = np.empty(g["grid"], dtype=x.dtype)
            _conv_forward_shifted(_CBLAS[x.dtype], _c(x), wt.reshape(kh * kw, -1, o), kh, kw, ph, pw, g["z"], xp, yg,
                                  y)
        else:
            rows = np.empty((threads, oh * ow, k), dtype=x.dtype)
            yt = np.empty((threads, oh * ow, o), dtype=x.dtype)
            _conv_forward(_CBLAS[x.dtype], _c(x), wt, kh, kw, g["sh"], g["sw"], ph, pw, xp, rows, yt, y)
    return y


@_compiled_dtypes
def conv2d_backward_input(grad_out, weight, x_shape, stride, padding):
    """dx = the adjoint of the forward's unfolding applied to dy^T @ W, sample by sample, by the same route."""
    o = weight.shape[0]
    g = _geometry(x_shape, weight.shape, stride, padding)
    kh, kw, ph, pw, oh, ow, k, threads = (g[name] for name in ("kh", "kw", "ph", "pw", "oh", "ow", "k", "threads"))
    dtype = grad_out.dtype
    dx = np.empty(tuple(x_shape), dtype=dtype)
    if g["pointwise"]:
        with _blas_threads(1):
            _conv_backward_input_pointwise(_CBLAS[dtype], _c(grad_out), _c(weight.reshape(o, -1)), dx)
        return dx
    dxp = np.empty(g["padded"], dtype=dtype)
    with _blas_threads(1):
        if g["shifted"]:
            dyg = np.zeros(g["grid"], dtype=dtype)
            wtaps = np.ascontiguousarray(weight.transpose(2, 3, 0, 1).reshape(kh * kw, o, -1))  # (kh, kw, O, C)
            _conv_backward_input_shifted(_CBLAS[dtype], _c(grad_out), wtaps, kh, kw, ph, pw, g["z"], dyg, dxp, dx)
        else:
            drows = np.empty((threads, oh * ow, k), dtype=dtype)
            w2 = np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(o, k))  # (O, kh, kw, C)
            _conv_backward_input(_CBLAS[dtype], _c(grad_out), w2, kh, kw, g["sh"], g["sw"], ph, pw, dxp, drows, dx)
    return dx


@_compiled_dtypes
def conv2d_backward_weight(grad_out, x, weight_shape, stride, padding):
    """dW = the sum over samples of dy[n] @ unfolded x[n], by the forward's route; nothing is kept from forward."""
    o, c = weight_shape[:2]
    g = _geometry(x.shape, weight_shape, stride, padding)
    kh, kw, ph, pw, oh, ow, k, threads = (g[name] for name in ("kh", "kw", "ph", "pw", "oh", "ow", "k", "threads"))
    dtype = grad_out.dtype
    if g["pointwise"]:
        parts = np.zeros((threads, o, c), dtype=dtype)
        with _blas_threads(1):
            _conv_backward_weight_pointwise(_CBLAS[dtype], _c(grad_out), _c(x), parts)
        return parts.sum(axis=0).reshape(weight_shape)
    xp = np.zeros(g["padded"], dtype=x.dtype)
    with _blas_threads(1):
        if g["shifted"]:
            dyg = np.zeros(g["grid"], dtype=dtype)
            parts = np.zeros((threads, kh * kw, o, c), dtype=dtype)
            _conv_backward_weight_shifted(_CBLAS[dtype], _c(grad_out), _c(x), kh, kw, ph, pw, g["z"], xp, dyg,
                                          parts)
            dw = parts.sum(axis=0).reshape(kh, kw, o, c).transpose(2, 3, 0, 1)  # back from (kh, kw, O, C)
        else:
            rows = np.empty((threads, oh * ow, k), dtype=x.dtype)
            parts = np.zeros((threads, o, k), dtype=dtype)
            _conv_backward_weight(_CBLAS[dtype], _c(grad_out), _c(x), kh, kw, g["sh"], g["sw"], ph, pw, xp, rows,
                                  parts)
            dw = parts.sum(axis=0).reshape(o, kh, kw, c).transpose(0, 3, 1, 2)  # back from (O, kh, kw, C)
    return np.ascontiguousarray(dw)


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
    _channel_affine(_planes(x), scale.astype(x.dtype), shift.astype(x.dtype), _planes(y))
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
def batch_norm_backward(grad_out, x, mean, invstd, weight, training):
    """Returns (dx, dweight, dbias).

    Training (batch statistics depend on x):
    dx = weight * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat)).
    Eval (running statistics are constants): dx = dy * weight * invstd.
    """
    dy3, x3 = _planes(grad_out), _planes(x)
    dtype, c = x.dtype, x.shape[1]
    m = grad_out.size // c
    mean, invstd = _c(mean).astype(dtype), _c(invstd).astype(dtype)
    dbias = np.empty(c, dtype=dtype)
    dweight = np.empty(c, dtype=dtype)
    _bn_grad_sums(dy3, x3, mean, invstd, dbias, dweight)
    scale = (invstd if weight is None else invstd * weight).astype(dtype)
    dx = np.empty(x.shape, dtype=dtype)
    if training:
        _bn_backward_dx(dy3, x3, mean, invstd, scale, dbias / dtype.type(m), dweight / dtype.type(m), _planes(dx))
    else:
        _channel_affine(dy3, scale, np.zeros(c, dtype=dtype), _planes(dx))
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
