"""Every op in minires.functional: finite-difference gradient checks and loop references.

``minires.gradcheck`` projects the output onto a fixed random tensor R and
checks the gradient of ``sum(f(x) * R)`` in float64; shapes, strides,
paddings and kernel sizes are drawn by Hypothesis. Forward values are
compared with nested-loop implementations written here (no im2col), so
they fail when the vectorised kernels go wrong.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minires
import minires.functional as F
from minires import Function, Tensor
from minires.gradcheck import GradcheckError


def T(a, requires_grad=True):
    return Tensor(np.array(a, dtype=np.float64), requires_grad=requires_grad)


def seeds():
    return st.integers(0, 2 ** 31 - 1)


# ---------------------------------------------------------------- loop references

def conv2d_loops(x, w, b, stride, padding):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, o, oh, ow))
    for ni in range(n):
        for oi in range(o):
            for i in range(oh):
                for j in range(ow):
                    acc = 0.0 if b is None else b[oi]
                    for ci in range(c):
                        for ki in range(kh):
                            for kj in range(kw):
                                r, q = i * sh - ph + ki, j * sw - pw + kj
                                if 0 <= r < h and 0 <= q < wd:
                                    acc += x[ni, ci, r, q] * w[oi, ci, ki, kj]
                    y[ni, oi, i, j] = acc
    return y


def conv2d_backward_loops(g, x, w, stride, padding):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    dx, dw = np.zeros(x.shape), np.zeros(w.shape)
    for ni in range(n):
        for oi in range(o):
            for i in range(g.shape[2]):
                for j in range(g.shape[3]):
                    for ci in range(c):
                        for ki in range(kh):
                            for kj in range(kw):
                                r, q = i * sh - ph + ki, j * sw - pw + kj
                                if 0 <= r < h and 0 <= q < wd:
                                    dx[ni, ci, r, q] += w[oi, ci, ki, kj] * g[ni, oi, i, j]
                                    dw[oi, ci, ki, kj] += x[ni, ci, r, q] * g[ni, oi, i, j]
    return dx, dw, g.sum(axis=(0, 2, 3))


def _window_positions(i, j, kernel, stride, padding, h, w):
    """Input positions of output (i, j)'s window, in tap order; None for a padded tap."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    out = []
    for ki in range(kh):
        for kj in range(kw):
            r, q = i * sh - ph + ki, j * sw - pw + kj
            out.append((r, q) if 0 <= r < h and 0 <= q < w else None)
    return out


def pool_loops(x, kernel, stride, padding, mode, g=None):
    """Forward (and, given g, backward) of max or average pooling, one window at a time."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y, dx = np.zeros((n, c, oh, ow)), np.zeros(x.shape)
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    pos = _window_positions(i, j, kernel, stride, padding, h, w)
                    valid = [p for p in pos if p is not None]
                    if mode == "max":
                        best = max(valid, key=lambda p: x[ni, ci, p[0], p[1]])
                        y[ni, ci, i, j] = x[ni, ci, best[0], best[1]]
                        if g is not None:
                            dx[ni, ci, best[0], best[1]] += g[ni, ci, i, j]
                    else:  # padded zeros count: divide by the full window
                        y[ni, ci, i, j] = sum(x[ni, ci, r, q] for r, q in valid) / (kh * kw)
                        if g is not None:
                            for r, q in valid:
                                dx[ni, ci, r, q] += g[ni, ci, i, j] / (kh * kw)
    return y, dx


def adaptive_avg_loops(x, out_size):
    n, c, h, w = x.shape
    oh, ow = out_size
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        r0, r1 = math.floor(i * h / oh), math.ceil((i + 1) * h / oh)
        for j in range(ow):
            c0, c1 = math.floor(j * w / ow), math.ceil((j + 1) * w / ow)
            for ni in range(n):
                for ci in range(c):
                    cell = [x[ni, ci, r, q] for r in range(r0, r1) for q in range(c0, c1)]
                    y[ni, ci, i, j] = sum(cell) / len(cell)
    return y


# ---------------------------------------------------------------- conv2d

@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    return dict(
        n=draw(st.integers(1, 2)), c=draw(st.integers(1, 3)), o=draw(st.integers(1, 3)),
        kernel=(kh, kw), stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), padding=(ph, pw),
        h=draw(st.integers(max(1, kh - 2 * ph), 6)), w=draw(st.integers(max(1, kw - 2 * pw), 6)),
        bias=draw(st.booleans()), seed=draw(seeds()))


@given(case=conv_cases())
def test_conv2d_gradcheck(case):
    rng = np.random.default_rng(case["seed"])
    x = T(rng.standard_normal((case["n"], case["c"], case["h"], case["w"])))
    w = T(rng.standard_normal((case["o"], case["c"]) + case["kernel"]))
    b = T(rng.standard_normal(case["o"])) if case["bias"] else None
    inputs = [x, w] + ([b] if b is not None else [])
    minires.gradcheck(lambda x, w, *b: F.conv2d(x, w, b[0] if b else None, case["stride"], case["padding"]),
                      inputs)


@given(case=conv_cases())
def test_conv2d_matches_nested_loops(case):
    rng = np.random.default_rng(case["seed"])
    x_np = rng.standard_normal((case["n"], case["c"], case["h"], case["w"]))
    w_np = rng.standard_normal((case["o"], case["c"]) + case["kernel"])
    b_np = rng.standard_normal(case["o"]) if case["bias"] else None
    x, w = T(x_np), T(w_np)
    b = T(b_np) if b_np is not None else None
    y = F.conv2d(x, w, b, stride=case["stride"], padding=case["padding"])
    ref = conv2d_loops(x_np, w_np, b_np, case["stride"], case["padding"])
    assert y.shape == ref.shape
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(ref.shape)
    y.backward(g)
    dx, dw, db = conv2d_backward_loops(g, x_np, w_np, case["stride"], case["padding"])
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), dw, rtol=1e-10, atol=1e-12)
    if b is not None:
        np.testing.assert_allclose(b.grad.numpy(), db, rtol=1e-10, atol=1e-12)


def test_conv2d_int_stride_and_padding_and_hand_value():
    x = T(np.arange(16.0).reshape(1, 1, 4, 4))
    w = T(np.ones((1, 1, 2, 2)))
    y = F.conv2d(x, w, stride=2, padding=0)
    np.testing.assert_array_equal(y.numpy()[0, 0], [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])
    y1 = F.conv2d(x, w, T([10.0]), stride=1, padding=1)
    assert y1.shape == (1, 1, 5, 5)
    assert y1.numpy()[0, 0, 0, 0] == 0.0 + 10.0  # only the top-left pixel is inside
    assert y1.numpy()[0, 0, 4, 4] == 15.0 + 10.0


# ---------------------------------------------------------------- batch norm

@st.composite
def bn_cases(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    two_d = draw(st.booleans())
    h, w = (1, 1) if two_d else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    assume(n * h * w >= 2)
    return dict(n=n, c=c, h=h, w=w, two_d=two_d, affine=draw(st.booleans()), seed=draw(seeds()))


def _bn_input(case, rng):
    shape = (case["n"], case["c"]) if case["two_d"] else (case["n"], case["c"], case["h"], case["w"])
    x = rng.standard_normal(shape) * 2 + rng.standard_normal(case["c"]).reshape((1, -1) + (1,) * (len(shape) - 2))
    axes = (0,) if case["two_d"] else (0, 2, 3)
    assume(x.var(axis=axes).min() > 0.05)  # a near-constant channel makes finite differences meaningless
    return x


@given(case=bn_cases())
def test_batch_norm_training_gradcheck(case):
    rng = np.random.default_rng(case["seed"])
    x = T(_bn_input(case, rng))
    rm, rv = Tensor(np.zeros(case["c"])), Tensor(np.ones(case["c"]))
    params = [T(rng.uniform(0.5, 1.5, case["c"])), T(rng.standard_normal(case["c"]))] if case["affine"] else []

    def fn(x, *p):
        return F.batch_norm(x, rm, rv, *p, training=True)

    minires.gradcheck(fn, [x] + params)


@given(case=bn_cases())
def test_batch_norm_eval_gradcheck(case):
    rng = np.random.default_rng(case["seed"])
    x = T(_bn_input(case, rng))
    rm, rv = Tensor(rng.standard_normal(case["c"])), Tensor(rng.uniform(0.5, 2.0, case["c"]))
    rm0, rv0 = rm.numpy().copy(), rv.numpy().copy()
    params = [T(rng.uniform(0.5, 1.5, case["c"])), T(rng.standard_normal(case["c"]))] if case["affine"] else []

    def fn(x, *p):
        return F.batch_norm(x, rm, rv, *p, training=False)

    minires.gradcheck(fn, [x] + params)
    np.testing.assert_array_equal(rm.numpy(), rm0)  # eval never touches the running statistics
    np.testing.assert_array_equal(rv.numpy(), rv0)


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (5, 3)])
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_batch_norm_training_forward_and_running_stats_in_place(shape, momentum, rng):
    x_np = rng.standard_normal(shape) * 3 + 1
    axes = (0, 2, 3) if len(shape) == 4 else (0,)
    bshape = (1, 3) + (1,) * (len(shape) - 2)
    weight, bias = rng.standard_normal(3), rng.standard_normal(3)
    rm0, rv0 = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    rm, rv = Tensor(rm0.copy()), Tensor(rv0.copy())
    rm_array, rv_array = rm.data, rv.data
    kwargs = dict(training=True) if momentum == 0.1 else dict(training=True, momentum=momentum)
    y = F.batch_norm(T(x_np), rm, rv, T(weight), T(bias), **kwargs)
    mean, var = x_np.mean(axis=axes), x_np.var(axis=axes)
    expected = (x_np - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + 1e-5) * weight.reshape(bshape) \
        + bias.reshape(bshape)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert rm.data is rm_array and rv.data is rv_array  # updated in place
    np.testing.assert_allclose(rm_array, (1 - momentum) * rm0 + momentum * mean, rtol=1e-12)
    np.testing.assert_allclose(rv_array, (1 - momentum) * rv0 + momentum * x_np.var(axis=axes, ddof=1),
                               rtol=1e-12)


def test_batch_norm_float32_running_stats_stay_float32(rng):
    x = Tensor(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), requires_grad=True)
    rm, rv = minires.zeros(2), minires.ones(2)
    y = F.batch_norm(x, rm, rv, training=True)
    y.backward(np.ones(y.shape, np.float32))
    assert y.dtype == x.grad.dtype == rm.dtype == rv.dtype == np.float32
    np.testing.assert_allclose(rm.numpy(), 0.1 * x.numpy().astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-5)


def test_batch_norm_eval_forward_uses_running_stats(rng):
    x_np = rng.standard_normal((2, 3, 2, 2))
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    weight, bias = rng.standard_normal(3), rng.standard_normal(3)
    y = F.batch_norm(T(x_np), Tensor(rm.copy()), Tensor(rv.copy()), T(weight), T(bias), training=False, eps=1e-3)
    b = (1, 3, 1, 1)
    expected = (x_np - rm.reshape(b)) / np.sqrt(rv.reshape(b) + 1e-3) * weight.reshape(b) + bias.reshape(b)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12)
    # eval backward is a per-channel scale
    x = T(x_np)
    g = rng.standard_normal(x_np.shape)
    F.batch_norm(x, Tensor(rm.copy()), Tensor(rv.copy()), T(weight), T(bias), training=False, eps=1e-3).backward(g)
    np.testing.assert_allclose(x.grad.numpy(), g * (weight / np.sqrt(rv + 1e-3)).reshape(b), rtol=1e-12)


def test_batch_norm_training_without_running_stats(rng):
    x = T(rng.standard_normal((3, 2, 2, 2)))
    minires.gradcheck(lambda x: F.batch_norm(x, None, None, training=True), [x])


# ---------------------------------------------------------------- the random projection matters

class BatchNormWrongBackward(Function):
    """Training-mode batch norm (no affine) whose backward drops the variance term."""

    def forward(self, x):
        self.mean = x.mean(axis=(0, 2, 3), keepdims=True)
        self.invstd = 1 / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
        return (x - self.mean) * self.invstd

    def backward(self, grad):
        # right: invstd * (g - mean(g) - xhat * mean(g * xhat)); the last term is missing
        return self.invstd * (grad - grad.mean(axis=(0, 2, 3), keepdims=True))


def test_wrong_batch_norm_backward_passes_plain_sum_but_fails_gradcheck(rng):
    x_np = rng.standard_normal((3, 2, 2, 2))
    # plain sum as the objective: its true gradient is identically zero, and so is the wrong one
    x = T(x_np)
    BatchNormWrongBackward.apply(x).sum().backward()
    numeric = np.zeros_like(x_np)
    for k in range(x_np.size):
        d = np.zeros(x_np.size)
        d[k] = 1e-6
        d = d.reshape(x_np.shape)
        plus = BatchNormWrongBackward().forward(x_np + d).sum()
        minus = BatchNormWrongBackward().forward(x_np - d).sum()
        numeric.reshape(-1)[k] = (plus - minus) / 2e-6
    np.testing.assert_allclose(x.grad.numpy(), numeric, atol=1e-6)  # the plain-sum check is fooled
    minires.gradcheck(lambda x: BatchNormWrongBackward.apply(x).sum(), [T(x_np)])  # so is gradcheck of a sum
    # the random projection exposes it
    with pytest.raises(GradcheckError):
        minires.gradcheck(lambda x: BatchNormWrongBackward.apply(x), [T(x_np)])
    # while the real op passes the same check
    minires.gradcheck(lambda x: F.batch_norm(x, None, None, training=True), [T(x_np)])


# ---------------------------------------------------------------- gradcheck itself

class SquareWrongAtOneElement(Function):
    """y = x^2 whose backward is off by 1 at element (1, 2) only."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, grad):
        dx = 2 * self.x * grad
        dx[1, 2] += 1.0
        return dx


def test_gradcheck_reports_the_worst_element_readably(rng):
    x = T(rng.standard_normal((2, 4)))
    with pytest.raises(GradcheckError) as info:
        minires.gradcheck(SquareWrongAtOneElement.apply, [x])
    assert isinstance(info.value, AssertionError)
    msg = str(info.value)
    assert "input 0" in msg and "(2, 4)" in msg and "MISMATCH" in msg
    assert "worst element (1, 2)" in msg
    assert "analytic" in msg and "numeric" in msg
    report = minires.gradcheck(SquareWrongAtOneElement.apply, [T(x.numpy())], raise_exception=False)
    assert not report.ok
    entry = report.entries[0]
    assert entry["where"] == (1, 2)
    assert entry["analytic_value"] - entry["numeric_value"] == pytest.approx(1.0, abs=1e-6)
    # the values in the message are the ones at the worst element
    assert f"{entry['analytic_value']:.8g}" in msg and f"{entry['numeric_value']:.8g}" in msg


def test_gradcheck_passes_a_correct_op_and_checks_every_input(rng):
    a, b = T(rng.standard_normal(3)), T(rng.standard_normal(3))
    report = minires.gradcheck(lambda a, b: a * b.exp(), [a, b])
    assert report.ok and [e["input"] for e in report.entries] == [0, 1]
    np.testing.assert_allclose(report.entries[1]["numeric"], a.numpy() * np.exp(b.numpy())
                               * np.random.default_rng(0).standard_normal(3), rtol=1e-6)
    # a wrong gradient for the second input only is attributed to it
    report = minires.gradcheck(lambda a, b: ScaleBothWrongSecond.apply(a, b), [a, b], raise_exception=False)
    assert [e["ok"] for e in report.entries] == [True, False]


class ScaleBothWrongSecond(Function):
    def forward(self, a, b):
        return 2 * a + 3 * b

    def backward(self, grad):
        return 2 * grad, 2 * grad


def test_gradcheck_with_tuple_outputs_and_constant_inputs(rng):
    a, c = T(rng.standard_normal(3)), T(rng.standard_normal(3), requires_grad=False)
    minires.gradcheck(lambda a, c: (a * c, a.exp()), [a, c])


def test_gradcheck_refuses_float32(rng):
    with pytest.raises(TypeError, match="float64"):
        minires.gradcheck(lambda x: x * 2, [Tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True)])


def test_gradcheck_with_non_contiguous_input(rng):
    data = rng.standard_normal((4, 3)).T  # a transposed view: not C-contiguous
    minires.gradcheck(lambda x: x * x, [Tensor(data, requires_grad=True)])


# ---------------------------------------------------------------- relu

@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3)), seed=seeds())
def test_relu_gradcheck(shape, seed):
    rng = np.random.default_rng(seed)
    x_np = rng.standard_normal(shape)
    x_np = np.sign(x_np) * (np.abs(x_np) + 0.01)  # away from the kink
    y = F.relu(T(x_np))
    np.testing.assert_array_equal(y.numpy(), np.where(x_np > 0, x_np, 0.0))
    minires.gradcheck(F.relu, [T(x_np)])


def test_relu_gradient_by_hand():
    x = T([-2.0, -0.0, 0.0, 1e-9, 3.0])
    F.relu(x).backward(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 0, 4, 5])


# ---------------------------------------------------------------- pooling

@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    return dict(n=draw(st.integers(1, 2)), c=draw(st.integers(1, 2)), kernel=(kh, kw),
                stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), padding=(ph, pw),
                h=draw(st.integers(max(1, kh - 2 * ph), 6)), w=draw(st.integers(max(1, kw - 2 * pw), 6)),
                seed=draw(seeds()))


def _distinct(shape, rng):
    """Distinct values (a random permutation), spaced widely enough for finite differences."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) / 10.0 - 1.0


@given(case=pool_cases())
def test_max_pool2d_gradcheck_and_loops(case):
    rng = np.random.default_rng(case["seed"])
    x_np = _distinct((case["n"], case["c"], case["h"], case["w"]), rng)
    x = T(x_np)
    y = F.max_pool2d(x, case["kernel"], case["stride"], case["padding"])
    g = rng.standard_normal(y.shape)
    ref, dref = pool_loops(x_np, case["kernel"], case["stride"], case["padding"], "max", g)
    np.testing.assert_array_equal(y.numpy(), ref)
    y.backward(g)
    np.testing.assert_allclose(x.grad.numpy(), dref, rtol=1e-12, atol=1e-15)
    minires.gradcheck(lambda x: F.max_pool2d(x, case["kernel"], case["stride"], case["padding"]), [T(x_np)])


@given(case=pool_cases())
def test_avg_pool2d_gradcheck_and_loops(case):
    rng = np.random.default_rng(case["seed"])
    x_np = rng.standard_normal((case["n"], case["c"], case["h"], case["w"]))
    x = T(x_np)
    y = F.avg_pool2d(x, case["kernel"], case["stride"], case["padding"])
    g = rng.standard_normal(y.shape)
    ref, dref = pool_loops(x_np, case["kernel"], case["stride"], case["padding"], "avg", g)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12, atol=1e-15)
    y.backward(g)
    np.testing.assert_allclose(x.grad.numpy(), dref, rtol=1e-12, atol=1e-15)
    minires.gradcheck(lambda x: F.avg_pool2d(x, case["kernel"], case["stride"], case["padding"]), [T(x_np)])


def test_pooling_defaults_and_hand_values():
    x = T(np.array([[1.0, 2.0, 5.0, 0.0], [3.0, 4.0, 1.0, 1.0]]).reshape(1, 1, 2, 4))
    np.testing.assert_array_equal(F.max_pool2d(x, 2).numpy().ravel(), [4.0, 5.0])  # stride = kernel
    np.testing.assert_array_equal(F.avg_pool2d(x, 2).numpy().ravel(), [2.5, 1.75])
    # padding 1 with a 2x2 window at stride 2: the corner window holds x[0, 0] and three padded zeros
    np.testing.assert_array_equal(F.avg_pool2d(x, 2, 2, 1).numpy()[0, 0, 0, :], [0.25, 1.75, 0.0])
    # max pooling pads with -inf, so negative inputs survive at the border
    neg = T(-np.arange(1.0, 5.0).reshape(1, 1, 2, 2))
    np.testing.assert_array_equal(F.max_pool2d(neg, 2, 1, 1).numpy()[0, 0], [[-1, -1, -2], [-1, -1, -2], [-3, -3, -4]])


def test_max_pool2d_ties_go_to_the_first_maximum_like_pytorch():
    x = T(np.array([[3.0, 1.0, 2.0, 2.0], [3.0, 3.0, 2.0, 2.0]]).reshape(1, 1, 2, 4))
    F.max_pool2d(x, 2).backward(np.array([10.0, 20.0]).reshape(1, 1, 1, 2))
    np.testing.assert_array_equal(x.grad.numpy()[0, 0], [[10, 0, 20, 0], [0, 0, 0, 0]])


@given(h=st.integers(1, 6), w=st.integers(1, 6), oh=st.integers(1, 4), ow=st.integers(1, 4), seed=seeds())
def test_adaptive_avg_pool2d_gradcheck_and_loops(h, w, oh, ow, seed):
    rng = np.random.default_rng(seed)
    x_np = rng.standard_normal((2, 2, h, w))
    y = F.adaptive_avg_pool2d(T(x_np), (oh, ow))
    np.testing.assert_allclose(y.numpy(), adaptive_avg_loops(x_np, (oh, ow)), rtol=1e-12, atol=1e-15)
    minires.gradcheck(lambda x: F.adaptive_avg_pool2d(x, (oh, ow)), [T(x_np)])


def test_adaptive_avg_pool2d_one_is_global_average(rng):
    x_np = rng.standard_normal((2, 3, 5, 4))
    x = T(x_np)
    y = F.adaptive_avg_pool2d(x, 1)
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(y.numpy()[..., 0, 0], x_np.mean(axis=(2, 3)), rtol=1e-12)
    g = rng.standard_normal((2, 3, 1, 1))
    y.backward(g)
    np.testing.assert_allclose(x.grad.numpy(), np.broadcast_to(g / 20, x_np.shape), rtol=1e-12)
    minires.gradcheck(lambda x: F.adaptive_avg_pool2d(x, 1), [T(x_np)])


# ---------------------------------------------------------------- linear, flatten, concat

@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), fin=st.integers(1, 4), fout=st.integers(1, 4),
       bias=st.booleans(), seed=seeds())
def test_linear_gradcheck_and_value(lead, fin, fout, bias, seed):
    rng = np.random.default_rng(seed)
    x_np, w_np = rng.standard_normal(tuple(lead) + (fin,)), rng.standard_normal((fout, fin))
    b_np = rng.standard_normal(fout) if bias else None
    y = F.linear(T(x_np), T(w_np), T(b_np) if bias else None)
    expected = np.einsum("...i,oi->...o", x_np, w_np) + (b_np if bias else 0)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-14)
    inputs = [T(x_np), T(w_np)] + ([T(b_np)] if bias else [])
    minires.gradcheck(lambda x, w, *b: F.linear(x, w, b[0] if b else None), inputs)


def test_linear_gradient_by_hand(rng):
    x_np, w_np, b_np = rng.standard_normal((4, 3)), rng.standard_normal((2, 3)), rng.standard_normal(2)
    G = rng.standard_normal((4, 2))
    x, w, b = T(x_np), T(w_np), T(b_np)
    F.linear(x, w, b).backward(G)
    np.testing.assert_allclose(x.grad.numpy(), G @ w_np, rtol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), G.T @ x_np, rtol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), G.sum(axis=0), rtol=1e-12)
    # a 3-D input: the batch axes are folded together for the weight gradient
    x3 = T(rng.standard_normal((2, 4, 3)))
    w3 = T(w_np)
    G3 = rng.standard_normal((2, 4, 2))
    F.linear(x3, w3).backward(G3)
    np.testing.assert_allclose(w3.grad.numpy(), np.einsum("bto,bti->oi", G3, x3.numpy()), rtol=1e-12)


def test_batch_norm_training_gradient_by_hand(rng):
    """dx = gamma / sqrt(var + eps) * (g - mean(g) - xhat * mean(g * xhat)), all means per channel."""
    x_np = rng.standard_normal((3, 2, 2, 2)) * 2 + 1
    gamma, beta = rng.uniform(0.5, 1.5, 2), rng.standard_normal(2)
    G = rng.standard_normal(x_np.shape)
    x, w, b = T(x_np), T(gamma), T(beta)
    F.batch_norm(x, None, None, w, b, training=True).backward(G)
    ax, sh = (0, 2, 3), (1, 2, 1, 1)
    mean, var = x_np.mean(axis=ax).reshape(sh), x_np.var(axis=ax).reshape(sh)
    xhat = (x_np - mean) / np.sqrt(var + 1e-5)
    dx = gamma.reshape(sh) / np.sqrt(var + 1e-5) * (G - G.mean(axis=ax, keepdims=True)
                                                   - xhat * (G * xhat).mean(axis=ax, keepdims=True))
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(w.grad.numpy(), (G * xhat).sum(axis=ax), rtol=1e-10)
    np.testing.assert_allclose(b.grad.numpy(), G.sum(axis=ax), rtol=1e-12)


@pytest.mark.parametrize("start_dim,shape", [(1, (2, 6)), (0, (12,)), (2, (2, 3, 2))])
def test_flatten(start_dim, shape, rng):
    x_np = rng.standard_normal((2, 3, 1, 2))
    y = F.flatten(T(x_np), start_dim)
    assert y.shape == shape
    np.testing.assert_array_equal(y.numpy(), x_np.reshape(shape))
    minires.gradcheck(lambda x: F.flatten(x, start_dim), [T(x_np)])
    assert F.flatten(T(x_np)).shape == (2, 6)  # start_dim defaults to 1


@given(sizes=st.lists(st.integers(1, 3), min_size=1, max_size=3), dim=st.integers(-3, 2), seed=seeds())
def test_concat_gradcheck_and_value(sizes, dim, seed):
    rng = np.random.default_rng(seed)
    arrays = []
    for s in sizes:
        shape = [2, 2, 3]
        shape[dim] = s
        arrays.append(rng.standard_normal(shape))
    y = F.concat([T(a) for a in arrays], dim=dim)
    np.testing.assert_array_equal(y.numpy(), np.concatenate(arrays, axis=dim))
    minires.gradcheck(lambda *ts: F.concat(ts, dim=dim), [T(a) for a in arrays])


# ---------------------------------------------------------------- softmax and cross-entropy

@given(n=st.integers(1, 4), k=st.integers(1, 5), reduction=st.sampled_from(["mean", "sum", "none"]), seed=seeds())
def test_cross_entropy_gradcheck_and_value(n, k, reduction, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k)) * 3
    t = rng.integers(0, k, n)
    loss = F.cross_entropy(T(z), minires.tensor(t), reduction=reduction)
    per_row = np.array([math.log(sum(math.exp(v) for v in z[i])) - z[i, t[i]] for i in range(n)])
    expected = {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-10, atol=1e-12)
    minires.gradcheck(lambda z: F.cross_entropy(z, t, reduction=reduction), [T(z)])


def test_cross_entropy_gradient_by_hand(rng):
    z_np = rng.standard_normal((3, 4))
    t = np.array([0, 3, 3])
    z = T(z_np)
    F.cross_entropy(z, minires.tensor(t)).backward()
    p = np.exp(z_np) / np.exp(z_np).sum(axis=1, keepdims=True)
    p[np.arange(3), t] -= 1
    np.testing.assert_allclose(z.grad.numpy(), p / 3, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_with_huge_logits_is_finite_and_right(dtype):
    z = Tensor(np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4], [-1e4, -1e4, -1e4]], dtype=dtype), requires_grad=True)
    target = minires.tensor([0, 1, 2])
    loss = F.cross_entropy(z, target, reduction="none")
    assert np.all(np.isfinite(loss.numpy()))
    np.testing.assert_allclose(loss.numpy(), [0.0, math.log(2), math.log(3)], rtol=1e-6, atol=1e-6)
    F.cross_entropy(z, target).backward()
    assert np.all(np.isfinite(z.grad.numpy()))
    expected = np.array([[0, 0, 0], [0, -0.5, 0.5], [1 / 3, 1 / 3, -2 / 3]]) / 3
    np.testing.assert_allclose(z.grad.numpy(), expected, atol=1e-6)


@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3)), dim=st.integers(-3, 2), seed=seeds())
def test_log_softmax_gradcheck_and_value(shape, dim, seed):
    rng = np.random.default_rng(seed)
    x_np = rng.standard_normal(shape) * 2
    y = F.log_softmax(T(x_np), dim=dim)
    expected = x_np - np.log(np.exp(x_np).sum(axis=dim, keepdims=True))
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-10, atol=1e-12)
    minires.gradcheck(lambda x: F.log_softmax(x, dim=dim), [T(x_np)])


def test_log_softmax_and_softmax_of_huge_values():
    x = T([[1e4, 1e4 - 1.0, -1e4]])
    y = F.log_softmax(x)
    expected0 = -math.log(1 + math.exp(-1.0))
    np.testing.assert_allclose(y.numpy()[0, :2], [expected0, expected0 - 1.0], rtol=1e-10)
    assert np.isfinite(y.numpy()).all()
    s = F.softmax(x)
    np.testing.assert_allclose(s.numpy().sum(), 1.0, rtol=1e-12)


# ---------------------------------------------------------------- residual add and pad_channels

@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
       relu=st.booleans(), seed=seeds())
def test_residual_add_gradcheck_and_value(shape, relu, seed):
    rng = np.random.default_rng(seed)
    f_np, s_np = rng.standard_normal(shape), rng.standard_normal(shape)
    total = f_np + s_np
    f_np = f_np + np.where(np.abs(total) < 0.05, 0.1, 0.0)  # keep f + s away from the ReLU kink
    y = F.residual_add(T(f_np), T(s_np), relu=relu)
    expected = f_np + s_np
    np.testing.assert_allclose(y.numpy(), np.maximum(expected, 0) if relu else expected, rtol=1e-15)
    minires.gradcheck(lambda f, s: F.residual_add(f, s, relu=relu), [T(f_np), T(s_np)])


@given(c=st.integers(1, 3), extra=st.integers(0, 3), stride=st.integers(1, 3), h=st.integers(1, 5),
       w=st.integers(1, 5), seed=seeds())
def test_pad_channels_gradcheck_and_loops(c, extra, stride, h, w, seed):
    rng = np.random.default_rng(seed)
    x_np = rng.standard_normal((2, c, h, w))
    y = F.pad_channels(T(x_np), c + extra, stride=stride)
    oh, ow = len(range(0, h, stride)), len(range(0, w, stride))
    ref = np.zeros((2, c + extra, oh, ow))
    for ci in range(c):
        for i in range(oh):
            for j in range(ow):
                ref[:, ci, i, j] = x_np[:, ci, i * stride, j * stride]
    np.testing.assert_array_equal(y.numpy(), ref)
    minires.gradcheck(lambda x: F.pad_channels(x, c + extra, stride=stride), [T(x_np)])


# ---------------------------------------------------------------- float32 end to end

def test_every_functional_op_keeps_float32(rng):
    def f32(*shape):
        return Tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)

    x = f32(2, 3, 5, 5)
    cases = {
        "conv2d": lambda: F.conv2d(x, f32(4, 3, 3, 3), f32(4), stride=2, padding=1),
        "batch_norm": lambda: F.batch_norm(x, minires.zeros(3), minires.ones(3), f32(3), f32(3), training=True),
        "batch_norm_eval": lambda: F.batch_norm(x, minires.zeros(3), minires.ones(3), f32(3), f32(3)),
        "relu": lambda: F.relu(x),
        "max_pool2d": lambda: F.max_pool2d(x, 3, 2, 1),
        "avg_pool2d": lambda: F.avg_pool2d(x, 3, 2, 1),
        "adaptive_avg_pool2d": lambda: F.adaptive_avg_pool2d(x, (2, 3)),
        "linear": lambda: F.linear(F.flatten(x), f32(4, 75), f32(4)),
        "log_softmax": lambda: F.log_softmax(x, 1),
        "concat": lambda: F.concat([x, x * 2], 1),
        "residual_add": lambda: F.residual_add(x * 2, x),
        "pad_channels": lambda: F.pad_channels(x, 6, 2),
        "cross_entropy": lambda: F.cross_entropy(F.flatten(x)[:, :4], minires.tensor([0, 3])),
    }
    for name, fn in cases.items():
        x.grad = None
        y = fn()
        assert y.dtype == np.float32, name
        y.backward(np.ones(y.shape, np.float32))
        assert x.grad is not None and x.grad.dtype == np.float32, name
