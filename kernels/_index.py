"""Index arithmetic shared by the compiled backends, written once as plain Python.

``numba_cpu`` compiles these functions with ``numba.njit`` and ``numba_cuda``
with ``numba.cuda.jit(device=True)``, so the CPU and GPU kernels use the same
helpers and read side by side (MiniTorch's trick). They are also ordinary
Python functions: call them from a REPL to see what an index means.

Layouts (as in ``numpy_ref``): images are NCHW; im2col's columns are a
(C*kh*kw, N*OH*OW) matrix whose row is the tap (c, i, j) and whose column is
the output position (n, oy, ox).
"""


def conv_output_size(size, kernel, stride, padding):
    """Output length of a convolution or pooling window along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def tap_input(out_pos, tap, stride, padding):
    """Input coordinate read by kernel tap ``tap`` at output position ``out_pos``: out_pos*stride + tap - padding.

    It may lie outside [0, size): that tap then sees the padding.
    """
    return out_pos * stride + tap - padding


def tap_output(in_pos, tap, stride, padding, out_size):
    """The output position whose tap ``tap`` reads input coordinate ``in_pos``, or -1 if there is none.

    The inverse of ``tap_input``: solve in_pos = o*stride + tap - padding for an integer o in [0, out_size).
    """
    t = in_pos + padding - tap
    if t < 0 or t % stride != 0:
        return -1
    o = t // stride
    if o >= out_size:
        return -1
    return o


def inside_range(tap, stride, padding, in_size, out_size):
    """The output positions [first, stop) at which tap ``tap`` reads inside the input (not the padding).

    Solves 0 <= o*stride + tap - padding < in_size for o in [0, out_size).
    """
    first = max(0, -((tap - padding) // stride))  # ceil((padding - tap) / stride)
    stop = min(out_size, (in_size - 1 + padding - tap) // stride + 1)
    return first, max(first, stop)


def col_row(c, i, j, kh, kw):
    """Row of im2col's matrix that holds tap (i, j) of channel c."""
    return (c * kh + i) * kw + j


def col_column(n, oy, ox, oh, ow):
    """Column of im2col's matrix that holds output position (oy, ox) of sample n."""
    return (n * oh + oy) * ow + ox


def unravel3(index, d1, d2):
    """(a, b, c) with index = (a*d1 + b)*d2 + c: a flat index into a C-ordered (., d1, d2) array."""
    c = index % d2
    index //= d2
    return index // d1, index % d1, c


def unravel4(index, d1, d2, d3):
    """(a, b, c, d) with index = ((a*d1 + b)*d2 + c)*d3 + d: a flat index into a C-ordered (., d1, d2, d3) array."""
    d = index % d3
    index //= d3
    c = index % d2
    index //= d2
    return index // d1, index % d1, c, d
