"""Copies between a sample's layouts and the HWC scratch images of the Numba CPU convolution routes.

Activations arrive NCHW or channels-last (NHWC memory seen as NCHW, as the
direct route and ``numba_nhwc`` hand them back); each route copies a sample
into a channels-last scratch image (rows transposed from NCHW, copied from
NHWC) and its result back out in the layout its input came in.

Inner loops index with the loop counter itself (over 1-D views), never with
a computed offset: Numba then knows the index is not negative, drops its
wraparound check, and LLVM vectorises the copy (7x faster, measured).
"""
import numpy as np
from numba import njit

from . import numba_nhwc


def _c(a):
    """``a`` as a C-contiguous array (no copy when it already is one), so each kernel compiles once."""
    return np.ascontiguousarray(a)


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
def _copy_rows(dst, src):
    """dst[:] = src for 2-D arrays, a row at a time."""
    for i in range(dst.shape[0]):
        _copy(dst[i], src[i])


@njit(cache=True)
def _to_hwc(x, last, b, ph, pw, xp):
    """xp[ph + iy, pw + ix, c] = sample b of x: into the interior of an HWC scratch image.

    x is NHWC when ``last`` (a channels-last array: rows copied), else NCHW (rows transposed).
    """
    if last:
        for iy in range(x.shape[1]):
            _copy_rows(xp[ph + iy, pw:pw + x.shape[2]], x[b, iy])
    else:
        for iy in range(x.shape[2]):
            _transpose(x[b, :, iy, :], xp[ph + iy, pw:pw + x.shape[3]])


@njit(cache=True)
def _from_hwc(xp, ph, pw, last, x, b):
    """Sample b of x (NHWC when ``last``, else NCHW) = the interior of an HWC scratch image."""
    if last:
        for iy in range(x.shape[1]):
            _copy_rows(x[b, iy], xp[ph + iy, pw:pw + x.shape[2]])
    else:
        for iy in range(x.shape[2]):
            _transpose(xp[ph + iy, pw:pw + x.shape[3]], x[b, :, iy, :])


def _layout(a):
    """(True, a's NHWC array) for a channels-last a, else (False, a as a C-contiguous NCHW array)."""
    if numba_nhwc.is_channels_last(a):
        return True, a.transpose(0, 2, 3, 1)
    return False, _c(a)


def _empty(last, n, c, h, w, dtype):
    """An (n, c, h, w) result to fill: an NHWC array when ``last`` (returned as its NCHW view), else NCHW."""
    return np.empty((n, h, w, c), dtype=dtype) if last else np.empty((n, c, h, w), dtype=dtype)


def _nchw(a, last):
    return a.transpose(0, 3, 1, 2) if last else a
