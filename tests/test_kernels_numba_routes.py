"""The Numba CPU backend's direct convolutions and channels-last kernels against the NumPy reference.

``numba_direct`` serves the convolutions with few channels (``serves``): each
sample copied once into channels-last planes, every output's sum over taps
and channels held in the vector registers of ``numba_tile``'s tiles. Its
outputs come back channels-last (NHWC memory seen as NCHW), and
``numba_nhwc`` runs batch norm and the residual add on them as they lie.
These tests drive each route with the shapes that select it, strides,
paddings (asymmetric too), odd sizes and channel counts that fill no vector,
in float32 and float64, from NCHW and channels-last inputs, and compare
with ``numpy_ref``. ``test_kernels.py`` runs its Hypothesis searches through
the same routes (their small channel counts select the direct route).
"""
import numpy as np
import pytest

pytest.importorskip("numba")

from minires.course import is_removed  # noqa: E402
from minires.kernels import numpy_ref as ref  # noqa: E402

if any(is_removed(f"kernels/{m}.py") for m in ("numba_cpu", "numba_conv", "numba_direct", "numba_nhwc", "numba_tile")):
    pytest.skip("this student copy removes the Numba CPU backend's kernels", allow_module_level=True)
from minires.kernels import numba_cpu, numba_direct, numba_nhwc, numba_tile  # noqa: E402

DTYPES = [np.float32, np.float64]


def normal(seed, shape, dtype):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def channels_last(a):
    """The same values, NHWC in memory: PyTorch's channels_last."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def close(got, want, dtype, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, what
    tol = 1e-4 if dtype == np.float32 else 1e-10
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


# ---------------------------------------------------------------- the register tile

def _tile_by_loops(a, a_off, a_sk, a_sr, seg, b, b_off, b_sk, b_ss, k, rows, c, c_off, c_sr, lanes, accumulate):
    """The sum ``numba_tile.tiles`` computes, written out (rows rounded up to the tile's, as it overruns)."""
    r_tile, _ = numba_tile.rows_per_tile(lanes, numba_tile.lanes_of(c.dtype))
    c = c.copy()
    for r in range(-(-rows // r_tile) * r_tile):
        acc = np.zeros(lanes)
        for s in range(len(seg)):
            for kk in range(k):
                start = b_off + s * b_ss + kk * b_sk
                acc += a[a_off + seg[s] + kk * a_sk + r * a_sr] * b[start:start + lanes].astype(np.float64)
        out = slice(c_off + r * c_sr, c_off + r * c_sr + lanes)
        c[out] = (c[out] if accumulate else 0) + acc
    return c


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vectors", [1, 2, 3, 4, 8])  # 3: the one-vector tiles, three times
@pytest.mark.parametrize("accumulate", [False, True])
def test_tiles_compute_their_sum(dtype, vectors, accumulate):
    """Every row and lane of the tiles over strided a, several taps and offsets, against the loops."""
    lanes = vectors * numba_tile.lanes_of(np.dtype(dtype))
    rows, k, a_sk, a_sr, b_sk = 11, 5, 3, 7, lanes + 4
    seg = np.array([0, 2, 9], dtype=np.int64)
    b_ss = k * b_sk
    a = normal(1, 200, dtype)
    b = normal(2, 3 + len(seg) * b_ss + lanes, dtype)
    c = normal(3, 40 + 16 * (rows + 16) * lanes, dtype)
    args = (a, 4, a_sk, a_sr, seg, b, 3, b_sk, b_ss, k, rows, c, 5, lanes + 6, lanes)
    numba_tile.check_reach(*args)
    want = _tile_by_loops(*args, accumulate)
    numba_tile.tiles(*args, accumulate)
    close(c, want, dtype)


def test_check_reach_refuses_a_buffer_the_tiles_would_overrun():
    lanes = numba_tile.lanes_of(np.dtype(np.float32))
    a, b, c = np.zeros(64, np.float32), np.zeros(4 * lanes, np.float32), np.zeros(8 * lanes, np.float32)
    seg = np.zeros(1, dtype=np.int64)
    with pytest.raises(IndexError, match="reach c"):  # 8 rows of lanes fit, 9 do not
        numba_tile.check_reach(a, 0, 1, 1, seg, b, 0, lanes, 0, 4, 9, c, 0, lanes, lanes)


# ---------------------------------------------------------------- the direct convolutions

CASES = [  # (n, c, h, w, o, kh, kw, stride, padding)
    (3, 16, 12, 12, 16, 3, 3, (1, 1), (1, 1)),     # resnet20's stride-1 shapes (float64: tiles write y by rows)
    (2, 16, 5, 16, 16, 3, 3, (1, 1), (1, 1)),      # float32 tiles writing y by rows (16 = 2 tiles of 8 pixels)
    (2, 32, 8, 8, 64, 3, 3, (2, 2), (1, 1)),       # its strided ones
    (2, 3, 9, 11, 16, 3, 3, (1, 1), (1, 1)),       # an RGB input
    (3, 5, 9, 7, 20, 3, 2, (2, 1), (1, 0)),        # odd sizes, mixed strides and paddings
    (2, 8, 10, 11, 40, 5, 5, (3, 3), (2, 2)),
    (2, 17, 7, 6, 3, 2, 3, (1, 2), (0, 2)),        # channels that fill no vector; padding wider than needed
    (2, 8, 3, 1, 3, 5, 5, (1, 1), (2, 2)),         # a window wider than image and padding
    (2, 4, 6, 6, 6, 2, 2, (1, 1), (2, 1)),         # padding as wide as the kernel: no flipped forward for dx
    (2, 1, 2, 3, 2, 2, 3, (1, 1), (0, 0)),         # one output pixel
    (2, 8, 7, 7, 24, 1, 1, (2, 2), (0, 0)),        # 1x1 (the public kernels send these elsewhere)
    (37, 6, 5, 5, 5, 3, 3, (1, 1), (1, 1)),        # more samples than threads
]


def _reference(x, weight, stride, padding, seed):
    y = ref.conv2d_forward(x, weight, stride, padding)
    grad = normal(seed, y.shape, x.dtype)
    return (y, grad, ref.conv2d_backward_input(grad, weight, x.shape, stride, padding),
            ref.conv2d_backward_weight(grad, x, weight.shape, stride, padding))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:7])) + f"_s{c[7]}_p{c[8]}")
def test_direct_route_agrees_with_the_reference(case, layout, dtype):
    n, c, h, w, o, kh, kw, stride, padding = case
    x, weight = normal(0, (n, c, h, w), dtype), normal(1, (o, c, kh, kw), dtype)
    y, grad, dx, dw = _reference(x, weight, stride, padding, 2)
    if layout == "channels_last":
        x, grad = channels_last(x), channels_last(grad)
    plan = numba_direct.plan(x.shape, weight.shape, stride, padding)
    got_y = numba_direct.forward(x, weight, plan)
    close(got_y, y, dtype, "forward")
    close(numba_direct.backward_input(grad, weight, plan), dx, dtype, "backward_input")
    close(numba_direct.backward_weight(grad, x, plan), dw, dtype, "backward_weight")
    assert numba_nhwc.is_channels_last(got_y) or min(got_y.shape[1], got_y.shape[2] * got_y.shape[3]) == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_public_kernels_take_the_direct_route_for_few_channels(dtype):
    """numba_cpu's conv2d kernels on resnet20-like shapes go direct (channels-last results) and match."""
    x, weight = normal(3, (4, 16, 10, 10), dtype), normal(4, (32, 16, 3, 3), dtype)
    for stride in [(1, 1), (2, 2)]:
        assert numba_direct.serves(x.shape, weight.shape, stride, (1, 1))
        y, grad, dx, dw = _reference(x, weight, stride, (1, 1), 5)
        got = numba_cpu.conv2d_forward(x, weight, stride, (1, 1))
        assert numba_nhwc.is_channels_last(got)
        close(got, y, dtype)
        close(numba_cpu.conv2d_backward_input(grad, weight, x.shape, stride, (1, 1)), dx, dtype)
        close(numba_cpu.conv2d_backward_weight(grad, x, weight.shape, stride, (1, 1)), dw, dtype)


def test_the_direct_route_leaves_wide_and_pointwise_convolutions_to_gemms():
    assert not numba_direct.serves((2, 256, 14, 14), (256, 256, 3, 3), (1, 1), (1, 1))
    assert not numba_direct.serves((2, 64, 14, 14), (256, 64, 1, 1), (1, 1), (0, 0))
    assert numba_direct.serves((2, 64, 8, 8), (64, 64, 3, 3), (1, 1), (1, 1))


# ---------------------------------------------------------------- channels-last batch norm and residual add

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mixed", [False, True])  # the gradient NCHW while x lies channels-last
def test_channels_last_batch_norm_agrees_with_the_reference(dtype, mixed):
    shape = (5, 19, 6, 7)
    x = normal(0, shape, dtype) + dtype(100)  # a large mean: a one-pass variance would lose it
    grad = normal(1, shape, dtype)
    xl, gl = channels_last(x), (grad if mixed else channels_last(grad))
    assert numba_nhwc.is_channels_last(xl) and not numba_nhwc.is_channels_last(x)
    for got, want in zip(numba_cpu.batch_norm_stats(xl), ref.batch_norm_stats(x)):
        close(got, want, dtype, "stats")
    mean, var = ref.batch_norm_stats(x)
    invstd = (1 / np.sqrt(var + 1e-5)).astype(dtype)
    scale, shift = normal(2, 19, dtype), normal(3, 19, dtype)
    y = numba_cpu.batch_norm_forward(xl, scale, shift)
    assert numba_nhwc.is_channels_last(y)
    close(y, ref.batch_norm_forward(x, scale, shift), dtype, "forward")
    sums = numba_cpu.batch_norm_grad_sums(gl, xl, mean, invstd)
    for got, want in zip(sums, ref.batch_norm_grad_sums(grad, x, mean, invstd)):
        close(got, want, dtype, "grad sums")
    dbias, dweight = ref.batch_norm_grad_sums(grad, x, mean, invstd)
    close(numba_cpu.batch_norm_backward_input(gl, xl, mean, invstd, scale, dbias, dweight),
          ref.batch_norm_backward_input(grad, x, mean, invstd, scale, dbias, dweight), dtype, "backward_input")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("first", [0.0, 1e4])  # the one-pass sums shift by the first pixel: also when it is far off
def test_channels_last_batch_norm_statistics_of_a_large_mean(dtype, first):
    x = normal(0, (6, 5, 7, 3), np.float64) + 1e3
    x[0, :, 0, 0] += first
    got = numba_cpu.batch_norm_stats(channels_last(x.astype(dtype)))
    for g, want in zip(got, ref.batch_norm_stats(x)):
        np.testing.assert_allclose(g, want.astype(dtype), rtol=1e-5 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shortcut_layout", ["channels_last", "nchw"])  # option A's padded shortcut is NCHW
def test_channels_last_residual_add_agrees_with_the_reference(dtype, relu, shortcut_layout):
    shape = (3, 6, 5, 7)
    f, s, grad = normal(0, shape, dtype), normal(1, shape, dtype), normal(2, shape, dtype)
    fl = channels_last(f)
    sl = channels_last(s) if shortcut_layout == "channels_last" else s
    y = numba_cpu.residual_add_forward(fl, sl, relu)
    want = ref.residual_add_forward(f, s, relu)
    close(y, want, dtype, "forward")
    for got, expected in zip(numba_cpu.residual_add_backward(grad, y, relu), ref.residual_add_backward(grad, want,
                                                                                                       relu)):
        close(got, expected, dtype, "backward")


# ---------------------------------------------------------------- the BLAS routes on channels-last arrays

BLAS_CASES = [  # (n, c, h, w, o, kh, kw, stride, padding, shifted)
    (3, 12, 9, 8, 10, 3, 3, (2, 2), (1, 1), False),  # unfolded rows
    (3, 12, 9, 8, 10, 3, 2, (1, 1), (1, 0), True),   # shifted windows
    (3, 12, 9, 8, 10, 1, 1, (1, 1), (0, 0), False),  # 1x1: one GEMM over the batch's pixels
    (3, 12, 9, 8, 10, 1, 1, (2, 3), (0, 0), False),  # strided 1x1: every s-th pixel
    (2, 5, 4, 6, 7, 1, 1, (1, 1), (1, 0), False),    # padded 1x1: the rows
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grad_layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("case", BLAS_CASES, ids=lambda c: "x".join(map(str, c[:7])) + f"_s{c[7]}_p{c[8]}")
def test_blas_routes_take_and_give_channels_last(monkeypatch, case, grad_layout, dtype):
    """Wide convolutions (the direct route switched off here) read channels-last x and dy as they lie."""
    from minires.kernels import numba_conv
    n, c, h, w, o, kh, kw, stride, padding, shifted = case
    monkeypatch.setattr(numba_direct, "DIRECT_MAX_CHANNELS", 0)
    monkeypatch.setattr(numba_conv, "SHIFTED_MIN_CHANNELS", 1 if shifted else 10**9)
    x, weight = normal(0, (n, c, h, w), dtype), normal(1, (o, c, kh, kw), dtype)
    y, grad, dx, dw = _reference(x, weight, stride, padding, 2)
    xl = channels_last(x)
    gl = channels_last(grad) if grad_layout == "channels_last" else grad
    got = numba_cpu.conv2d_forward(xl, weight, stride, padding)
    assert numba_nhwc.is_channels_last(got)
    close(got, y, dtype, "forward")
    got_dx = numba_cpu.conv2d_backward_input(gl, weight, x.shape, stride, padding)
    assert numba_nhwc.is_channels_last(got_dx) == (grad_layout == "channels_last")
    close(got_dx, dx, dtype, "backward_input")
    close(numba_cpu.conv2d_backward_weight(gl, xl, weight.shape, stride, padding), dw, dtype, "backward_weight")


# ---------------------------------------------------------------- channels-last max pooling

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [((3, 3), (2, 2), (1, 1)), ((2, 3), (1, 2), (0, 1)), ((3, 2), (3, 1), (1, 1))])
@pytest.mark.parametrize("ties", [False, True])
def test_channels_last_max_pool_agrees_with_the_reference(window, ties, dtype):
    """Values, winning taps (the first on ties, as the reference) and the routed gradient."""
    shape = (3, 7, 9, 8)
    if ties:
        x = np.ones(shape, dtype)
    else:
        x = (np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape) - 200).astype(dtype)
    y, argmax = numba_cpu.max_pool2d_forward(channels_last(x), *window)
    want_y, want_argmax = ref.max_pool2d_forward(x, *window)
    assert numba_nhwc.is_channels_last(y)
    close(y, want_y, dtype)
    np.testing.assert_array_equal(argmax, want_argmax)
    grad = normal(1, want_y.shape, dtype)
    for g in (grad, channels_last(grad)):
        close(numba_cpu.max_pool2d_backward(g, argmax, shape, *window),
              ref.max_pool2d_backward(grad, want_argmax, shape, *window), dtype)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_kernel_threads_start_afresh_in_a_forked_child():
    """A child forked after the kernel threads started gets threads of its own (it inherits none), not a hang."""
    import os
    f = channels_last(normal(0, (4, 16, 5, 6), np.float32))
    want = numba_cpu.residual_add_forward(f, f, True)  # starts the pool here
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if np.array_equal(numba_cpu.residual_add_forward(f, f, True), want) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
