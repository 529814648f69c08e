"""Every kernel backend against the NumPy reference, and the registry that picks them.

The reference (``kernels/numpy_ref.py``) is the oracle: each test draws shapes,
kernel sizes, strides and paddings with Hypothesis, runs one kernel on every
backend that can run here and on the reference, and compares. Backends that
cannot run are skipped with the reason: "numba" needs Numba, "cupy" needs CuPy
and a GPU, "numba-cuda" needs a GPU (its kernels also run under Numba's CUDA
simulator in ``tests/test_kernels_cudasim.py``).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import minires  # noqa: E402
import minires.functional as F  # noqa: E402
from minires import Tensor, kernels  # noqa: E402
from minires.kernels import BackendUnavailable  # noqa: E402
from minires.course import is_removed  # noqa: E402
from minires.kernels import _index  # noqa: E402
from minires.kernels import numpy_ref as ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- the backends under test

class Backend:
    """A kernel backend plus the moves between host arrays and the arrays it works on."""

    def __init__(self, name, module):
        self.name, self.module = name, module
        self.device = kernels.BACKENDS[name][1]
        self.cupy = None
        if self.device == "cuda":
            try:
                import cupy
                self.cupy = cupy if cupy.is_available() else None
            except ImportError:
                pass

    def put(self, a):
        """A host array as this backend's input (CuPy array, Numba device array or the array itself)."""
        if not isinstance(a, np.ndarray) or self.device == "cpu":
            return a
        if self.cupy is not None:
            return self.cupy.asarray(a)
        from numba import cuda
        return cuda.to_device(a)

    def get(self, a):
        """A result of this backend as a host array."""
        if isinstance(a, tuple):
            return tuple(self.get(v) for v in a)
        if hasattr(a, "copy_to_host"):
            return a.copy_to_host()
        if hasattr(a, "get"):
            return a.get()
        return a

    def __call__(self, kernel, *args):
        """Run ``kernel`` on host arrays and return host arrays."""
        if is_removed(f"kernels/{kernels.BACKENDS[self.name][0]}.py", kernel):
            pytest.skip(f"{self.name}'s {kernel} is removed from this student copy")
        return self.get(getattr(self.module, kernel)(*(self.put(a) for a in args)))

    def __repr__(self):
        return self.name


def _load_or_skip(name):
    if name == "numba-cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("the CUDA simulator is too slow for these searches; tests/test_kernels_cudasim.py covers it")
    try:
        return kernels.load(name)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=["numba", "numba-cuda", "cupy"], scope="module")
def backend(request):
    """Each compiled backend that can run here."""
    return Backend(request.param, _load_or_skip(request.param))


@pytest.fixture(autouse=True)
def _restore_registry():
    """Tests may force a backend; put the registry back afterwards."""
    yield
    kernels.reset()


def close(got, want, rtol=1e-5, atol=1e-5, what=""):
    """Agreement in value, shape and dtype; atol is relative to the size of the values."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, expected {want.dtype}"
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=what)


# ---------------------------------------------------------------- what Hypothesis draws

@st.composite
def windows(draw, pool=False):
    """A batch shape and a window (kernel, stride, padding) that fits it: at least one output per axis.

    Pooling pads at most half the window, as PyTorch requires.
    """
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph = draw(st.integers(0, kh // 2 if pool else 2))
    pw = draw(st.integers(0, kw // 2 if pool else 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return dict(shape=(n, c, h, w), kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw))


dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**32 - 1)


def normal(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def out_shape(win, channels=None):
    (n, c, h, w), (kh, kw), (sh, sw), (ph, pw) = win["shape"], win["kernel"], win["stride"], win["padding"]
    return (n, c if channels is None else channels,
            _index.conv_output_size(h, kh, sh, ph), _index.conv_output_size(w, kw, sw, pw))


# ---------------------------------------------------------------- the shared index helpers

def test_index_helpers_agree_with_brute_force():
    """tap_output inverts tap_input, inside_range is exactly the taps that miss the padding, unravel inverts ravel."""
    for size in range(1, 7):
        for kernel in range(1, 5):
            for stride in range(1, 4):
                for padding in range(3):
                    out = _index.conv_output_size(size, kernel, stride, padding)
                    for tap in range(kernel):
                        reads = [_index.tap_input(o, tap, stride, padding) for o in range(out)]
                        first, stop = _index.inside_range(tap, stride, padding, size, out)
                        assert list(range(first, stop)) == [o for o in range(out) if 0 <= reads[o] < size]
                        for pos in range(size):
                            o = _index.tap_output(pos, tap, stride, padding, out)
                            assert ([o] if o >= 0 else []) == [q for q in range(out) if reads[q] == pos]
    for k in range(60):
        assert _index.unravel3(k, 4, 5) == np.unravel_index(k, (3, 4, 5))
        assert _index.unravel4(k, 2, 3, 5) == np.unravel_index(k, (2, 2, 3, 5))
    assert _index.col_row(1, 2, 0, 3, 3) == 15 and _index.col_column(1, 0, 2, 4, 5) == 22


# ---------------------------------------------------------------- im2col / col2im

@given(win=windows(), seed=seeds, dtype=dtypes)
def test_im2col(backend, win, seed, dtype):
    x = normal(seed, win["shape"], dtype)
    args = (*win["kernel"], win["stride"], win["padding"])
    close(backend("im2col", x, *args), ref.im2col(x, *args))


@given(win=windows(), seed=seeds, dtype=dtypes)
def test_col2im(backend, win, seed, dtype):
    args = (*win["kernel"], win["stride"], win["padding"])
    cols = normal(seed, ref.im2col(np.zeros(win["shape"]), *args).shape, dtype)
    close(backend("col2im", cols, win["shape"], *args), ref.col2im(cols, win["shape"], *args))


@given(win=windows(), seed=seeds)
def test_col2im_is_the_adjoint_of_im2col(backend, win, seed):
    """<im2col(x), cols> = <x, col2im(cols)>: what makes col2im the backward of im2col."""
    args = (*win["kernel"], win["stride"], win["padding"])
    x = normal(seed, win["shape"], np.float64)
    cols = normal(seed + 1, ref.im2col(x, *args).shape, np.float64)
    lhs = np.sum(backend("im2col", x, *args) * cols)
    rhs = np.sum(x * backend("col2im", cols, win["shape"], *args))
    assert np.isclose(lhs, rhs, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- convolution

@given(win=windows(), out_channels=st.integers(1, 4), seed=seeds, dtype=dtypes)
def test_conv2d_forward(backend, win, out_channels, seed, dtype):
    x = normal(seed, win["shape"], dtype)
    weight = normal(seed + 1, (out_channels, win["shape"][1], *win["kernel"]), dtype)
    close(backend("conv2d_forward", x, weight, win["stride"], win["padding"]),
          ref.conv2d_forward(x, weight, win["stride"], win["padding"]))


@given(win=windows(), out_channels=st.integers(1, 4), seed=seeds, dtype=dtypes)
def test_conv2d_backward_input(backend, win, out_channels, seed, dtype):
    weight = normal(seed, (out_channels, win["shape"][1], *win["kernel"]), dtype)
    grad = normal(seed + 1, out_shape(win, out_channels), dtype)
    args = (win["shape"], win["stride"], win["padding"])
    close(backend("conv2d_backward_input", grad, weight, *args), ref.conv2d_backward_input(grad, weight, *args))


@given(win=windows(), out_channels=st.integers(1, 4), seed=seeds, dtype=dtypes)
def test_conv2d_backward_weight(backend, win, out_channels, seed, dtype):
    x = normal(seed, win["shape"], dtype)
    grad = normal(seed + 1, out_shape(win, out_channels), dtype)
    weight_shape = (out_channels, win["shape"][1], *win["kernel"])
    args = (weight_shape, win["stride"], win["padding"])
    close(backend("conv2d_backward_weight", grad, x, *args), ref.conv2d_backward_weight(grad, x, *args))


def test_conv2d_on_a_batch_larger_than_the_thread_count(backend):
    """Enough samples that every thread gets a chunk (the Hypothesis batches are small)."""
    x, weight = normal(0, (37, 3, 10, 9)), normal(1, (5, 3, 3, 3))
    grad = normal(2, (37, 5, 5, 6))
    close(backend("conv2d_forward", x, weight, (2, 2), (1, 2)), ref.conv2d_forward(x, weight, (2, 2), (1, 2)))
    close(backend("conv2d_backward_input", grad, weight, x.shape, (2, 2), (1, 2)),
          ref.conv2d_backward_input(grad, weight, x.shape, (2, 2), (1, 2)))
    close(backend("conv2d_backward_weight", grad, x, weight.shape, (2, 2), (1, 2)),
          ref.conv2d_backward_weight(grad, x, weight.shape, (2, 2), (1, 2)), atol=1e-4)


@pytest.mark.parametrize("layout", ["rows", "shifted"])
@pytest.mark.parametrize("cblas", ["numpy's cblas", "np.dot"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_conv_routes_agree_with_the_reference(monkeypatch, layout, cblas, dtype):
    """numba_cpu's convolutions by each route of numba_conv: unfolded rows or (stride 1) shifted windows (a plain
    1x1 takes the pointwise GEMMs either way), and NumPy's own CBLAS when found or np.dot. Every
    route must match the reference.

    ResNet-like sizes (many channels, strided, 1x1, non-square and padded
    windows), so every GEMM operand has a leading dimension other than its
    width, and a single output pixel, whose (1, O) operands have a stride
    that means nothing.
    """
    numba_cpu = _load_or_skip("numba")
    from minires.kernels import numba_conv, numba_direct
    monkeypatch.setattr(numba_direct, "DIRECT_MAX_CHANNELS", 0)  # the direct route: test_kernels_numba_routes.py
    monkeypatch.setattr(numba_conv, "SHIFTED_MIN_CHANNELS", 1 if layout == "shifted" else 10**9)
    if cblas == "np.dot":
        monkeypatch.setattr(numba_conv, "CBLAS", {np.dtype(t): (0, False) for t in (np.float32, np.float64)})
    elif numba_conv.CBLAS[np.dtype(dtype)][0] == 0:
        pytest.skip("NumPy's BLAS here is not a scipy-openblas build; np.dot serves every GEMM")
    cases = [(5, 16, 12, 12, 32, 3, 3, 1, 1), (5, 16, 12, 12, 32, 3, 3, 2, 1),
             (4, 24, 7, 7, 8, 1, 1, 1, 0), (3, 8, 6, 5, 4, 1, 1, 1, 1), (3, 8, 6, 5, 4, 1, 1, 2, 0),  # 1x1s
             (3, 3, 9, 8, 16, 3, 3, 1, 1), (3, 8, 9, 10, 5, 2, 3, 1, (0, 2)), (2, 10, 6, 6, 4, 5, 5, 1, 2),
             (2, 8, 3, 1, 3, 5, 5, 1, 2),  # a window wider than image and padding: the last taps run far over
             (2, 1, 2, 3, 2, 2, 3, 1, 0)]  # one output pixel, so (1, O) operands
    for (n, c, h, w, o, kh, kw, s, p) in cases:
        stride, padding = (s, s), (p if isinstance(p, tuple) else (p, p))
        x, weight = normal(n, (n, c, h, w), dtype), normal(c, (o, c, kh, kw), dtype)
        y = ref.conv2d_forward(x, weight, stride, padding)
        grad = normal(o, y.shape, dtype)
        what = f"{layout}, {cblas}, {np.dtype(dtype)}: x {x.shape}, weight {weight.shape}, stride {s}, padding {p}"
        close(numba_cpu.conv2d_forward(x, weight, stride, padding), y, rtol=1e-4, atol=1e-5, what=what)
        close(numba_cpu.conv2d_backward_input(grad, weight, x.shape, stride, padding),
              ref.conv2d_backward_input(grad, weight, x.shape, stride, padding), rtol=1e-4, atol=1e-5, what=what)
        close(numba_cpu.conv2d_backward_weight(grad, x, weight.shape, stride, padding),
              ref.conv2d_backward_weight(grad, x, weight.shape, stride, padding), rtol=1e-4, atol=1e-5,
              what=what)


# ---------------------------------------------------------------- residual add

shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6)


@given(shape=shapes, relu=st.booleans(), seed=seeds, dtype=dtypes)
def test_residual_add_forward(backend, shape, relu, seed, dtype):
    f, s = normal(seed, shape, dtype), normal(seed + 1, shape, dtype)
    close(backend("residual_add_forward", f, s, relu), ref.residual_add_forward(f, s, relu))


@given(shape=shapes, relu=st.booleans(), seed=seeds, dtype=dtypes)
def test_residual_add_backward_returns_both_gradients(backend, shape, relu, seed, dtype):
    y = ref.residual_add_forward(normal(seed, shape, dtype), normal(seed + 1, shape, dtype), relu)
    grad = normal(seed + 2, shape, dtype)
    got = backend("residual_add_backward", grad, y, relu)
    want = ref.residual_add_backward(grad, y, relu)
    assert isinstance(got, tuple) and len(got) == 2
    close(got[0], want[0])  # into the residual branch
    close(got[1], want[1])  # into the shortcut


# ---------------------------------------------------------------- batch norm

def _statistics(x):
    mean, var = ref.batch_norm_stats(x)
    return mean.astype(x.dtype), (1.0 / np.sqrt(var + 1e-5)).astype(x.dtype)


@given(win=windows(), seed=seeds, dtype=dtypes, offset=st.sampled_from([0.0, 100.0]))
def test_batch_norm_stats(backend, win, seed, dtype, offset):
    """Also with a large mean, where a one-pass E[x^2] - E[x]^2 would lose the variance."""
    x = normal(seed, win["shape"], dtype) + dtype(offset)
    for got, want in zip(backend("batch_norm_stats", x), ref.batch_norm_stats(x)):
        close(got, want, rtol=1e-4)


@given(win=windows(), seed=seeds, dtype=dtypes)
def test_batch_norm_forward(backend, win, seed, dtype):
    """y = x * scale + shift per channel (the op folds the statistics, weight and bias into scale and shift)."""
    x = normal(seed, win["shape"], dtype)
    c = win["shape"][1]
    scale, shift = normal(seed + 1, c, dtype), normal(seed + 2, c, dtype)
    close(backend("batch_norm_forward", x, scale, shift), ref.batch_norm_forward(x, scale, shift))


@given(win=windows(), seed=seeds, dtype=dtypes)
def test_batch_norm_grad_sums(backend, win, seed, dtype):
    x = normal(seed, win["shape"], dtype)
    grad = normal(seed + 1, win["shape"], dtype)
    mean, invstd = _statistics(x)
    got = backend("batch_norm_grad_sums", grad, x, mean, invstd)
    want = ref.batch_norm_grad_sums(grad, x, mean, invstd)
    assert isinstance(got, tuple) and len(got) == 2
    for name, g, w in zip(("dbias", "dweight"), got, want):
        close(g, w, rtol=1e-4, atol=1e-4, what=name)


@given(win=windows(), seed=seeds, dtype=dtypes)
def test_batch_norm_backward_input(backend, win, seed, dtype):
    x = normal(seed, win["shape"], dtype)
    grad = normal(seed + 1, win["shape"], dtype)
    mean, invstd = _statistics(x)
    scale = invstd * normal(seed + 2, win["shape"][1], dtype)
    dbias, dweight = ref.batch_norm_grad_sums(grad, x, mean, invstd)
    close(backend("batch_norm_backward_input", grad, x, mean, invstd, scale, dbias, dweight),
          ref.batch_norm_backward_input(grad, x, mean, invstd, scale, dbias, dweight), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- pooling

def tie_free(seed, shape, dtype=np.float32):
    """Distinct values (a shuffled range), so every window has a single maximum."""
    size = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(size).reshape(shape) - size / 2).astype(dtype)


@given(win=windows(pool=True), seed=seeds, dtype=dtypes)
def test_max_pool2d_forward_value_and_winning_tap(backend, win, seed, dtype):
    x = tie_free(seed, win["shape"], dtype)
    args = (win["kernel"], win["stride"], win["padding"])
    y, argmax = backend("max_pool2d_forward", x, *args)
    want_y, want_argmax = ref.max_pool2d_forward(x, *args)
    close(y, want_y)
    assert argmax.dtype == np.int32
    np.testing.assert_array_equal(argmax, want_argmax)


@pytest.mark.parametrize("kernel, stride, padding", [((3, 3), (1, 1), (1, 1)), ((2, 3), (2, 1), (1, 0))])
def test_max_pool2d_ties_go_to_the_first_tap(backend, kernel, stride, padding):
    """On a constant image every tap ties: the first one inside the image wins, as in PyTorch."""
    x = np.ones((2, 3, 5, 6), np.float32)
    y, argmax = backend("max_pool2d_forward", x, kernel, stride, padding)
    want_y, want_argmax = ref.max_pool2d_forward(x, kernel, stride, padding)
    close(y, want_y)
    np.testing.assert_array_equal(argmax, want_argmax)


@given(win=windows(pool=True), seed=seeds, dtype=dtypes)
def test_max_pool2d_backward(backend, win, seed, dtype):
    args = (win["kernel"], win["stride"], win["padding"])
    _, argmax = ref.max_pool2d_forward(tie_free(seed, win["shape"], dtype), *args)
    grad = normal(seed + 1, argmax.shape, dtype)
    close(backend("max_pool2d_backward", grad, argmax, win["shape"], *args),
          ref.max_pool2d_backward(grad, argmax, win["shape"], *args))


@given(win=windows(pool=True), seed=seeds, dtype=dtypes)
def test_avg_pool2d_forward(backend, win, seed, dtype):
    x = normal(seed, win["shape"], dtype)
    args = (win["kernel"], win["stride"], win["padding"])
    close(backend("avg_pool2d_forward", x, *args), ref.avg_pool2d_forward(x, *args))


@given(win=windows(pool=True), seed=seeds, dtype=dtypes)
def test_avg_pool2d_backward(backend, win, seed, dtype):
    args = (win["kernel"], win["stride"], win["padding"])
    grad = normal(seed, out_shape(win), dtype)
    close(backend("avg_pool2d_backward", grad, win["shape"], *args),
          ref.avg_pool2d_backward(grad, win["shape"], *args))


def test_float16_is_served(backend):
    """Half precision either runs or (Numba on the CPU) falls back to the reference."""
    if backend.device == "cuda":
        pytest.skip("the GPU backends are compiled for float32 and float64")
    x = normal(0, (2, 3, 6, 6), np.float16)
    close(backend("avg_pool2d_forward", x, (2, 2), (2, 2), (0, 0)),
          ref.avg_pool2d_forward(x, (2, 2), (2, 2), (0, 0)), rtol=1e-3)


# ---------------------------------------------------------------- a whole residual block

def _residual_block(backend, seed=0):
    """Forward and backward of y = relu(bn(conv(relu(bn(conv(x))))) + x), then pooled, on one backend.

    Returns, as host arrays, the output, the gradients of the input and of
    every parameter, and the residual add's record of the two gradient paths.
    """
    kernels.reset()
    minires.use_kernels(backend.name)
    rng = np.random.default_rng(seed)

    def leaf(*shape, scale=1.0):
        return Tensor(backend.put((rng.standard_normal(shape) * scale).astype(np.float32)), requires_grad=True)

    x = leaf(4, 6, 8, 8)
    p = {"w1": leaf(6, 6, 3, 3, scale=0.3), "g1": leaf(6), "b1": leaf(6),
         "w2": leaf(6, 6, 3, 3, scale=0.3), "g2": leaf(6), "b2": leaf(6)}
    out = F.relu(F.batch_norm(F.conv2d(x, p["w1"], padding=1), None, None, p["g1"], p["b1"], training=True))
    out = F.batch_norm(F.conv2d(out, p["w2"], padding=1), None, None, p["g2"], p["b2"], training=True)
    y = F.residual_add(out, x)
    pooled = F.avg_pool2d(F.max_pool2d(y, 3, stride=1, padding=1), 2)
    projection = Tensor(backend.put(rng.standard_normal(pooled.shape).astype(np.float32)))
    (pooled * projection).sum().backward()
    record = y.grad_fn.record
    grads = {"x": x.grad.data, **{k: v.grad.data for k, v in p.items()}}
    return (backend.get(pooled.data), {k: backend.get(g) for k, g in grads.items()},
            (backend.get(record.via_shortcut), backend.get(record.via_residual)))


def test_residual_block_agrees_with_the_reference(backend):
    """Forward, every gradient and both recorded paths of a residual block match the NumPy backend's."""
    if backend.device == "cuda" and backend.cupy is None:
        pytest.skip("GPU tensors need CuPy")
    want_y, want_grads, want_paths = _residual_block(Backend("numpy", ref))
    got_y, got_grads, got_paths = _residual_block(backend)
    close(got_y, want_y, rtol=1e-4, atol=1e-4, what="output")
    for name in want_grads:
        close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-4, what=f"grad of {name}")
    close(got_paths[0], want_paths[0], rtol=1e-4, atol=1e-4, what="via_shortcut")
    close(got_paths[1], want_paths[1], rtol=1e-4, atol=1e-4, what="via_residual")


# ---------------------------------------------------------------- the registry

def test_forcing_a_backend_serves_host_arrays_with_it():
    module = _load_or_skip("numba")
    minires.use_kernels("numba")
    assert kernels.active("cpu") == "numba"
    assert kernels.for_array(np.zeros(3)) is module
    kernels.reset()
    assert kernels.for_array(np.zeros(3)) is ref


@pytest.mark.parametrize("cupy_usable, expected", [(True, "cupy"), (False, "numba-cuda")])
def test_gpu_arrays_default_to_cupy_else_numba_cuda(monkeypatch, cupy_usable, expected):
    monkeypatch.setattr(kernels, "_available", {"cupy": cupy_usable})
    assert kernels.active("cuda") == expected
    kernels.use("numpy")  # forcing the CPU backend leaves the GPU's choice alone
    assert kernels.active("cuda") == expected


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="numba-cuda"):
        kernels.use("fortran")


@pytest.mark.parametrize("name, hidden, extra", [
    ("numba", "numba", "minires[numba]"),
    ("numba-cuda", "numba", "minires[numba]"),
    ("cupy", "cupy", "minires[cuda]"),
])
def test_missing_library_gives_one_clear_line(monkeypatch, name, hidden, extra):
    """With the library hidden, forcing the backend says what to install, in one line."""
    module = "minires.kernels." + kernels.BACKENDS[name][0]
    monkeypatch.setitem(sys.modules, hidden, None)  # `import <hidden>` now raises ImportError
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setattr(kernels, "_available", {})
    with pytest.raises(BackendUnavailable) as info:
        kernels.use(name)
    message = str(info.value)
    assert "\n" not in message
    assert f"kernel backend {name!r}" in message
    assert f"pip install '{extra}'" in message
    if name == "cupy":
        assert "cupy-cuda12x" in message
    assert kernels.active("cpu") == "numpy"  # nothing was forced


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=120)


HIDE_NUMBA = "import sys; sys.modules['numba'] = None\n"


def test_import_minires_works_without_numba():
    result = _python(HIDE_NUMBA + """
import numpy as np
import minires, minires.functional as F
x = minires.randn(2, 3, 8, 8, requires_grad=True)
F.max_pool2d(F.conv2d(x, minires.randn(4, 3, 3, 3), padding=1), 2).sum().backward()
assert x.grad.shape == (2, 3, 8, 8)
try:
    minires.use_kernels("numba")
except minires.kernels.BackendUnavailable as exc:
    print("unavailable:", exc)
""")
    assert result.returncode == 0, result.stderr
    assert "unavailable: kernel backend 'numba' needs numba" in result.stdout
    assert "pip install 'minires[numba]'" in result.stdout


def test_minires_kernels_env_falls_back_to_numpy_without_numba():
    result = _python(HIDE_NUMBA + """
import minires
print("active:", minires.kernels.active("cpu"))
""", MINIRES_KERNELS="numba")
    assert result.returncode == 0, result.stderr
    assert "active: numpy" in result.stdout
    assert "falling back to the numpy backend" in result.stderr
