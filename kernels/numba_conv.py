"""The tuned convolution routes of the Numba CPU backend, chosen by the convolution's shape.

The reference unfolds the whole batch into one (C*kh*kw, N*OH*OW) matrix and
runs one big GEMM. Here each thread takes one sample at a time and keeps
everything it touches in its core's cache, and runs that sample's GEMMs with
a single-threaded BLAS (``numba_blas``), on the kernel threads
(``numba_threads``). Convolutions with few channels take the direct route of
``numba_direct`` instead (no GEMM at all); the rest take one of these, by
the convolution's shape and its arrays' layout (``geometry`` and ``forward``
/ ``backward_input`` / ``backward_weight`` pick one):

- unfolded rows (strided windows, and images with few channels): the sample
  is unfolded pixel-major, one row of kh*kw*C numbers per output pixel;
- shifted windows (stride 1): no unfolding, one GEMM per tap on shifted
  blocks of the image;
- 1x1 without padding on channels-last arrays: one GEMM on the batch's pixels;
- pointwise (1x1, stride 1, no padding, NCHW): one GEMM on the image as it lies.

Each route has a forward, an input gradient and a weight gradient with the
arguments of the public kernels less what ``geometry`` already holds. Rows
and shifted windows read channels-last samples as they lie and give results
in the layout their input came in.
"""
from typing import NamedTuple

import numba
import numpy as np
from numba import njit

from . import _index, numba_nhwc
from .numba_blas import CBLAS, blas_threads, gemm
from .numba_copies import _add_into, _copy, _copy_rows, _empty, _from_hwc, _layout, _nchw, _to_hwc, _transpose
from .numba_threads import run


def _c(a):
    """``a`` as a C-contiguous array (no copy when it already is one), so each kernel compiles once."""
    return np.ascontiguousarray(a)


# ---------------------------------------------------------------- the route's shape

SHIFTED_MIN_CHANNELS = 8  # fewer input channels make each tap's GEMM too thin: unfold rows instead


class Geometry(NamedTuple):
    """A convolution's sizes, its route and its per-thread scratch shapes (see ``geometry``)."""
    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    oh: int
    ow: int
    k: int          # kh*kw*C: the length of an unfolded row
    threads: int
    pointwise: bool
    shifted: bool
    z: int          # zero columns before each scratch row's pixels
    padded: tuple   # (threads, Hp, Wp, C): the HWC scratch images
    grid: tuple     # (threads, OH*Wp, O): the shifted route's output grids


def geometry(x_shape, weight_shape, stride, padding):
    """A convolution's sizes, the route that serves it and its scratch shapes.

    pointwise: a 1x1 convolution with stride 1 and no padding (served on NCHW
    as it lies); shifted: the stride-1 shifted-window GEMMs serve it; padded:
    the per-thread HWC scratch image (when shifted, rows of z zeros then the
    pixels, and spare rows that the last taps' blocks run into); grid: the
    per-thread (OH*Wp, O) output grid.
    """
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x_shape
    o, _, kh, kw = weight_shape
    oh, ow = _index.conv_output_size(h, kh, sh, ph), _index.conv_output_size(w, kw, sw, pw)
    threads = numba.get_num_threads()
    pointwise = kh == kw == sh == sw == 1 and ph == pw == 0
    shifted = sh == sw == 1 and c >= SHIFTED_MIN_CHANNELS and not pointwise
    if shifted:  # Z zero columns before each row's pixels pad both sides; spare rows take the last taps' overrun
        z = max(pw, ow - w)
        wp = w + z
        hp = h + 2 * ph + -(-(kw + z) // wp)
    else:
        z, hp, wp = pw, h + 2 * ph, w + 2 * pw
    return Geometry(n, c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow, kh * kw * c, threads, pointwise, shifted, z,
                    (threads, hp, wp, c), (threads, oh * wp, o))


# ---------------------------------------------------------------- unfolded rows
#
#   1. copy the sample into a zero-bordered scratch image in HWC order
#      (channels last; the border is the padding, written once per call);
#   2. unfold it into scratch rows (OH*OW, kh*kw*C), one row per output
#      pixel: the taps i of a pixel read kw*C consecutive numbers of the HWC
#      image, so a row is kh contiguous copies;
#   3. run that sample's GEMM, rows (P, K) @ W^T (K, O) -> (P, O), and copy
#      the result transposed into y[n] (O, OH, OW).
#
# Pixel-major rows make every GEMM of ResNet's skinny shapes one that BLAS
# runs near its peak (80-100 GFLOP/s a core here, against 40-60 for the
# tap-major (K, P) columns of the reference). The weights are reordered to
# (O, kh, kw, C) to match the rows, once per call.

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


@njit(nogil=True, cache=True)
def _rows_forward(chunk, first, stop, worker, blas, x, last, wt, kh, kw, sh, sw, ph, pw, oh, ow, xp, rows, yt, y):
    """y[n] = rows(x[n]) @ W^T (into NHWC y as it lies, else transposed), sample by sample, in thread t's scratch."""
    o = wt.shape[1]
    t = worker  # this thread's scratch
    for b in range(first, stop):
        _to_hwc(x, last, b, ph, pw, xp[t])
        _rows(xp[t], kh, kw, sh, sw, oh, ow, rows[t])
        if last:
            gemm(blas, rows[t], wt, y[b].reshape(-1, o), False)  # (P, K) @ (K, O)
        else:
            gemm(blas, rows[t], wt, yt[t], False)
            _transpose(yt[t], y[b].reshape(o, -1))


@njit(nogil=True, cache=True)
def _rows_backward_input(chunk, first, stop, worker, blas, dy, last, w2, kh, kw, sh, sw, ph, pw, oh, ow, dxp, drows,
                         dx):
    """dx[n] = unrows(dy[n]^T @ W), sample by sample; thread t works in its scratch drows[t] and dxp[t]."""
    t = worker  # this thread's scratch
    for b in range(first, stop):
        if last:  # dy[n] as its (P, O) pixel-major matrix
            gemm(blas, dy[b].reshape(-1, w2.shape[0]), w2, drows[t], False)  # (P, O) @ (O, K)
        else:
            gemm(blas, dy[b].reshape(w2.shape[0], -1).T, w2, drows[t], False)
        _unrows(drows[t], kh, kw, sh, sw, oh, ow, dxp[t])
        _from_hwc(dxp[t], ph, pw, last, dx, b)


@njit(nogil=True, cache=True)
def _rows_backward_weight(chunk, first, stop, worker, blas, dy, dy_last, x, last, kh, kw, sh, sw, ph, pw, oh, ow, xp,
                          rows, parts):
    """parts[chunk] = the sum over the chunk's samples of dy[n] (O, P) @ rows(x[n]) (P, K); dW = the sum of the parts.

    Each chunk adds into its own partial sum, so no two threads write the same dW.
    """
    t = worker  # this thread's scratch
    for b in range(first, stop):
        _to_hwc(x, last, b, ph, pw, xp[t])
        _rows(xp[t], kh, kw, sh, sw, oh, ow, rows[t])
        if dy_last:
            gemm(blas, dy[b].reshape(-1, parts.shape[1]).T, rows[t], parts[chunk], True)  # += (O, P) @ (P, K)
        else:
            gemm(blas, dy[b].reshape(parts.shape[1], -1), rows[t], parts[chunk], True)


def rows_forward(x, weight, g):
    """y = W * x by unfolded rows."""
    xp = np.zeros(g.padded, dtype=x.dtype)
    rows = np.empty((g.threads, g.oh * g.ow, g.k), dtype=x.dtype)
    yt = np.empty((g.threads, g.oh * g.ow, g.o), dtype=x.dtype)
    # (O, kh, kw, C), the rows' order, taken transposed: (K, O) (packing (K, O) itself copied 3x slower)
    wt = _c(weight.transpose(0, 2, 3, 1).reshape(g.o, g.k)).T
    last, xa = _layout(x)
    y = _empty(last, g.n, g.o, g.oh, g.ow, x.dtype)
    with blas_threads(1):
        run(_rows_forward, g.n, CBLAS[x.dtype], xa, last, wt, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.oh, g.ow, xp, rows,
            yt, y)
    return _nchw(y, last)


def rows_backward_input(grad_out, weight, g):
    """dx = unrows(dy^T @ W), sample by sample."""
    dtype = grad_out.dtype
    dxp = np.empty(g.padded, dtype=dtype)
    drows = np.empty((g.threads, g.oh * g.ow, g.k), dtype=dtype)
    w2 = _c(weight.transpose(0, 2, 3, 1).reshape(g.o, g.k))  # (O, kh, kw, C)
    last, dy = _layout(grad_out)
    dx = _empty(last, g.n, g.c, g.h, g.w, dtype)
    with blas_threads(1):
        run(_rows_backward_input, g.n, CBLAS[dtype], dy, last, w2, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.oh, g.ow, dxp,
            drows, dx)
    return _nchw(dx, last)


def rows_backward_weight(grad_out, x, g):
    """dW = the sum over samples of dy[n] @ rows(x[n])."""
    dtype = grad_out.dtype
    xp = np.zeros(g.padded, dtype=x.dtype)
    rows = np.empty((g.threads, g.oh * g.ow, g.k), dtype=x.dtype)
    parts = np.zeros((g.threads, g.o, g.k), dtype=dtype)
    (dy_last, dy), (last, xa) = _layout(grad_out), _layout(x)
    with blas_threads(1):
        run(_rows_backward_weight, g.n, CBLAS[dtype], dy, dy_last, xa, last, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.oh,
            g.ow, xp, rows, parts, chunks=g.threads)
    return _c(parts.sum(axis=0).reshape(g.o, g.kh, g.kw, g.c).transpose(0, 3, 1, 2))  # back from (O, kh, kw, C)


# ---------------------------------------------------------------- stride 1: shifted windows
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
def _on_grid(dy, last, b, oh, ow, wp, dyg):
    """dyg[oy*Wp + ox] = sample b of dy at (oy, ox) (NHWC when ``last``, else NCHW); the rest stays 0."""
    for oy in range(oh):
        if last:
            _copy_rows(dyg[oy * wp:oy * wp + ow], dy[b, oy])
        else:
            _transpose(dy[b, :, oy, :], dyg[oy * wp:oy * wp + ow])


@njit(nogil=True, cache=True)
def _shifted_forward(chunk, first, stop, worker, blas, x, last, wtaps, kh, kw, ph, pw, z, oh, ow, xp, yg, y):
    """y[n] = the sum over taps (i, j) of shifted(x[n]) (OH*Wp, C) @ W[:, :, i, j]^T (C, O), on the grid."""
    wp = xp.shape[2]
    t = worker  # this thread's scratch
    for b in range(first, stop):
        _to_hwc(x, last, b, ph, z, xp[t])
        for i in range(kh):
            for j in range(kw):
                tap = _shifted(xp[t], i * wp + j + z - pw, oh * wp)
                gemm(blas, tap, wtaps[i * kw + j].T, yg[t], i + j > 0)  # (OH*Wp, C) @ (C, O)
        for oy in range(oh):
            if last:
                _copy_rows(y[b, oy], yg[t, oy * wp:oy * wp + ow])
            else:
                _transpose(yg[t, oy * wp:oy * wp + ow], y[b, :, oy, :])


@njit(nogil=True, cache=True)
def _shifted_backward_input(chunk, first, stop, worker, blas, dy, last, wtaps, kh, kw, ph, pw, z, oh, ow, dyg, dxp,
                            dx):
    """dxp = 0, then shifted(dxp) += dy[n] on the grid (OH*Wp, O) @ W[:, :, i, j] (O, C) for every tap (i, j)."""
    wp = dxp.shape[2]
    t = worker  # this thread's scratch
    for b in range(first, stop):
        _on_grid(dy, last, b, oh, ow, wp, dyg[t])
        dxp[t] = 0
        for i in range(kh):
            for j in range(kw):
                tap = _shifted(dxp[t], i * wp + j + z - pw, oh * wp)
                gemm(blas, dyg[t], wtaps[i * kw + j], tap, True)
        _from_hwc(dxp[t], ph, z, last, dx, b)


@njit(nogil=True, cache=True)
def _shifted_backward_weight(chunk, first, stop, worker, blas, dy, dy_last, x, last, kh, kw, ph, pw, z, oh, ow, xp,
                             dyg, parts):
    """parts[chunk, (i, j)] += (dy[n] on the grid)^T (O, OH*Wp) @ shifted(x[n]) (OH*Wp, C), over the chunk's samples."""
    wp = xp.shape[2]
    t = worker  # this thread's scratch
    for b in range(first, stop):
        _to_hwc(x, last, b, ph, z, xp[t])
        _on_grid(dy, dy_last, b, oh, ow, wp, dyg[t])
        for i in range(kh):
            for j in range(kw):
                tap = _shifted(xp[t], i * wp + j + z - pw, oh * wp)
                gemm(blas, dyg[t].T, tap, parts[chunk, i * kw + j], True)


def shifted_forward(x, weight, g):
    """y = W * x as kh*kw GEMMs on shifted blocks of each sample."""
    xp = np.zeros(g.padded, dtype=x.dtype)
    yg = np.empty(g.grid, dtype=x.dtype)
    wtaps = _c(weight.transpose(2, 3, 0, 1).reshape(g.kh * g.kw, g.o, g.c))  # (kh, kw, O, C), taken transposed
    last, xa = _layout(x)
    y = _empty(last, g.n, g.o, g.oh, g.ow, x.dtype)
    with blas_threads(1):
        run(_shifted_forward, g.n, CBLAS[x.dtype], xa, last, wtaps, g.kh, g.kw, g.ph, g.pw, g.z, g.oh, g.ow, xp, yg, y)
    return _nchw(y, last)


def shifted_backward_input(grad_out, weight, g):
    """dx: the transposed GEMMs of every tap added into shifted blocks of a zero image."""
    dtype = grad_out.dtype
    dyg = np.zeros(g.grid, dtype=dtype)
    dxp = np.empty(g.padded, dtype=dtype)
    wtaps = _c(weight.transpose(2, 3, 0, 1).reshape(g.kh * g.kw, g.o, g.c))  # (kh, kw, O, C)
    last, dy = _layout(grad_out)
    dx = _empty(last, g.n, g.c, g.h, g.w, dtype)
    with blas_threads(1):
        run(_shifted_backward_input, g.n, CBLAS[dtype], dy, last, wtaps, g.kh, g.kw, g.ph, g.pw, g.z, g.oh, g.ow, dyg,
            dxp, dx)
    return _nchw(dx, last)


def shifted_backward_weight(grad_out, x, g):
    """dW[:, :, i, j] = the sum over samples of dy[n] on the grid, transposed, @ tap (i, j)'s block of x[n]."""
    dtype = grad_out.dtype
    xp = np.zeros(g.padded, dtype=x.dtype)
    dyg = np.zeros(g.grid, dtype=dtype)
    parts = np.zeros((g.threads, g.kh * g.kw, g.o, g.c), dtype=dtype)
    (dy_last, dy), (last, xa) = _layout(grad_out), _layout(x)
    with blas_threads(1):
        run(_shifted_backward_weight, g.n, CBLAS[dtype], dy, dy_last, xa, last, g.kh, g.kw, g.ph, g.pw, g.z, g.oh, g.ow,
            xp, dyg, parts, chunks=g.threads)
    return _c(parts.sum(axis=0).reshape(g.kh, g.kw, g.o, g.c).transpose(2, 3, 0, 1))  # back from (kh, kw, O, C)


# ---------------------------------------------------------------- 1x1 without padding on channels-last images
#
# In NHWC memory a 1x1 convolution of stride s is one GEMM on the whole
# batch: the (N*OH*OW, C) pixels (every s-th, copied when s > 1) @ W^T, and
# the result is already channels-last. The kernel threads share it out in
# blocks of rows (of dW: of output channels, so no partial sums), each a
# single-threaded GEMM: BLAS's own threads spin after a product, and took a
# core from the next kernel (2.5x slower, measured).

def _every(a, g):
    """The NHWC array of a channels-last x at the pixels a 1x1 of stride (sh, sw) reads."""
    return a.transpose(0, 2, 3, 1)[:, ::g.sh, ::g.sw, :]


@njit(nogil=True, cache=True)
def _gemm_rows(chunk, lo, hi, worker, blas, a, b, c):
    """c[lo:hi] = a[lo:hi] @ b."""
    gemm(blas, a[lo:hi], b, c[lo:hi], False)


@njit(nogil=True, cache=True)
def _gemm_columns(chunk, lo, hi, worker, blas, a, b, c):
    """c[lo:hi] = a[:, lo:hi]^T @ b."""
    gemm(blas, a[:, lo:hi].T, b, c[lo:hi], False)


def nhwc_1x1_forward(x, weight, g):
    """y (channels-last) = the pixels (N*OH*OW, C) @ W^T (C, O)."""
    y = np.empty((g.n, g.oh, g.ow, g.o), dtype=x.dtype)
    pixels = _c(_every(x, g)).reshape(-1, g.c)
    with blas_threads(1):
        run(_gemm_rows, pixels.shape[0], CBLAS[x.dtype], pixels, weight.reshape(g.o, g.c).T, y.reshape(-1, g.o))
    return y.transpose(0, 3, 1, 2)


def nhwc_1x1_backward_input(grad_out, weight, g):
    """dx (channels-last) = dy's pixels (N*OH*OW, O) @ W (O, C), put back at every s-th pixel (0 elsewhere)."""
    dy = numba_nhwc.rows(grad_out)
    d = np.empty((dy.shape[0], g.c), dtype=grad_out.dtype)
    with blas_threads(1):
        run(_gemm_rows, dy.shape[0], CBLAS[d.dtype], dy, _c(weight.reshape(g.o, g.c)), d)
    if g.sh == g.sw == 1:
        return d.reshape(g.n, g.h, g.w, g.c).transpose(0, 3, 1, 2)
    dx = np.zeros((g.n, g.h, g.w, g.c), dtype=grad_out.dtype)
    dx[:, ::g.sh, ::g.sw, :] = d.reshape(g.n, g.oh, g.ow, g.c)
    return dx.transpose(0, 3, 1, 2)


def nhwc_1x1_backward_weight(grad_out, x, g):
    """dW = dy's pixels^T (O, N*OH*OW) @ x's (N*OH*OW, C), a block of output channels a chunk."""
    dy, dw = numba_nhwc.rows(grad_out), np.empty((g.o, g.c), dtype=grad_out.dtype)
    with blas_threads(1):
        run(_gemm_columns, g.o, CBLAS[dw.dtype], dy, _c(_every(x, g)).reshape(-1, g.c), dw)
    return dw.reshape(g.o, g.c, 1, 1)


# ---------------------------------------------------------------- the routes, chosen by shape and layout

def _nhwc_1x1(g, *arrays):
    return g.kh == g.kw == 1 and g.ph == g.pw == 0 and any(numba_nhwc.is_channels_last(a) for a in arrays)


def forward(x, weight, g):
    """y = W * x by the route of ``g`` (channels-last in, channels-last out)."""
    if _nhwc_1x1(g, x):
        return nhwc_1x1_forward(x, weight, g)
    if g.pointwise:
        return pointwise_forward(x, weight, g)
    return (shifted_forward if g.shifted else rows_forward)(x, weight, g)


def backward_input(grad_out, weight, g):
    """dx by the route of ``g``."""
    if _nhwc_1x1(g, grad_out):
        return nhwc_1x1_backward_input(grad_out, weight, g)
    if g.pointwise:
        return pointwise_backward_input(grad_out, weight, g)
    return (shifted_backward_input if g.shifted else rows_backward_input)(grad_out, weight, g)


def backward_weight(grad_out, x, g):
    """dW by the route of ``g``."""
    if _nhwc_1x1(g, grad_out, x):
        return nhwc_1x1_backward_weight(grad_out, x, g)
    if g.pointwise:
        return pointwise_backward_weight(grad_out, x, g)
    return (shifted_backward_weight if g.shifted else rows_backward_weight)(grad_out, x, g)


# ---------------------------------------------------------------- 1x1, stride 1, no padding: pointwise
#
# A pointwise convolution is a plain GEMM on each sample's (C, H*W) matrix,
# which is how NCHW already stores it: no scratch, no copies, no transposes
# (60-90 GFLOP/s a core on ResNet-50's 1x1 layers, against 40-70 through the
# HWC scratch).

@njit(nogil=True, cache=True)
def _pointwise_forward(chunk, first, stop, worker, blas, x, w2, y):
    """y[n] (O, H*W) = W (O, C) @ x[n] (C, H*W)."""
    c, o = x.shape[1], y.shape[1]
    for b in range(first, stop):
        gemm(blas, w2, x[b].reshape(c, -1), y[b].reshape(o, -1), False)


@njit(nogil=True, cache=True)
def _pointwise_backward_input(chunk, first, stop, worker, blas, dy, w2, dx):
    """dx[n] (C, H*W) = W^T (C, O) @ dy[n] (O, H*W)."""
    c, o = dx.shape[1], dy.shape[1]
    for b in range(first, stop):
        gemm(blas, w2.T, dy[b].reshape(o, -1), dx[b].reshape(c, -1), False)


@njit(nogil=True, cache=True)
def _pointwise_backward_weight(chunk, first, stop, worker, blas, dy, x, parts):
    """parts[chunk] += dy[n] (O, H*W) @ x[n]^T (H*W, C) over the chunk's samples; dW = the sum of the parts."""
    c, o = x.shape[1], dy.shape[1]
    for b in range(first, stop):
        gemm(blas, dy[b].reshape(o, -1), x[b].reshape(c, -1).T, parts[chunk], True)


def pointwise_forward(x, weight, g):
    """y[n] = W @ x[n] on the (C, H*W) matrices NCHW holds."""
    y = np.empty((g.n, g.o, g.oh, g.ow), dtype=x.dtype)
    with blas_threads(1):
        run(_pointwise_forward, g.n, CBLAS[x.dtype], _c(x), _c(weight.reshape(g.o, g.c)), y)
    return y


def pointwise_backward_input(grad_out, weight, g):
    """dx[n] = W^T @ dy[n]."""
    dx = np.empty((g.n, g.c, g.h, g.w), dtype=grad_out.dtype)
    with blas_threads(1):
        run(_pointwise_backward_input, g.n, CBLAS[grad_out.dtype], _c(grad_out), _c(weight.reshape(g.o, g.c)), dx)
    return dx


def pointwise_backward_weight(grad_out, x, g):
    """dW = the sum over samples of dy[n] @ x[n]^T."""
    parts = np.zeros((g.threads, g.o, g.c), dtype=grad_out.dtype)
    with blas_threads(1):
        run(_pointwise_backward_weight, g.n, CBLAS[grad_out.dtype], _c(grad_out), _c(x), parts, chunks=g.threads)
    return parts.sum(axis=0).reshape(g.o, g.c, 1, 1)
