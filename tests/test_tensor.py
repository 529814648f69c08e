"""Tensor: construction, dtypes, array facts, operators with broadcasting, reductions, shape ops, indexing.

Expected values come from NumPy on the raw arrays, from hand-derived
gradients, or from central finite differences (``minires.gradcheck`` in
float64, which projects the output onto a random tensor).
"""
import operator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minires
from minires import Tensor


def t64(a, requires_grad=True):
    return Tensor(np.array(a, dtype=np.float64), requires_grad=requires_grad)


def t32(a, requires_grad=True):
    return Tensor(np.array(a, dtype=np.float32), requires_grad=requires_grad)


# ---------------------------------------------------------------- construction and dtypes

@pytest.mark.parametrize("value", [1.5, [1.0, 2.5], [[0.5], [2.0]]])
def test_python_floats_become_float32(value):
    for t in (minires.tensor(value), Tensor(value)):
        assert t.dtype == np.float32
        np.testing.assert_array_equal(t.numpy(), np.array(value, dtype=np.float32))


@pytest.mark.parametrize("value", [3, [1, 2, 3], [[-4], [5]]])
def test_python_ints_become_int64_and_stay_integer(value):
    t = minires.tensor(value)
    assert t.dtype == np.int64
    np.testing.assert_array_equal(t.numpy(), np.array(value))
    assert (t + 1).dtype == np.int64
    assert (t * 2).dtype == np.int64
    assert (-t).dtype == np.int64
    assert t.sum().dtype == np.int64
    np.testing.assert_array_equal((t * 2 + 1).numpy(), np.array(value) * 2 + 1)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_])
def test_numpy_arrays_keep_their_dtype(dtype):
    a = np.arange(6).reshape(2, 3).astype(dtype)
    for t in (minires.tensor(a), Tensor(a)):
        assert t.dtype == dtype
        assert t.shape == (2, 3)
        np.testing.assert_array_equal(t.numpy(), a)


def test_tensor_copies_its_data_but_Tensor_wraps_it():
    a = np.zeros(3, dtype=np.float32)
    copied, wrapped = minires.tensor(a), Tensor(a)
    a[0] = 7.0
    assert copied.numpy()[0] == 0.0
    assert wrapped.numpy()[0] == 7.0


def test_explicit_dtype_argument():
    assert minires.tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert minires.tensor(1.5, dtype=np.float16).dtype == np.float16
    assert Tensor([1.0, 2.0], dtype=np.float64).dtype == np.float64


def test_object_data_is_refused():
    with pytest.raises(TypeError):
        minires.tensor(object())


@pytest.mark.parametrize("make,value", [(minires.zeros, 0.0), (minires.ones, 1.0)])
def test_zeros_ones(make, value):
    for t in (make(2, 3), make((2, 3)), make([2, 3])):
        assert t.shape == (2, 3) and t.dtype == np.float32 and not t.requires_grad
        assert np.all(t.numpy() == value)
    assert make(4, dtype=np.float64).dtype == np.float64
    assert make(2, requires_grad=True).requires_grad


def test_full_and_like():
    f = minires.full((2, 2), 3.5)
    assert f.dtype == np.float32 and np.all(f.numpy() == 3.5)
    base = Tensor(np.ones((3, 1), dtype=np.float64))
    z, o = minires.zeros_like(base), minires.ones_like(base)
    assert z.shape == o.shape == (3, 1)
    assert z.dtype == o.dtype == np.float64
    assert np.all(z.numpy() == 0) and np.all(o.numpy() == 1)


def test_randn_rand_shapes_dtypes_and_seeding():
    a = minires.randn(2000, rng=np.random.default_rng(0))
    b = minires.randn(2000, rng=np.random.default_rng(0))
    assert a.dtype == np.float32 and a.shape == (2000,)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert abs(a.numpy().mean()) < 0.1 and abs(a.numpy().std() - 1) < 0.1
    assert (a.numpy() < 0).any()  # normal, not uniform
    minires.manual_seed(5)
    c = minires.randn(3, 4, dtype=np.float64)
    minires.manual_seed(5)
    d = minires.randn((3, 4), dtype=np.float64)
    assert c.shape == (3, 4) and c.dtype == np.float64
    np.testing.assert_array_equal(c.numpy(), d.numpy())
    u = minires.rand(1000, rng=np.random.default_rng(1))
    assert u.dtype == np.float32 and u.numpy().min() >= 0 and u.numpy().max() < 1
    assert u.numpy().mean() == pytest.approx(0.5, abs=0.05)
    assert minires.randn(2, requires_grad=True).requires_grad


def test_arange():
    i = minires.arange(5)
    assert i.dtype == np.int64
    np.testing.assert_array_equal(i.numpy(), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(minires.arange(2, 9, 3).numpy(), [2, 5, 8])
    f = minires.arange(0.0, 1.0, 0.25)
    assert f.dtype == np.float32
    np.testing.assert_array_equal(f.numpy(), [0.0, 0.25, 0.5, 0.75])
    assert minires.arange(3, dtype=np.float64).dtype == np.float64


# ---------------------------------------------------------------- array facts

def test_array_facts():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    t = Tensor(a, requires_grad=True)
    assert isinstance(t.data, np.ndarray) and t.data is a
    assert t.shape == (2, 3, 4) and t.dtype == np.float32 and t.ndim == 3
    assert t.size == 24 and t.numel() == 24 and len(t) == 2
    assert isinstance(t.numpy(), np.ndarray)
    np.testing.assert_array_equal(t.numpy(), a)
    assert t.grad is None and t.grad_fn is None and t.requires_grad and t.is_leaf
    assert not Tensor(a).requires_grad
    assert t.tolist() == a.tolist()


def test_item():
    v = minires.tensor([[2.5]]).item()
    assert v == 2.5 and isinstance(v, float)
    n = minires.tensor(7).item()
    assert n == 7 and isinstance(n, int)
    assert float(minires.tensor(1.25)) == 1.25 and int(minires.tensor(3)) == 3
    with pytest.raises(ValueError, match=r"\(2,\)"):
        minires.tensor([1.0, 2.0]).item()


def test_detach_shares_values_but_cuts_the_graph():
    x = t64([1.0, 2.0, 3.0])
    d = (x * 2).detach()
    assert not d.requires_grad and d.grad_fn is None
    np.testing.assert_array_equal(d.numpy(), [2.0, 4.0, 6.0])
    # y = x * stop_gradient(x): dy/dx = stop_gradient(x), not 2x
    y = (x * x.detach()).sum()
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 2.0, 3.0])


def test_result_of_op_knows_its_function():
    x = t32([1.0, 2.0])
    y = x * 3
    assert y.requires_grad and y.grad_fn is not None and not y.is_leaf
    with pytest.raises(RuntimeError, match="detach"):
        y.requires_grad = False


def test_comparisons_give_boolean_tensors_outside_the_graph():
    x = t32([1.0, 2.0, 3.0])
    for op, expected in [(operator.lt, [True, False, False]), (operator.ge, [False, True, True]),
                         (operator.eq, [False, True, False]), (operator.ne, [True, False, True])]:
        r = op(x, 2.0)
        assert r.dtype == np.bool_ and not r.requires_grad
        np.testing.assert_array_equal(r.numpy(), expected)
    with pytest.raises(ValueError, match="ambiguous"):
        bool(x > 0)


# ---------------------------------------------------------------- operators: values and hand gradients

def test_operator_values_match_numpy(rng):
    a = rng.standard_normal((2, 3)).astype(np.float32)
    b = (rng.random(3) + 0.5).astype(np.float32)
    ta, tb = Tensor(a), Tensor(b)
    np.testing.assert_allclose((ta + tb).numpy(), a + b, rtol=1e-6)
    np.testing.assert_allclose((ta - tb).numpy(), a - b, rtol=1e-6)
    np.testing.assert_allclose((ta * tb).numpy(), a * b, rtol=1e-6)
    np.testing.assert_allclose((ta / tb).numpy(), a / b, rtol=1e-6)
    np.testing.assert_allclose((tb ** ta).numpy(), b ** a, rtol=1e-5)
    np.testing.assert_allclose((-ta).numpy(), -a)
    np.testing.assert_allclose((ta @ Tensor(a.T)).numpy(), a @ a.T, rtol=1e-5)


def test_reflected_operators_with_numbers_and_arrays():
    x = t64([1.0, 2.0, 4.0])
    np.testing.assert_allclose((3 + x).numpy(), [4, 5, 7])
    np.testing.assert_allclose((3 - x).numpy(), [2, 1, -1])
    np.testing.assert_allclose((3 * x).numpy(), [3, 6, 12])
    np.testing.assert_allclose((4 / x).numpy(), [4, 2, 1])
    np.testing.assert_allclose((2 ** x).numpy(), [2, 4, 16])
    np.testing.assert_allclose((x ** 2).numpy(), [1, 4, 16])
    arr = np.array([1.0, 1.0, 1.0])
    r = arr + x  # ndarray <op> Tensor defers to the Tensor
    assert isinstance(r, Tensor) and r.requires_grad
    np.testing.assert_allclose(r.numpy(), [2, 3, 5])
    m = np.eye(3) @ x
    assert isinstance(m, Tensor)
    np.testing.assert_allclose(m.numpy(), [1, 2, 4])
    # d/dx of 3 - x + 4 / x + 2 ** x + x ** 2 = -1 - 4/x^2 + 2^x ln 2 + 2x
    (3 - x + 4 / x + 2 ** x + x ** 2).sum().backward()
    xv = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(x.grad.numpy(), -1 - 4 / xv ** 2 + 2 ** xv * np.log(2) + 2 * xv, rtol=1e-12)


def test_broadcast_gradients_are_reduced_to_each_shape_by_hand():
    rng = np.random.default_rng(0)
    a_np, b_np = rng.standard_normal((2, 3)), rng.random((3,)) + 1.0
    c_np = rng.standard_normal((2, 1))
    g = rng.standard_normal((2, 3))
    for op, da, db in [
        (operator.add, lambda a, b: g, lambda a, b: g.sum(0)),
        (operator.sub, lambda a, b: g, lambda a, b: -g.sum(0)),
        (operator.mul, lambda a, b: g * b, lambda a, b: (g * a).sum(0)),
        (operator.truediv, lambda a, b: g / b, lambda a, b: (-g * a / b ** 2).sum(0)),
    ]:
        a, b = t64(a_np), t64(b_np)
        op(a, b).backward(g)
        assert a.grad.shape == (2, 3) and b.grad.shape == (3,)
        np.testing.assert_allclose(a.grad.numpy(), da(a_np, b_np), rtol=1e-12)
        np.testing.assert_allclose(b.grad.numpy(), db(a_np, b_np), rtol=1e-12)
    # (2, 1) against (3,): both stretched
    c, b = t64(c_np), t64(b_np)
    (c * b).backward(g)
    assert c.grad.shape == (2, 1) and b.grad.shape == (3,)
    np.testing.assert_allclose(c.grad.numpy(), (g * b_np).sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), (g * c_np).sum(0), rtol=1e-12)
    # a scalar tensor against a matrix
    s = t64(2.0)
    (s * t64(a_np, requires_grad=False)).backward(g)
    assert s.grad.shape == ()
    assert s.grad.item() == pytest.approx((g * a_np).sum())


def test_unary_minus_and_pow_gradients():
    x = t64([0.5, 1.5, 3.0])
    p = t64([2.0, 0.5, -1.0])
    (-(x ** p)).backward(np.ones(3))
    xv, pv = x.numpy(), p.numpy()
    np.testing.assert_allclose(x.grad.numpy(), -pv * xv ** (pv - 1), rtol=1e-12)
    np.testing.assert_allclose(p.grad.numpy(), -xv ** pv * np.log(xv), rtol=1e-12)


@st.composite
def broadcast_pair(draw):
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3))
    seed = draw(st.integers(0, 2 ** 16))
    return shapes.input_shapes, seed


@pytest.mark.parametrize("op", [operator.add, operator.sub, operator.mul, operator.truediv, operator.pow])
@given(case=broadcast_pair())
def test_broadcasting_binary_ops_pass_gradcheck(op, case):
    (sa, sb), seed = case
    rng = np.random.default_rng(seed)
    a = Tensor(rng.uniform(0.5, 2.0, sa), requires_grad=True)  # positive: ** and / stay smooth
    b = Tensor(rng.uniform(0.5, 2.0, sb) * rng.choice([-1, 1], sb), requires_grad=True)
    if op is operator.truediv or op is operator.pow:
        b = Tensor(np.abs(b.data) + 0.5, requires_grad=True)
    out = op(a, b)
    assert out.shape == np.broadcast_shapes(sa, sb)
    minires.gradcheck(op, [a, b])
    assert a.grad.shape == sa and b.grad.shape == sb


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 2)), ((4,), (4, 2)), ((3, 4), (4,)), ((4,), (4,)),
                                   ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)),
                                   ((4,), (2, 4, 3)), ((2, 3, 4), (4,))])
def test_matmul_values_and_gradcheck(sa, sb, rng):
    a_np, b_np = rng.standard_normal(sa), rng.standard_normal(sb)
    a, b = Tensor(a_np, requires_grad=True), Tensor(b_np, requires_grad=True)
    np.testing.assert_allclose((a @ b).numpy(), a_np @ b_np, rtol=1e-12)
    minires.gradcheck(operator.matmul, [a, b])
    assert a.grad.shape == sa and b.grad.shape == sb


def test_matmul_gradient_by_hand(rng):
    a_np, b_np, g = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal((3, 2))
    a, b = t64(a_np), t64(b_np)
    (a @ b).backward(g)
    np.testing.assert_allclose(a.grad.numpy(), g @ b_np.T, rtol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), a_np.T @ g, rtol=1e-12)


# ---------------------------------------------------------------- float32 stays float32

def _f32_cases():
    return {
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "div": lambda a, b: a / (b * b + 1),
        "pow": lambda a, b: (a * a + 1) ** b,
        "neg": lambda a, b: -a + b,
        "matmul": lambda a, b: a @ b.T,
        "scalar": lambda a, b: 2.5 * a - 1 / (b * b + 1) + a ** 2 + 0.5,
        "rpow": lambda a, b: 2.0 ** a + b,
        "sum": lambda a, b: (a + b).sum(axis=1, keepdims=True),
        "mean": lambda a, b: (a * b).mean(),
        "max": lambda a, b: (a + b).max(axis=0),
        "exp_log_sqrt": lambda a, b: (a * a + 1).sqrt().log() + b.exp(),
        "reshape": lambda a, b: (a + b).reshape(-1),
        "permute": lambda a, b: (a + b).permute(1, 0),
        "transpose": lambda a, b: a.T @ b,
        "getitem": lambda a, b: a[[0, 0, 1], 1:] * b[1, 1:],
    }


@pytest.mark.parametrize("name", list(_f32_cases()))
def test_float32_stays_float32_through_forward_and_backward(name, rng):
    fn = _f32_cases()[name]
    a = Tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    b = Tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    out = fn(a, b)
    assert out.dtype == np.float32, f"{name}: forward upcast to {out.dtype}"
    out.backward(np.ones(out.shape, dtype=np.float32))
    assert a.grad.dtype == np.float32, f"{name}: grad of a is {a.grad.dtype}"
    if b.grad is not None:
        assert b.grad.dtype == np.float32, f"{name}: grad of b is {b.grad.dtype}"


def test_integer_division_gives_float32_like_pytorch():
    r = minires.arange(4) / 2
    assert r.dtype == np.float32
    np.testing.assert_array_equal(r.numpy(), [0.0, 0.5, 1.0, 1.5])
    assert (1 / minires.tensor([2, 4])).dtype == np.float32


def test_integer_tensor_times_python_float_is_float32():
    assert (minires.arange(3) * 0.5).dtype == np.float32
    assert (0.5 + minires.arange(3)).dtype == np.float32


# ---------------------------------------------------------------- reductions

@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2), (2, 0, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reductions_match_numpy_and_pass_gradcheck(name, axis, keepdims):
    rng = np.random.default_rng(3)
    data = rng.permutation(24).reshape(2, 3, 4) / 7.0  # distinct values: max has no ties
    x = Tensor(data.copy(), requires_grad=True)
    out = getattr(x, name)(axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(out.numpy(), getattr(data, name)(axis=axis, keepdims=keepdims), rtol=1e-12)
    assert out.shape == getattr(data, name)(axis=axis, keepdims=keepdims).shape
    minires.gradcheck(lambda t: getattr(t, name)(axis=axis, keepdims=keepdims), [x])


def test_reduction_gradients_by_hand():
    x = t64([[1.0, 5.0, 2.0], [4.0, 3.0, 0.0]])
    x.sum(axis=1).backward(np.array([2.0, 3.0]))
    np.testing.assert_array_equal(x.grad.numpy(), [[2, 2, 2], [3, 3, 3]])
    x.grad = None
    x.mean(axis=0, keepdims=True).backward(np.array([[2.0, 4.0, 6.0]]))
    np.testing.assert_array_equal(x.grad.numpy(), [[1, 2, 3], [1, 2, 3]])
    x.grad = None
    x.max(axis=1).backward(np.array([1.0, 10.0]))
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 1, 0], [10, 0, 0]])
    x.grad = None
    x.max().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 1, 0], [0, 0, 0]])


def test_max_shares_the_gradient_between_ties():
    x = t64([1.0, 3.0, 3.0, 2.0])
    x.max().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0.5, 0.5, 0])


def test_mean_of_integers_is_refused_like_pytorch():
    with pytest.raises(minires.DTypeError, match=r"mean.*int64"):
        minires.arange(4).mean()
    assert minires.arange(4).sum().item() == 6


# ---------------------------------------------------------------- shape ops

def test_reshape_view_flatten(rng):
    data = rng.standard_normal((2, 3, 4))
    x = Tensor(data, requires_grad=True)
    for y in (x.reshape(6, 4), x.reshape((6, 4)), x.view(6, -1), x.reshape([-1, 4])):
        assert y.shape == (6, 4)
        np.testing.assert_array_equal(y.numpy(), data.reshape(6, 4))
    assert x.flatten().shape == (24,) and x.flatten(1).shape == (2, 12)
    g = rng.standard_normal((4, 6))
    x.reshape(4, 6).backward(g)
    np.testing.assert_array_equal(x.grad.numpy(), g.reshape(2, 3, 4))
    minires.gradcheck(lambda t: t.reshape(3, 8)[1:], [Tensor(data.copy(), requires_grad=True)])


def test_transpose_permute(rng):
    data = rng.standard_normal((2, 3, 4))
    x = Tensor(data, requires_grad=True)
    np.testing.assert_array_equal(x.permute(2, 0, 1).numpy(), data.transpose(2, 0, 1))
    np.testing.assert_array_equal(x.permute((1, 2, 0)).numpy(), data.transpose(1, 2, 0))
    np.testing.assert_array_equal(x.permute(-1, 0, 1).numpy(), data.transpose(2, 0, 1))
    np.testing.assert_array_equal(x.transpose(0, 2).numpy(), data.swapaxes(0, 2))
    np.testing.assert_array_equal(x.transpose().numpy(), data.T)
    np.testing.assert_array_equal(x.T.numpy(), data.T)
    g = rng.standard_normal((4, 2, 3))
    x.permute(2, 0, 1).backward(g)
    np.testing.assert_array_equal(x.grad.numpy(), g.transpose(1, 2, 0))
    for fn in (lambda t: t.permute(1, 2, 0), lambda t: t.transpose(1, 2), lambda t: t.T):
        minires.gradcheck(fn, [Tensor(data.copy(), requires_grad=True)])
    with pytest.raises(ValueError, match="permut"):
        x.permute(0, 0, 1)


# ---------------------------------------------------------------- indexing

@pytest.mark.parametrize("index", [
    1, -1, (0, 2), (slice(None), 1), (slice(0, 2), slice(1, None, 2)), (Ellipsis, 0),
    (None, 1), (slice(None, None, -1),), ([0, 2, 2],), ([1, 0, 1], [3, 3, 3]),
    (slice(None), [0, 0, 0, 3]),
])
def test_indexing_values_and_gradcheck(index):
    data = np.arange(12, dtype=np.float64).reshape(3, 4) / 3
    x = Tensor(data.copy(), requires_grad=True)
    np.testing.assert_array_equal(x[index].numpy(), data[index])
    minires.gradcheck(lambda t: t[index], [x])


def test_fancy_indexing_with_repeated_indices_accumulates():
    x = t64([10.0, 20.0, 30.0, 40.0])
    y = x[[0, 2, 0, 0, 3]]
    np.testing.assert_array_equal(y.numpy(), [10, 30, 10, 10, 40])
    y.backward(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    np.testing.assert_array_equal(x.grad.numpy(), [1 + 3 + 4, 0, 2, 5])
    m = t64(np.zeros((2, 3)))
    m[[1, 1, 0], [2, 2, 2]].backward(np.array([1.0, 1.0, 5.0]))
    np.testing.assert_array_equal(m.grad.numpy(), [[0, 0, 5], [0, 0, 2]])


def test_indexing_with_tensors_and_masks():
    x = t64([1.0, -2.0, 3.0, -4.0])
    idx = minires.tensor([3, 3, 1])
    x[idx].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 0, 2])
    x.grad = None
    mask = x > 0
    y = x[mask]
    np.testing.assert_array_equal(y.numpy(), [1.0, 3.0])
    y.backward(np.array([5.0, 7.0]))
    np.testing.assert_array_equal(x.grad.numpy(), [5, 0, 7, 0])


# ---------------------------------------------------------------- elementwise functions

@pytest.mark.parametrize("name,ref,dref", [
    ("exp", np.exp, np.exp),
    ("log", np.log, lambda v: 1 / v),
    ("sqrt", np.sqrt, lambda v: 0.5 / np.sqrt(v)),
])
def test_exp_log_sqrt(name, ref, dref, rng):
    data = rng.uniform(0.2, 3.0, (2, 3))
    x = Tensor(data.copy(), requires_grad=True)
    y = getattr(x, name)()
    np.testing.assert_allclose(y.numpy(), ref(data), rtol=1e-12)
    g = rng.standard_normal((2, 3))
    y.backward(g)
    np.testing.assert_allclose(x.grad.numpy(), g * dref(data), rtol=1e-12)
    minires.gradcheck(lambda t: getattr(t, name)(), [Tensor(data.copy(), requires_grad=True)])
    x32 = Tensor(data.astype(np.float32), requires_grad=True)
    y32 = getattr(x32, name)()
    y32.backward(np.ones((2, 3), np.float32))
    assert y32.dtype == np.float32 and x32.grad.dtype == np.float32


@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=3), seed=st.integers(0, 2 ** 16))
def test_composite_expression_gradcheck(shape, seed):
    rng = np.random.default_rng(seed)
    a = Tensor(rng.uniform(0.5, 2.0, shape), requires_grad=True)
    b = Tensor(rng.uniform(0.5, 2.0, shape[-1:]), requires_grad=True)

    def fn(a, b):
        return ((a * b + 1).log() - (a / b).sqrt() * (-a).exp()) ** 2 - a.mean(axis=-1, keepdims=True)

    minires.gradcheck(fn, [a, b])
