"""Bad input gets a clear error that names the op, what was expected and what came."""
import re

import numpy as np
import pytest

import minires
import minires.functional as F
from minires import DTypeError, ShapeError, Tensor


def f32(*shape, requires_grad=False):
    return Tensor(np.ones(shape, dtype=np.float32), requires_grad=requires_grad)


def i64(*shape):
    return Tensor(np.ones(shape, dtype=np.int64))


def words(message):
    return set(re.findall(r"\w+", message))


# ---------------------------------------------------------------- conv2d

def test_conv2d_channel_mismatch_names_both_counts_and_the_input_shape():
    x, w = f32(2, 7, 6, 6), f32(4, 5, 3, 3)
    with pytest.raises(ShapeError) as info:
        F.conv2d(x, w)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert msg.startswith("conv2d")
    assert {"5", "7"} <= words(msg) and "channel" in msg
    assert "(2, 7, 6, 6)" in msg
    assert re.search(r"expected 5 input channels, got 7", msg)


def test_conv2d_other_shape_errors():
    with pytest.raises(ShapeError, match=r"conv2d.*4-D.*\(7, 6, 6\)"):
        F.conv2d(f32(7, 6, 6), f32(4, 7, 3, 3))
    with pytest.raises(ShapeError, match=r"conv2d.*\(2, 2, 2, 2\)"):  # a 3x3 window on a 2x2 image
        F.conv2d(f32(2, 2, 2, 2), f32(1, 2, 3, 3))
    with pytest.raises(ShapeError, match=r"conv2d.*\(3,\).*4"):
        F.conv2d(f32(1, 2, 4, 4), f32(4, 2, 3, 3), bias=f32(3))


def test_conv2d_integer_input_is_refused():
    with pytest.raises(DTypeError, match=r"conv2d.*int64"):
        F.conv2d(i64(1, 2, 4, 4), f32(1, 2, 3, 3))
    with pytest.raises(DTypeError, match=r"conv2d.*int64"):
        F.conv2d(f32(1, 2, 4, 4), i64(1, 2, 3, 3))
    with pytest.raises(TypeError):  # DTypeError is a TypeError
        F.conv2d(i64(1, 2, 4, 4), f32(1, 2, 3, 3))


def test_conv2d_mixed_float_dtypes_are_refused():
    with pytest.raises(DTypeError, match=r"conv2d.*float32.*float64|conv2d.*float64.*float32"):
        F.conv2d(f32(1, 2, 4, 4), Tensor(np.ones((1, 2, 3, 3))))


# ---------------------------------------------------------------- residual_add

def test_residual_add_shape_mismatch_names_both_shapes():
    f, s = f32(2, 8, 2, 2), f32(2, 4, 4, 4)
    with pytest.raises(ShapeError) as info:
        F.residual_add(f, s)
    msg = str(info.value)
    assert msg.startswith("residual_add")
    assert "(2, 8, 2, 2)" in msg and "(2, 4, 4, 4)" in msg


def test_residual_add_integer_input_is_refused():
    with pytest.raises(DTypeError, match="residual_add"):
        F.residual_add(i64(2, 2), f32(2, 2))


# ---------------------------------------------------------------- backward

def test_non_scalar_backward_without_grad():
    y = f32(3, 2, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match=r"backward.*single-element.*\(3, 2\)"):
        y.backward()


# ---------------------------------------------------------------- integers where floats are needed

@pytest.mark.parametrize("name", ["exp", "log", "sqrt"])
def test_elementwise_math_on_integers_is_refused(name):
    with pytest.raises(DTypeError, match=rf"{name}.*int64"):
        getattr(minires.tensor([1, 2]), name)()


@pytest.mark.parametrize("call,op", [
    (lambda: F.relu(i64(2, 2)), "relu"),
    (lambda: F.batch_norm(i64(2, 2), None, None, training=True), "batch_norm"),
    (lambda: F.max_pool2d(i64(1, 1, 2, 2), 2), "max_pool2d"),
    (lambda: F.avg_pool2d(i64(1, 1, 2, 2), 2), "avg_pool2d"),
    (lambda: F.adaptive_avg_pool2d(i64(1, 1, 2, 2), 1), "adaptive_avg_pool2d"),
    (lambda: F.linear(i64(2, 3), f32(4, 3)), "linear"),
    (lambda: F.log_softmax(i64(2, 3)), "log_softmax"),
    (lambda: F.cross_entropy(i64(2, 3), minires.tensor([0, 1])), "cross_entropy"),
    (lambda: F.pad_channels(i64(1, 1, 2, 2), 2), "pad_channels"),
    (lambda: F.concat([f32(1, 2), i64(1, 2)]), "concat"),
])
def test_functional_ops_refuse_integers(call, op):
    with pytest.raises(DTypeError) as info:
        call()
    assert str(info.value).startswith(op) and "int64" in str(info.value)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_requires_grad_on_non_float_tensors(dtype):
    with pytest.raises(DTypeError, match=np.dtype(dtype).name):
        Tensor(np.zeros(2, dtype=dtype), requires_grad=True)


# ---------------------------------------------------------------- cross_entropy labels

@pytest.mark.parametrize("labels", [[0, 4], [-1, 0], [5, 2]])
def test_cross_entropy_out_of_range_labels(labels):
    with pytest.raises(ValueError, match=r"cross_entropy.*\[0, 4\)"):
        F.cross_entropy(f32(2, 4), minires.tensor(labels))


def test_cross_entropy_float_labels():
    with pytest.raises(DTypeError, match=r"cross_entropy.*float32.*\(2,\)"):
        F.cross_entropy(f32(2, 4), minires.tensor([0.0, 1.0]))


def test_cross_entropy_label_shape():
    with pytest.raises(ShapeError, match=r"cross_entropy.*\(2, 4\).*\(3,\)"):
        F.cross_entropy(f32(2, 4), minires.tensor([0, 1, 2]))
    with pytest.raises(ShapeError, match=r"cross_entropy.*\(2, 4, 1\)"):
        F.cross_entropy(f32(2, 4, 1), minires.tensor([0, 1]))


def test_cross_entropy_labels_as_a_plain_list_or_array_work_and_bad_reduction_fails():
    z = Tensor(np.array([[0.0, 0.0]], dtype=np.float32))
    assert F.cross_entropy(z, [1]).item() == pytest.approx(np.log(2))
    assert F.cross_entropy(z, np.array([0])).item() == pytest.approx(np.log(2))
    with pytest.raises(ValueError, match="reduction.*'avg'"):
        F.cross_entropy(z, [0], reduction="avg")


# ---------------------------------------------------------------- other layers

def test_batch_norm_channel_mismatch_and_tiny_batches():
    with pytest.raises(ShapeError, match=r"batch_norm.*expected 4 channels, got 3.*\(2, 3, 2, 2\)"):
        F.batch_norm(f32(2, 3, 2, 2), f32(4), f32(4), training=True)
    with pytest.raises(ShapeError, match=r"batch_norm.*more than 1 value.*\(1, 3, 1, 1\)"):
        F.batch_norm(f32(1, 3, 1, 1), None, None, training=True)
    with pytest.raises(ValueError, match="eval.*running"):
        F.batch_norm(f32(2, 3), None, None, training=False)


def test_linear_feature_mismatch():
    with pytest.raises(ShapeError, match=r"linear.*expected 3 input features.*\(2, 5\)"):
        F.linear(f32(2, 5), f32(4, 3))


def test_concat_mismatch_lists_the_shapes():
    with pytest.raises(ShapeError, match=r"concat.*\(2, 3\).*\(3, 3\)"):
        F.concat([f32(2, 3), f32(3, 3)], dim=1)
    with pytest.raises(ValueError, match="concat"):
        F.concat([])


def test_pad_channels_cannot_shrink():
    with pytest.raises(ShapeError, match=r"pad_channels.*4.*2.*\(1, 4, 2, 2\)"):
        F.pad_channels(f32(1, 4, 2, 2), 2)


def test_pooling_argument_errors():
    with pytest.raises(ValueError, match=r"max_pool2d.*padding"):
        F.max_pool2d(f32(1, 1, 4, 4), 2, padding=2)
    with pytest.raises(ShapeError, match=r"avg_pool2d.*\(1, 1, 2, 2\)"):
        F.avg_pool2d(f32(1, 1, 2, 2), 3)
    with pytest.raises(ShapeError, match=r"max_pool2d.*4-D.*\(4, 4\)"):
        F.max_pool2d(f32(4, 4), 2)
    with pytest.raises(ValueError, match="adaptive_avg_pool2d"):
        F.adaptive_avg_pool2d(f32(1, 1, 2, 2), 0)
