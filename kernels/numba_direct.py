"""Direct convolutions of the Numba CPU backend: no unfolded copy and no BLAS, the taps summed in vector registers.

oneDNN's approach (its nChw16c kernels), in Numba: each sample is copied
once into a channels-last scratch image with its zero padding, and every
output pixel's sum over taps and channels runs in ``numba_tile``'s register
tiles, vectorised over a block of output channels. No thin GEMM is made, so
the small channel counts of CIFAR ResNets (16-64) run at 130-210 GFLOP/s a
core where a GEMM per tap ran at 20-60.

The scratch layout (``plan``): the padded image is cut into sh*sw *planes*,
plane (a, b) holding the padded pixels (sh*u + a, sw*v + b), each plane a
row-major (rows, gp) grid of pixels with C channels each. Output pixel
(oy, ox) sits at grid position q = oy*gp + ox, and tap (i, j) of every
output reads its plane at q + seg[tap]: one flat offset per tap, whatever
the stride. The gp - OW positions at the end of each grid row are computed
and dropped (at stride 1 the zeros that end one row begin the next, so only
max(pw, OW - W) are wasted: the shifted windows of ``numba_conv``).

Forward: y = the tiles over (grid rows, output channels), reducing over taps
and input channels. Input gradient: at stride 1 a forward convolution of dy
with the flipped, transposed weights and padding k - 1 - p; strided, each
tap's dy (grid) @ W[tap] added into the planes (scatter), then un-planed.
Weight gradient: per tap, x's plane block transposed @ dy on the grid.

Activations come and go channels-last: the outputs are NHWC arrays returned
as their (N, C, H, W) transposed views (NCHW at the API, as PyTorch's
channels_last), and an input in that layout is read without a transpose.
"""
from typing import NamedTuple

import numba
import numpy as np
from numba import njit

from . import _index
from .numba_copies import _transpose
from .numba_threads import chunks_for, run
from .numba_tile import MAX_ROWS, check_reach, lanes_of, rows_per_tile, tiles


class Plan(NamedTuple):
    """A direct convolution's sizes and its scratch layout (see ``plan``)."""
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
    z: int           # scratch column of the image's first pixel, before the planes' division (>= pw)
    gp: int          # pixels in a plane's row: the grid's row pitch
    plane: int       # pixels in one plane
    total: int       # pixels of the whole scratch (the planes and slack for the tiles' overrun)
    q: int           # grid positions: oh * gp
    grid: int        # grid rows held: q and the overrun of the last tile
    seg: np.ndarray  # (kh*kw,) int64: tap (i, j)'s offset in pixels from grid position q
    threads: int


def plan(x_shape, weight_shape, stride, padding):
    """The scratch layout of a direct convolution of x_shape by weight_shape (see the module's docstring)."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x_shape
    o, _, kh, kw = weight_shape
    oh, ow = _index.conv_output_size(h, kh, sh, ph), _index.conv_output_size(w, kw, sw, pw)
    if sh == sw == 1:  # one plane; a row is z zeros then the W pixels, and the next row's zeros pad its right
        z = max(pw, ow - w)
        gp = w + z
        rows = h + 2 * ph + 1  # the last taps of the last row run one row on
    else:
        z = pw
        gp = max(ow + (kw - 1) // sw, (w - 1 + pw) // sw + 1)
        rows = max(oh + (kh - 1) // sh, (h - 1 + ph) // sh + 1)
    plane = rows * gp
    seg = np.empty(kh * kw, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            col = j + z - pw
            seg[i * kw + j] = ((i % sh) * sw + col % sw) * plane + (i // sh) * gp + col // sw
    q = oh * gp
    grid = q + MAX_ROWS
    total = max(sh * sw * plane, grid + int(seg.max()) + 1) + MAX_ROWS
    return Plan(n, c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow, z, gp, plane, total, q, grid, seg,
                numba.get_num_threads())


DIRECT_MAX_CHANNELS = 128  # wider convolutions are GEMMs BLAS runs well: the other routes serve them


def serves(x_shape, weight_shape, stride, padding):
    """True when the direct route serves this convolution: neither side wider than DIRECT_MAX_CHANNELS."""
    return max(x_shape[1], weight_shape[0]) <= DIRECT_MAX_CHANNELS and weight_shape[2] * weight_shape[3] > 1


def _up(value, multiple):
    return -(-value // multiple) * multiple


def channels_last(a):
    """(True, a as a C-contiguous NHWC array) when the NCHW array ``a`` lies channels-last, else (False, NCHW)."""
    nhwc = a.transpose(0, 2, 3, 1)
    if nhwc.flags.c_contiguous and not (a.flags.c_contiguous and a.shape[1] > 1):
        return True, nhwc
    return False, np.ascontiguousarray(a)


# ---------------------------------------------------------------- copies between samples and the scratch
#
# Each sample is copied into its thread's scratch once, a row of pixels at a
# time: a memcpy from channels-last input, a blocked transpose from NCHW.

@njit(cache=True)
def _plane_run(iy, bx, sh, sw, ph, z, gp, plane):
    """(first pixel in the flat scratch, first input column) of input row iy's pixels in column phase bx."""
    py = iy + ph
    ix0 = (bx - z) % sw
    return ((py % sh) * sw + bx) * plane + (py // sh) * gp + (ix0 + z) // sw, ix0


@njit(cache=True)
def _fill_from_hwc(x, sh, sw, ph, z, gp, plane, cs, xs):
    """The sample x (H, W, C) into the planes of the flat scratch xs (cs numbers a pixel); the rest stays 0."""
    h, w, c = x.shape
    for iy in range(h):
        for bx in range(sw):
            start, ix0 = _plane_run(iy, bx, sh, sw, ph, z, gp, plane)
            if sw == 1 and cs == c:
                src, dst = x[iy].reshape(-1), xs[start * cs:(start + w) * cs]
                for k in range(w * c):
                    dst[k] = src[k]
                continue
            for m, ix in enumerate(range(ix0, w, sw)):
                src, dst = x[iy, ix], xs[(start + m) * cs:(start + m) * cs + c]
                for k in range(c):
                    dst[k] = src[k]


@njit(cache=True)
def _fill_from_chw(x, sh, sw, ph, z, gp, plane, cs, xs):
    """The sample x (C, H, W) into the planes of the flat scratch xs, each row transposed in blocks."""
    c, h, w = x.shape
    for iy in range(h):
        for bx in range(sw):
            start, ix0 = _plane_run(iy, bx, sh, sw, ph, z, gp, plane)
            count = len(range(ix0, w, sw))
            if count > 0:
                _transpose(x[:, iy, ix0::sw], xs[start * cs:(start + count) * cs].reshape(count, cs)[:, :c])


@njit(cache=True)
def _planes_to_hwc(xs, sh, sw, ph, z, gp, plane, cs, x):
    """The image back out of the planes: x (H, W, C) = its pixels in the flat scratch (the adjoint's gather)."""
    h, w, c = x.shape
    for iy in range(h):
        for bx in range(sw):
            start, ix0 = _plane_run(iy, bx, sh, sw, ph, z, gp, plane)
            for m, ix in enumerate(range(ix0, w, sw)):
                src, dst = xs[(start + m) * cs:(start + m) * cs + c], x[iy, ix]
                for k in range(c):
                    dst[k] = src[k]


@njit(cache=True)
def _fill(x, last, b, sh, sw, ph, z, gp, plane, cs, xs):
    """Sample b of x into the scratch: x is NHWC when ``last``, else NCHW."""
    if last:
        _fill_from_hwc(x[b], sh, sw, ph, z, gp, plane, cs, xs)
    else:
        _fill_from_chw(x[b], sh, sw, ph, z, gp, plane, cs, xs)


@njit(cache=True)
def _grid_rows(a, a_start, a_step, b, b_start, b_step, rows, run, pixels, width, to_b):
    """Copy ``rows`` rows of ``pixels`` pixels between flat a and b, ``width`` numbers of each (a's pixels ``run``
    numbers apart, b's ``width``): from a to b when ``to_b``, else back. A row is one copy when run == width."""
    for r in range(rows):
        i, j = a_start + r * a_step, b_start + r * b_step
        if run == width:
            src, dst = (a[i:i + pixels * width], b[j:j + pixels * width]) if to_b else \
                (b[j:j + pixels * width], a[i:i + pixels * width])
            for k in range(pixels * width):
                dst[k] = src[k]
            continue
        for m in range(pixels):
            src, dst = (a[i + m * run:i + m * run + width], b[j + m * width:j + (m + 1) * width]) if to_b else \
                (b[j + m * width:j + (m + 1) * width], a[i + m * run:i + m * run + width])
            for k in range(width):
                dst[k] = src[k]


@njit(cache=True)
def _from_grid(g, gp, lanes, y):
    """y (OH, OW, O) = the grid's valid positions: y[oy, ox] = g[(oy*gp + ox)*lanes : + O]."""
    oh, ow, o = y.shape
    _grid_rows(g, 0, gp * lanes, y.reshape(-1), 0, ow * o, oh, lanes, ow, o, True)


@njit(cache=True)
def _to_grid(dy, last, b, gp, lanes, g):
    """Sample b of dy (NHWC when ``last``, else NCHW) onto the grid g; the dropped positions stay 0."""
    d = dy[b]
    if last:
        oh, ow, o = d.shape
        _grid_rows(g, 0, gp * lanes, d.reshape(-1), 0, ow * o, oh, lanes, ow, o, False)
    else:
        o, oh, ow = d.shape
        for oy in range(oh):
            _transpose(d[:, oy, :], g[oy * gp * lanes:(oy * gp + ow) * lanes].reshape(ow, lanes)[:, :o])


# ---------------------------------------------------------------- the routes' compiled loops
#
# Each runs the samples [first, stop) of one chunk on one of the kernel
# threads (``numba_threads``), in that thread's scratch (``worker``).

@njit(nogil=True, cache=True)
def _forward(chunk, first, stop, worker, x, last, wt, seg, taps, sh, sw, ph, z, gp, plane, q, by_rows, xs, yg, y):
    """y[n] = the tiles over sample n's planes: the sum over taps and channels of x's pixels times W's rows.

    seg: the offsets (in numbers) of groups of ``taps`` taps whose pixels follow each other. ``by_rows``: the
    tiles fill whole output rows exactly (OW a multiple of their rows, no padded channels), so they write y
    row by row as it lies, with no grid to copy from.
    """
    c, lanes = wt.shape[1], wt.shape[2]
    oh, ow = y.shape[1], y.shape[2]
    w_flat, scratch, grid = wt.reshape(-1), xs[worker], yg[worker]
    blocks, rows = (oh, ow) if by_rows else (1, q)  # one tile call site: each is seconds of compilation
    for b in range(first, stop):
        _fill(x, last, b, sh, sw, ph, z, gp, plane, c, scratch)
        out = y[b].reshape(-1) if by_rows else grid
        for oy in range(blocks):
            tiles(scratch, oy * gp * c, 1, c, seg, w_flat, 0, lanes, taps * c * lanes, taps * c, rows, out,
                  oy * ow * lanes, lanes, lanes, False)
        if not by_rows:
            _from_grid(grid, gp, lanes, y[b])


@njit(nogil=True, cache=True)
def _backward_weight(chunk, first, stop, worker, dy, dy_last, x, last, seg, sh, sw, ph, z, gp, plane, q, c, xs, dyg,
                     parts):
    """parts[chunk, tap] = the sum over the chunk's samples of (x's planes at the tap)^T @ dy on the grid."""
    lanes, rows = parts.shape[3], parts.shape[2]
    one = np.zeros(1, dtype=np.int64)
    scratch, grid, part = xs[worker], dyg[worker], parts[chunk].reshape(-1)
    for b in range(first, stop):
        _fill(x, last, b, sh, sw, ph, z, gp, plane, c, scratch)
        _to_grid(dy, dy_last, b, gp, lanes, grid)
        for tap in range(seg.size):
            tiles(scratch, seg[tap] * c, c, 1, one, grid, 0, lanes, 0, q, c, part, tap * rows * lanes, lanes, lanes,
                  True)


@njit(nogil=True, cache=True)
def _backward_input_scatter(chunk, first, stop, worker, dy, dy_last, wt, seg, sh, sw, ph, z, gp, plane, q, dyg, dxs,
                            dx):
    """dx[n]: every tap's dy on the grid @ W[tap] added into the planes at the tap's offset, then un-planed."""
    o, lanes = wt.shape[1], wt.shape[2]
    one = np.zeros(1, dtype=np.int64)
    w_flat, grid, scratch = wt.reshape(-1), dyg[worker], dxs[worker]
    for b in range(first, stop):
        _to_grid(dy, dy_last, b, gp, o, grid)
        scratch[:] = 0
        for tap in range(seg.size):
            tiles(grid, 0, 1, o, one, w_flat, tap * o * lanes, lanes, 0, o, q, scratch, seg[tap] * lanes, lanes,
                  lanes, True)
        _planes_to_hwc(scratch, sh, sw, ph, z, gp, plane, lanes, dx[b])


# ---------------------------------------------------------------- the routes

def _scratch(p, channels, dtype):
    """Per-thread flat scratch images of ``p``'s planes, ``channels`` numbers a pixel, zero (the padding)."""
    return np.zeros((p.threads, p.total * channels), dtype=dtype)


def forward(x, weight, p):
    """y = W * x by direct tiles; y comes back channels-last (an NHWC array's NCHW view)."""
    dtype = x.dtype
    lanes = _up(p.o, lanes_of(dtype))
    last, xa = channels_last(x)
    wt = np.zeros((p.kh * p.kw, p.c, lanes), dtype=dtype)
    wt[:, :, :p.o] = weight.transpose(2, 3, 1, 0).reshape(p.kh * p.kw, p.c, p.o)  # (tap, C, O)
    xs, yg = _scratch(p, p.c, dtype), np.empty((p.threads, p.grid * lanes), dtype=dtype)
    seg, taps = p.seg * p.c, 1  # offsets in numbers, not pixels
    if p.sw == 1:  # a kernel row's taps read consecutive pixels: one step of kw*C numbers (fewer, longer loops)
        seg, taps = np.ascontiguousarray(seg[::p.kw]), p.kw
    check_reach(xs[0], 0, 1, p.c, seg, wt, 0, lanes, taps * p.c * lanes, taps * p.c, p.q, yg[0], 0, lanes, lanes)
    by_rows = lanes == p.o and p.ow % rows_per_tile(lanes, lanes_of(dtype))[0] == 0
    y = np.empty((p.n, p.oh, p.ow, p.o), dtype=dtype)
    run(_forward, p.n, xa, last, wt, seg, taps, p.sh, p.sw, p.ph, p.z, p.gp, p.plane, p.q, by_rows, xs, yg, y)
    return y.transpose(0, 3, 1, 2)


def backward_input(grad_out, weight, p):
    """dx: at stride 1 (padding < kernel) the forward of dy with flipped weights, else the taps' scatter."""
    if p.sh == p.sw == 1 and p.ph < p.kh and p.pw < p.kw:
        flipped = weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
        return forward(grad_out, flipped, plan(grad_out.shape, flipped.shape, (1, 1),
                                               (p.kh - 1 - p.ph, p.kw - 1 - p.pw)))
    dtype = grad_out.dtype
    lanes = _up(p.c, lanes_of(dtype))
    last, dy = channels_last(grad_out)
    wt = np.zeros((p.kh * p.kw, p.o, lanes), dtype=dtype)
    wt[:, :, :p.c] = weight.transpose(2, 3, 0, 1).reshape(p.kh * p.kw, p.o, p.c)  # (tap, O, C)
    dyg = np.zeros((p.threads, p.grid * p.o), dtype=dtype)
    dxs = np.empty((p.threads, p.total * lanes), dtype=dtype)
    for tap in (0, p.seg.size - 1):
        check_reach(dyg[0], 0, 1, p.o, np.zeros(1, np.int64), wt, tap * p.o * lanes, lanes, 0, p.o, p.q, dxs[0],
                    int(p.seg[tap]) * lanes, lanes, lanes)
    dx = np.empty((p.n, p.h, p.w, p.c), dtype=dtype)
    run(_backward_input_scatter, p.n, dy, last, wt, p.seg, p.sh, p.sw, p.ph, p.z, p.gp, p.plane, p.q, dyg, dxs, dx)
    return dx.transpose(0, 3, 1, 2)


def backward_weight(grad_out, x, p):
    """dW[:, :, i, j] = the sum over samples of dy on the grid, transposed, @ x's planes at tap (i, j)."""
    dtype = x.dtype
    lanes = _up(p.o, lanes_of(dtype))
    last, xa = channels_last(x)
    dy_last, dy = channels_last(grad_out)
    rows = _up(p.c, rows_per_tile(lanes, lanes_of(dtype))[0])
    xs, dyg = _scratch(p, p.c, dtype), np.zeros((p.threads, p.grid * lanes), dtype=dtype)
    parts = np.zeros((chunks_for(p.n), p.kh * p.kw, rows, lanes), dtype=dtype)
    one = np.zeros(1, np.int64)
    for tap in range(p.seg.size):
        check_reach(xs[0], int(p.seg[tap]) * p.c, p.c, 1, one, dyg[0], 0, lanes, 0, p.q, p.c, parts[0].reshape(-1),
                    tap * rows * lanes, lanes, lanes)
    run(_backward_weight, p.n, dy, dy_last, xa, last, p.seg, p.sh, p.sw, p.ph, p.z, p.gp, p.plane, p.q, p.c, xs, dyg,
        parts, chunks=len(parts))  # chunk k adds into parts[k]: never more chunks than parts
    dw = parts.sum(axis=0)[:, :p.c, :p.o].reshape(p.kh, p.kw, p.c, p.o)
    return np.ascontiguousarray(dw.transpose(3, 2, 0, 1))
