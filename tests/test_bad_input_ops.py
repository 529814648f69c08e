"""Bad input at every op, method, constructor and layer: the error PyTorch would give, naming the op.

Each test asserts the error's type (PyTorch's where it has one: IndexError
for a dim out of range; minires' ShapeError and DTypeError are a ValueError
and a TypeError) and that the message names the op and the culprit. Where
torch is installed it is asked too, so the two agree on what is an error.
"""
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minires
import minires.functional as F
import minires.nn as nn
from minires import DTypeError, ShapeError, Tensor
from assertions import raises


def f32(*shape, requires_grad=False):
    return Tensor(np.ones(shape, dtype=np.float32), requires_grad=requires_grad)


shapes = st.lists(st.integers(1, 3), min_size=0, max_size=4).map(tuple)


def out_of_range(ndim):
    """A dim outside [-ndim, ndim - 1] (a 0-d tensor takes -1 and 0, as in PyTorch)."""
    low, high = (-ndim, ndim - 1) if ndim else (-1, 0)
    return st.one_of(st.integers(high + 1, high + 8), st.integers(low - 8, low - 1))


# ---------------------------------------------------------------- dims out of range: IndexError, as in PyTorch

DIM_OPS = {  # name in the message -> call with a tensor x and a dim d
    "sum": lambda x, d: x.sum(axis=d),
    "mean": lambda x, d: x.mean(axis=d),
    "max": lambda x, d: x.max(axis=d),
    "argmax": lambda x, d: x.argmax(axis=d),
    "log_softmax": lambda x, d: F.log_softmax(x, dim=d),
    "softmax": lambda x, d: F.softmax(x, dim=d),
    "concat": lambda x, d: F.concat([x, x], dim=d),
    "flatten": lambda x, d: x.flatten(d),
    "transpose": lambda x, d: x.transpose(0 if x.ndim else -1, d),
}


@pytest.mark.parametrize("op", sorted(DIM_OPS))
@given(data=st.data())
def test_every_dim_out_of_range_is_an_index_error_naming_the_op_and_the_dim(op, data):
    shape = data.draw(shapes.filter(lambda s: op != "concat" or s), label="shape")
    d = data.draw(out_of_range(len(shape)), label="dim")
    msg = raises(IndexError, lambda: DIM_OPS[op](f32(*shape), d), op, f"but got {d})", str(shape))
    assert "dimension out of range" in msg


@pytest.mark.parametrize("op", sorted(DIM_OPS))
@given(data=st.data())
def test_every_dim_in_range_agrees_with_numpy(op, data):
    shape = data.draw(shapes.filter(lambda s: s), label="shape")
    d = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    x = Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    expected = {"sum": lambda a: a.sum(axis=d), "mean": lambda a: a.mean(axis=d), "max": lambda a: a.max(axis=d),
                "argmax": lambda a: a.argmax(axis=d), "concat": lambda a: np.concatenate([a, a], axis=d),
                "transpose": lambda a: np.swapaxes(a, 0, d)}.get(op)
    y = DIM_OPS[op](x, d)
    if expected is not None:
        np.testing.assert_allclose(y.numpy(), expected(x.numpy()), rtol=1e-6)


def test_dim_errors_are_shape_errors_too_so_a_layer_names_itself():
    with pytest.raises(ShapeError) as info:  # nn.Flatten on a 1-D tensor: PyTorch's IndexError, labelled
        nn.Sequential(nn.Flatten())(f32(5))
    assert isinstance(info.value, IndexError)
    assert str(info.value).startswith("Flatten(0): dimension out of range (expected to be in range of [-1, 0], "
                                      "but got 1)")


@pytest.mark.parametrize("call, op", [
    (lambda x: x.permute(5, 0), "permute"), (lambda x: x.permute(0, -3), "permute"),
    (lambda x: x.transpose(2, 0), "transpose"), (lambda x: F.flatten(x, 0, 4), "flatten"),
    (lambda x: x.sum(axis=(0, 7)), "sum"), (lambda x: F.concat([x, x], dim=-3), "concat"),
])
def test_more_dims_out_of_range(call, op):
    raises(IndexError, lambda: call(f32(2, 3)), op, "(2, 3)")


@pytest.mark.parametrize("call, op, words", [
    (lambda x: x.permute(0, 0), "permute", ["duplicate", "(0, 0)"]),
    (lambda x: x.permute(0, 1, 2), "permute", ["expected 2 dims", "(0, 1, 2)"]),
    (lambda x: x.sum(axis=(1, -1)), "sum", ["dim 1 appears multiple times"]),
    (lambda x: x.mean(axis=[0, 0]), "mean", ["dim 0 appears multiple times"]),
    (lambda x: x.flatten(1, 0), "flatten", ["start_dim cannot come after end_dim"]),
    (lambda x: F.concat([x, f32(2)]), "concat", ["(2, 3)", "(2,)"]),
    (lambda x: F.concat([f32(), f32()]), "concat", ["zero-dimensional tensor (at position 0)"]),
])
def test_repeated_dims_and_wrong_counts_are_shape_errors(call, op, words):
    msg = raises(ShapeError, lambda: call(f32(2, 3)), *words)
    assert msg.startswith(op)


@pytest.mark.parametrize("call, op", [
    (lambda x: x.sum(axis=1.0), "sum"), (lambda x: x.max(axis="0"), "max"),
    (lambda x: x.argmax(axis=0.5), "argmax"), (lambda x: F.log_softmax(x, dim=None), "log_softmax"),
    (lambda x: x.permute(0.0, 1), "permute"), (lambda x: x.transpose(0), "transpose"),
    (lambda x: F.concat(x), "concat"), (lambda x: x.reshape(2.0, 3), "reshape"),
    (lambda x: F.concat([x, "abc"]), "concat"),
])
def test_ill_typed_dims_are_type_errors(call, op):
    msg = raises(TypeError, lambda: call(f32(2, 3)))
    assert msg.startswith(op)


def test_zero_dim_tensors_take_dim_0_and_minus_1_like_pytorch():
    x = Tensor(np.array(2.0, dtype=np.float32), requires_grad=True)
    for d in (0, -1):
        assert x.sum(axis=d).item() == 2.0 and x.max(axis=d).item() == 2.0
        assert F.log_softmax(x, dim=d).item() == 0.0
    assert x.flatten().shape == (1,) and x.transpose(0, -1).shape == ()
    x.sum(axis=0).backward()
    assert x.grad.item() == 1.0


def test_reductions_over_an_empty_dim():
    raises(ShapeError, lambda: f32(0, 3).max(), "max", "(0, 3)")
    raises(ShapeError, lambda: f32(0, 3).argmax(axis=0), "argmax", "(0, 3)")
    assert f32(0, 3).max(axis=1).shape == (0,)  # reducing a non-empty dim of an empty tensor is fine
    assert f32(0, 3).sum().item() == 0.0


# ---------------------------------------------------------------- reshape and indexing

@given(shape=shapes, target=st.lists(st.integers(0, 5), min_size=1, max_size=4).map(tuple))
def test_reshape_to_a_wrong_number_of_elements_names_both_shapes(shape, target):
    x = f32(*shape)
    if int(np.prod(target)) == x.size:
        assert x.reshape(target).shape == target
        return
    raises(ShapeError, lambda: x.reshape(target), "reshape", f"shape {target}", f"{x.shape}")


@pytest.mark.parametrize("target, words", [
    ((-1, -1), ["only one dimension can be inferred"]), ((-2, 6), ["invalid shape dimension -2"]),
    ((5, -1), ["(5, -1)", "(3, 4)"]), ((0, -1), ["(0, -1)"]), ((13,), ["(13,)", "(3, 4)"]),
])
def test_reshape_bad_targets(target, words):
    raises(ShapeError, lambda: f32(3, 4).reshape(target), "reshape", *words)
    raises(ShapeError, lambda: f32(3, 4).view(*target), "reshape")


def test_flatten_of_an_empty_batch_keeps_its_shape():
    assert F.flatten(f32(0, 4, 1, 1)).shape == (0, 4)  # a reshape to (0, -1) would be ambiguous


@pytest.mark.parametrize("index, words", [
    (5, ["index 5 is out of bounds", "(3, 4)"]), (-4, ["index -4"]), ((0, 9), ["index 9"]),
    ((0, 0, 0), ["too many indices"]), (1.5, ["only integers"]), ("a", ["only integers"]),
    ([0, 3], ["index 3"]), (np.array([True, False]), ["boolean index"]),
])
def test_getitem_out_of_range_is_an_index_error_naming_the_tensor(index, words):
    raises(IndexError, lambda: f32(3, 4)[index], "getitem", "(3, 4)", *words)


def test_len_and_iteration_of_a_zero_dim_tensor():
    raises(TypeError, lambda: len(f32()), "0-d")
    raises(TypeError, lambda: list(f32()), "0-d")
    assert [t.shape for t in f32(2, 3)] == [(3,), (3,)]


# ---------------------------------------------------------------- constructors

@pytest.mark.parametrize("data", ["abc", ["a", "b"], [1, "a"], None, object(), {"a": 1}, 1 + 2j, [1j],
                                  np.array(["x"]), np.array([None]), np.array([1 + 1j])])
def test_tensor_from_what_is_not_numbers_is_a_type_error(data):
    msg = raises(TypeError, lambda: minires.tensor(data))
    assert msg.startswith("tensor")
    raises(TypeError, lambda: Tensor(data))


@pytest.mark.parametrize("data", [[[1, 2], [3]], [[1.0], [2.0, 3.0]], [np.ones(2), np.ones(3)]])
def test_tensor_from_a_ragged_list_is_a_value_error(data):
    raises(ValueError, lambda: minires.tensor(data), "tensor")


@pytest.mark.parametrize("dtype", [str, object, np.complex64, "U3", "datetime64[s]"])
@pytest.mark.parametrize("make", [
    lambda dtype: minires.tensor([1, 2], dtype=dtype), lambda dtype: minires.zeros(2, dtype=dtype),
    lambda dtype: minires.ones(2, dtype=dtype), lambda dtype: minires.full((2,), 1, dtype=dtype),
    lambda dtype: minires.arange(3, dtype=dtype), lambda dtype: minires.randn(2, dtype=dtype),
    lambda dtype: minires.rand(2, dtype=dtype), lambda dtype: f32(2).to(dtype=dtype),
], ids=["tensor", "zeros", "ones", "full", "arange", "randn", "rand", "to"])
def test_constructors_refuse_dtypes_a_tensor_cannot_hold(make, dtype):
    raises(DTypeError, lambda: make(dtype), "dtype", "not supported")


@pytest.mark.parametrize("make, op", [
    (lambda: minires.tensor([1], dtype="float42"), "tensor"), (lambda: minires.zeros(2, dtype="nope"), "zeros"),
    (lambda: minires.randn(2, dtype=np.int64), "randn"), (lambda: minires.rand(2, dtype=bool), "rand"),
])
def test_unknown_or_non_floating_dtypes(make, op):
    assert raises(TypeError, make).startswith(op)


def test_bool_and_integer_dtypes_are_fine():
    assert minires.zeros(2, dtype=bool).dtype == bool and minires.ones(2, dtype=np.int32).dtype == np.int32
    assert minires.tensor([True, False]).dtype == bool and minires.tensor([1, 2]).dtype == np.int64


@pytest.mark.parametrize("make", [minires.zeros, minires.ones, minires.randn, minires.rand,
                                  lambda *s: minires.full(s, 1.0)])
@pytest.mark.parametrize("size, kind, words", [
    ((-1,), ValueError, ["negative dimension -1"]), ((2, -3), ValueError, ["negative dimension -3"]),
    ((2.5,), TypeError, ["float 2.5"]), (("3",), TypeError, ["str '3'"]), ((None,), TypeError, ["NoneType"]),
    ((True,), TypeError, ["bool"]),
])
def test_constructor_sizes_must_be_non_negative_ints(make, size, kind, words):
    raises(kind, lambda: make(*size), *words)


@pytest.mark.parametrize("call, kind, words", [
    (lambda: minires.arange(0, 10, 0), ValueError, ["arange", "step must be nonzero"]),
    (lambda: minires.arange(10, 0, 1), ValueError, ["arange", "inconsistent with step sign"]),
    (lambda: minires.arange(0, 5, -1), ValueError, ["arange", "inconsistent with step sign"]),
    (lambda: minires.arange(float("nan")), ValueError, ["arange", "nan"]),
    (lambda: minires.arange(0, float("inf")), ValueError, ["arange", "inf"]),
    (lambda: minires.arange("5"), TypeError, ["arange", "str"]),
    (lambda: minires.arange(0, 5, 1j), TypeError, ["arange", "step"]),
    (lambda: minires.full((2,), "a"), TypeError, ["full", "fill_value"]),
    (lambda: minires.full((2,), 1j), TypeError, ["full", "fill_value"]),
    (lambda: minires.zeros_like(np.ones(2)), TypeError, ["zeros_like", "ndarray"]),
    (lambda: minires.ones_like([1.0]), TypeError, ["ones_like", "list"]),
])
def test_other_constructor_arguments(call, kind, words):
    raises(kind, call, *words)


def test_arange_agrees_with_numpy_where_it_is_fine():
    assert minires.arange(5, 5).shape == (0,)
    np.testing.assert_array_equal(minires.arange(5, 0, -2).numpy(), [5, 3, 1])
    assert minires.arange(0, 1, 0.25).dtype == np.float32


def test_data_must_stay_an_array_of_numbers():
    t = f32(2)
    raises(TypeError, lambda: setattr(t, "data", [1.0, 2.0]), "Tensor.data")
    raises(TypeError, lambda: setattr(t, "data", np.array(["a", "b"])), "Tensor.data")


# ---------------------------------------------------------------- binary ops: promotion and bad operands

BINARY = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
          "div": lambda a, b: a / b, "pow": lambda a, b: a ** b, "matmul": lambda a, b: a @ b}
FLOAT_PAIRS = [(np.float32, np.float64), (np.float64, np.float32), (np.float16, np.float32),
               (np.float64, np.float16)]


@pytest.mark.parametrize("op", sorted(BINARY))
@pytest.mark.parametrize("da, db", FLOAT_PAIRS)
def test_mixed_floats_promote_and_each_gradient_keeps_its_inputs_dtype(op, da, db):
    rng = np.random.default_rng(0)
    a = Tensor(rng.uniform(0.5, 1.5, (3, 3)).astype(da), requires_grad=True)
    b = Tensor(rng.uniform(0.5, 1.5, (3, 3)).astype(db), requires_grad=True)
    y = BINARY[op](a, b)
    assert y.dtype == np.promote_types(da, db)
    y.sum().backward()
    assert a.grad.dtype == da and b.grad.dtype == db
    wide = [Tensor(t.numpy().astype(np.float64), requires_grad=True) for t in (a, b)]
    BINARY[op](*wide).sum().backward()
    for t, w in zip((a, b), wide):  # the same gradient as in float64, rounded to the input's dtype
        np.testing.assert_allclose(t.grad.numpy(), w.grad.numpy().astype(t.dtype), rtol=2e-3)


@pytest.mark.parametrize("op", sorted(BINARY))
def test_promotion_agrees_with_pytorch(op, torch):
    dtypes = {np.float16: torch.float16, np.float32: torch.float32, np.float64: torch.float64,
              np.int64: torch.int64, np.int32: torch.int32, np.bool_: torch.bool}
    for da in dtypes:
        for db in dtypes:
            if op == "matmul" and (da != db or da in (np.bool_, np.float16)):
                continue  # PyTorch refuses mixed matmuls (minires promotes) and has no bool or CPU half one
            if op == "pow" and np.dtype(da).kind in "bi" and np.dtype(db).kind in "bi":
                continue  # integer powers: NumPy refuses negative exponents, PyTorch wraps
            if op == "sub" and np.bool_ in (da, db):
                continue  # PyTorch refuses to subtract bools
            a, b = np.ones((2, 2), dtype=da), np.ones((2, 2), dtype=db)
            mine = BINARY[op](Tensor(a), Tensor(b)).dtype
            theirs = BINARY[op](torch.tensor(a), torch.tensor(b)).dtype
            assert str(theirs) == f"torch.{np.dtype(mine).name}".replace("bool_", "bool"), (op, da, db)


@pytest.mark.parametrize("tensor_dtype, scalar, expected", [
    (np.float32, 2.5, np.float32), (np.float64, 2, np.float64), (np.float16, np.float64(2.0), np.float16),
    (np.int64, 2.5, np.float32), (np.int32, 2, np.int32), (np.bool_, 2, np.int64), (np.bool_, True, np.bool_),
])
def test_a_python_number_does_not_promote_a_tensor(tensor_dtype, scalar, expected, torch):
    assert (Tensor(np.ones(2, dtype=tensor_dtype)) * scalar).dtype == expected
    torch_dtype = (torch.tensor(np.ones(2, dtype=tensor_dtype)) * scalar).dtype
    assert str(torch_dtype).replace("torch.", "") == np.dtype(expected).name.replace("bool_", "bool")


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow"])
@pytest.mark.parametrize("other", ["a", None, object(), {"a": 1}])
def test_operands_that_are_not_numbers_are_pythons_type_error(op, other, torch):
    symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "** or pow()"}[op]
    with pytest.raises(TypeError) as mine:
        BINARY[op](f32(2), other)
    with pytest.raises(TypeError) as theirs:  # Python's words, the same for torch.Tensor
        BINARY[op](torch.ones(2), other)
    if not isinstance(other, str):  # ("a" * t is str's own complaint)
        assert str(mine.value) == str(theirs.value)
        assert str(mine.value).startswith(f"unsupported operand type(s) for {symbol}: 'Tensor'")


@pytest.mark.parametrize("op", ["add", "mul", "div", "pow"])
def test_complex_operands_are_refused(op):
    raises(DTypeError, lambda: BINARY[op](f32(2), 1j), op, "complex")
    raises(DTypeError, lambda: BINARY[op](f32(2), np.ones(2, dtype=np.complex64)), "complex64")


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow"])
@given(a=st.lists(st.integers(2, 4), min_size=1, max_size=3),
       b=st.lists(st.integers(2, 4), min_size=1, max_size=3))
def test_shapes_that_do_not_broadcast_name_the_op_and_both(op, a, b):
    try:
        np.broadcast_shapes(tuple(a), tuple(b))
    except ValueError:
        raises(ShapeError, lambda: BINARY[op](f32(*a), f32(*b)), op, str(tuple(a)), str(tuple(b)))
    else:
        assert BINARY[op](f32(*a), f32(*b)).shape == np.broadcast_shapes(tuple(a), tuple(b))


@pytest.mark.parametrize("op", ["eq", "ne", "lt", "le", "gt", "ge"])
def test_comparisons_that_do_not_broadcast_name_the_comparison(op):
    import operator
    raises(ShapeError, lambda: getattr(operator, op)(f32(3, 4), f32(3)), op, "(3, 4)", "(3,)")
    raises(ShapeError, lambda: getattr(operator, op)(f32(3, 4), np.ones(2)), op, "(2,)")
    assert getattr(operator, op)(f32(3, 4), f32(4)).dtype == bool


@pytest.mark.parametrize("a, b", [((2, 3), (2, 3)), ((3,), (4,)), ((), (3,)), ((2, 3, 4), (3, 4))])
def test_matmul_shapes_that_do_not_fit(a, b):
    raises(ShapeError, lambda: f32(*a) @ f32(*b), "matmul", str(a), str(b))


def test_integer_true_division_gives_float32_like_pytorch():
    y = minires.tensor([3, 4]) / minires.tensor([2, 2])
    assert y.dtype == np.float32 and y.tolist() == [1.5, 2.0]
    assert (1 / minires.tensor([2])).tolist() == [0.5]


# ---------------------------------------------------------------- layers and ops: sizes, strides, paddings

BAD_SIZES = [(0, ValueError, "positive, got 0"), (-2, ValueError, "positive, got -2"),
             (2.5, TypeError, "float 2.5"), ("3", TypeError, "str '3'"), (None, TypeError, "NoneType")]


@pytest.mark.parametrize("value, kind, words", BAD_SIZES)
@pytest.mark.parametrize("make, layer, name", [
    (lambda v: nn.Conv2d(v, 4, 3), "Conv2d", "in_channels"),
    (lambda v: nn.Conv2d(3, v, 3), "Conv2d", "out_channels"),
    (lambda v: nn.BatchNorm2d(v), "BatchNorm2d", "num_features"),
    (lambda v: nn.Linear(v, 2), "Linear", "in_features"), (lambda v: nn.Linear(2, v), "Linear", "out_features"),
    (lambda v: F.pad_channels(f32(1, 2, 4, 4), v), "pad_channels", "out_channels"),
    (lambda v: F.pad_channels(f32(1, 2, 4, 4), 4, stride=v), "pad_channels", "stride"),
], ids=["Conv2d.in", "Conv2d.out", "BatchNorm2d", "Linear.in", "Linear.out", "pad_channels",
        "pad_channels.stride"])
def test_channel_and_feature_counts_must_be_positive_ints(make, layer, name, value, kind, words):
    msg = raises(kind, lambda: make(value), name, words.split(",")[0] if kind is ValueError else words)
    assert msg.startswith(layer)


WINDOWS = [  # (name, value, error, words)
    ("kernel_size", 0, ValueError, "kernel_size must be positive, got 0"),
    ("kernel_size", (3, 0), ValueError, "kernel_size must be positive, got (3, 0)"),
    ("kernel_size", 2.5, TypeError, "kernel_size must be an int or a pair of ints, got 2.5"),
    ("kernel_size", (3, 3, 3), ValueError, "kernel_size must be an int or a pair"),
    ("stride", 0, ValueError, "stride must be positive, got 0"),
    ("stride", -1, ValueError, "stride must be positive, got -1"),
    ("stride", (1, 0), ValueError, "stride must be positive, got (1, 0)"),
    ("stride", "2", TypeError, "stride must be an int or a pair of ints, got '2'"),
    ("padding", -1, ValueError, "padding must be non-negative, got -1"),
    ("padding", 0.5, TypeError, "padding must be an int or a pair of ints, got 0.5"),
]


@pytest.mark.parametrize("name, value, kind, words", WINDOWS)
@pytest.mark.parametrize("layer", ["Conv2d", "MaxPool2d", "AvgPool2d"])
def test_window_arguments_of_layers(layer, name, value, kind, words):
    args = dict(kernel_size=2, stride=1, padding=0)
    args[name] = value
    make = (lambda: nn.Conv2d(1, 1, **args)) if layer == "Conv2d" else (lambda: getattr(nn, layer)(**args))
    assert raises(kind, make, words).startswith(layer)


@pytest.mark.parametrize("name, value, kind, words", WINDOWS)
@pytest.mark.parametrize("op", ["conv2d", "max_pool2d", "avg_pool2d"])
def test_window_arguments_of_functional_ops(op, name, value, kind, words):
    x = f32(1, 1, 6, 6)
    args = dict(kernel_size=2, stride=1, padding=0)
    args[name] = value
    if op == "conv2d":
        if name == "kernel_size":
            return  # conv2d's kernel size is the weight's shape
        call = lambda: F.conv2d(x, f32(1, 1, 2, 2), stride=args["stride"], padding=args["padding"])  # noqa: E731
    else:
        call = lambda: getattr(F, op)(x, **args)  # noqa: E731
    assert raises(kind, call, words).startswith(op)


def test_stride_zero_is_a_clear_error_not_a_zero_division():
    raises(ValueError, lambda: nn.Conv2d(3, 8, 3, stride=0), "Conv2d", "stride")
    raises(ValueError, lambda: F.conv2d(f32(1, 3, 8, 8), f32(8, 3, 3, 3), stride=0), "conv2d", "stride")
    raises(ValueError, lambda: nn.MaxPool2d(2, stride=0), "MaxPool2d", "stride")  # 0 is not "None"
    from minires.checks import windows
    raises(ValueError, lambda: windows("op", f32(1, 1, 4, 4), (2, 2), (0, 1), (0, 0)), "op", "stride")


def test_pool_padding_over_half_the_kernel():
    raises(ValueError, lambda: nn.MaxPool2d(2, padding=2), "MaxPool2d", "padding")
    raises(ValueError, lambda: F.avg_pool2d(f32(1, 1, 4, 4), 2, padding=2), "avg_pool2d", "padding")


@pytest.mark.parametrize("size, kind", [(0, ValueError), (-1, ValueError), ((2, 0), ValueError), (1.5, TypeError),
                                        ((None, 2), TypeError), ((1, 2, 3), ValueError)])
def test_adaptive_pool_output_size(size, kind):
    raises(kind, lambda: nn.AdaptiveAvgPool2d(size), "AdaptiveAvgPool2d", "output_size")
    raises(kind, lambda: F.adaptive_avg_pool2d(f32(1, 1, 4, 4), size), "adaptive_avg_pool2d", "output_size")


def test_input_with_no_pixels():
    raises(ShapeError, lambda: F.adaptive_avg_pool2d(f32(1, 2, 0, 4), 1), "adaptive_avg_pool2d", "(1, 2, 0, 4)")
    raises(ShapeError, lambda: F.conv2d(f32(1, 1, 0, 4), f32(1, 1, 1, 1)), "conv2d", "(1, 1, 0, 4)")
    raises(ShapeError, lambda: F.max_pool2d(f32(1, 1, 4, 0), 2), "max_pool2d", "(1, 1, 4, 0)")
    raises(ShapeError, lambda: F.batch_norm(f32(2, 0, 3, 3), None, None, training=True), "batch_norm")


# ---------------------------------------------------------------- an empty batch (N = 0)

@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    if request.param == "numba" and not minires.kernels.available("numba"):
        pytest.skip("the numba kernel backend is not available here (no numba, or a student copy without it)")
    minires.use_kernels(request.param)
    yield request.param
    minires.use_kernels("numpy")


EMPTY = {  # layer -> (input shape, call, output shape)
    "Conv2d": ((0, 3, 8, 8), lambda: nn.Conv2d(3, 4, 3, padding=1), (0, 4, 8, 8)),
    "BatchNorm2d.eval": ((0, 3, 4, 4), lambda: nn.BatchNorm2d(3).eval(), (0, 3, 4, 4)),
    "MaxPool2d": ((0, 3, 4, 4), lambda: nn.MaxPool2d(2), (0, 3, 2, 2)),
    "AvgPool2d": ((0, 3, 4, 4), lambda: nn.AvgPool2d(3, 1, 1), (0, 3, 4, 4)),
    "AdaptiveAvgPool2d": ((0, 3, 5, 5), lambda: nn.AdaptiveAvgPool2d(2), (0, 3, 2, 2)),
    "Linear": ((0, 5), lambda: nn.Linear(5, 2), (0, 2)),
    "Flatten": ((0, 3, 1, 1), lambda: nn.Flatten(), (0, 3)),
    "residual_add": ((0, 2, 4, 4), lambda: (lambda x: F.residual_add(x, x)), (0, 2, 4, 4)),
    "pad_channels": ((0, 2, 4, 4), lambda: (lambda x: F.pad_channels(x, 4, 2)), (0, 4, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(EMPTY))
def test_an_empty_batch_passes_forward_and_backward_without_warnings(name, backend):
    shape, make, out_shape = EMPTY[name]
    layer, x = make(), f32(*shape, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" or division by zero either
        y = layer(x)
        assert y.shape == out_shape
        y.backward(np.ones(out_shape, dtype=np.float32))
    assert x.grad.shape == shape
    for p in getattr(layer, "parameters", lambda: [])():
        assert p.grad is not None and not p.grad.numpy().any()  # zero: nothing flowed back


@pytest.mark.parametrize("name", sorted(EMPTY))
def test_empty_batch_shapes_agree_with_pytorch(name, torch):
    shape, make, out_shape = EMPTY[name]
    torch_layer = {"Conv2d": lambda: torch.nn.Conv2d(3, 4, 3, padding=1),
                   "MaxPool2d": lambda: torch.nn.MaxPool2d(2),
                   "BatchNorm2d.eval": lambda: torch.nn.BatchNorm2d(3).eval(),
                   "AvgPool2d": lambda: torch.nn.AvgPool2d(3, 1, 1), "Flatten": lambda: torch.nn.Flatten(),
                   "AdaptiveAvgPool2d": lambda: torch.nn.AdaptiveAvgPool2d(2),
                   "Linear": lambda: torch.nn.Linear(5, 2)}.get(name)
    if torch_layer is not None:
        assert tuple(torch_layer()(torch.zeros(shape)).shape) == out_shape


def test_batch_norm_training_on_an_empty_batch_is_refused_and_eval_is_fine():
    bn = nn.BatchNorm2d(3)
    msg = raises(ShapeError, lambda: bn(f32(0, 3, 4, 4)), "more than 1 value per channel", "(0, 3, 4, 4)")
    assert msg.startswith("BatchNorm2d")
    raises(ShapeError, lambda: F.batch_norm(f32(0, 3), None, None, training=True), "batch_norm", "(0, 3)")
    assert bn.eval()(f32(0, 3, 4, 4)).shape == (0, 3, 4, 4)


@pytest.mark.parametrize("reduction, expected", [("mean", np.nan), ("sum", 0.0), ("none", None)])
def test_cross_entropy_of_an_empty_batch_as_pytorch(reduction, expected, torch):
    z = f32(0, 4, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = F.cross_entropy(z, minires.tensor(np.zeros(0, dtype=np.int64)), reduction=reduction)
        if expected is None:
            assert loss.shape == (0,)
            loss.backward(np.ones(0, dtype=np.float32))
        else:
            np.testing.assert_equal(loss.item(), expected)
            loss.backward()
    assert z.grad.shape == (0, 4)
    theirs = torch.nn.functional.cross_entropy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                                               reduction=reduction)
    np.testing.assert_equal(loss.numpy(), theirs.numpy())


def test_an_empty_batch_through_a_resnet_in_eval(backend):
    model = minires.models.get("resnet20") if hasattr(minires.models, "get") else minires.models.resnet20()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.eval()(f32(0, 3, 32, 32))
    assert out.shape == (0, 10)


# ---------------------------------------------------------------- PyTorch agrees on what is an error

@pytest.mark.parametrize("case", [
    "sum(5)", "mean(-3)", "amax(2)", "argmax(2)", "log_softmax(3)", "cat(5)", "permute(5, 0)", "transpose(0, 5)",
    "flatten(1) of 1-D", "getitem(5)",
])
def test_pytorch_raises_the_same_index_error(case, torch):
    def run(lib, x):
        F_ = torch.nn.functional if lib is torch else F
        return {"sum(5)": lambda: x.sum(5), "mean(-3)": lambda: x.mean(-3),
                "amax(2)": lambda: (x.amax(2) if lib is torch else x.max(2)), "argmax(2)": lambda: x.argmax(2),
                "log_softmax(3)": lambda: F_.log_softmax(x, 3),
                "cat(5)": lambda: (torch.cat([x, x], 5) if lib is torch else F.concat([x, x], 5)),
                "permute(5, 0)": lambda: x.permute(5, 0), "transpose(0, 5)": lambda: x.transpose(0, 5),
                "flatten(1) of 1-D": lambda: x.reshape(-1).flatten(1), "getitem(5)": lambda: x[5]}[case]()
    with pytest.raises(IndexError):
        run(torch, torch.ones(2, 3))
    with pytest.raises(IndexError, match=re.escape("but got") if case != "getitem(5)" else "index 5"):
        run(minires, f32(2, 3))
