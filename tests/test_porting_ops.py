"""Ops and layers for code ported from Keras/TensorFlow: padding='same' at any stride, F.pad, leaky ReLU,
Softmax/LogSoftmax layers, the NLL loss, and the lazy layers.

Every differentiable op is checked against central differences in float64
(``minires.gradcheck`` projects the output on a fixed random tensor) and
against independent NumPy loop oracles written here; where torch is
installed, against PyTorch too (those tests skip cleanly without it).
TensorFlow's 'same' rule is written out here on its own (not imported from
minires), so the oracle and the library cannot share a mistake.
"""
import math
import warnings

import numpy as np
import pytest

import minires
import minires.functional as F
import minires.nn as nn
from minires import DTypeError, ShapeError, Tensor, optim
from minires.gradcheck import GradcheckError
from assertions import raises


def T(a, requires_grad=True):
    return Tensor(np.array(a, dtype=np.float64), requires_grad=requires_grad)


def tf_same(n, k, s):
    """TensorFlow's SAME padding of one axis, as its documentation states it: (before, after)."""
    out = math.ceil(n / s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def pad_np(x, pads, value=0.0):
    """x (N, C, H, W) padded by pads ((top, bottom), (left, right)) with ``value``, by hand."""
    (t, b), (l, r) = pads
    n, c, h, w = x.shape
    out = np.full((n, c, h + t + b, w + l + r), value, dtype=x.dtype)
    out[:, :, t:t + h, l:l + w] = x
    return out


def windows_loop(x, kernel, stride, reduce, pads, fill=0.0):
    """Apply ``reduce(values, real)`` to every window of x padded by pads; real marks the input's own pixels."""
    (kh, kw), (sh, sw) = kernel, stride
    xp, real = pad_np(x, pads, fill), pad_np(np.ones_like(x), pads, 0.0)
    oh, ow = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    y = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = np.s_[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            y[:, :, i, j] = reduce(xp[win], real[win])
    return y


def conv_loop(x, w, b, stride, pads):
    """Cross-correlation of x padded by pads, one output pixel at a time."""
    o, _, kh, kw = w.shape
    xp = pad_np(x, pads)
    oh, ow = (xp.shape[2] - kh) // stride[0] + 1, (xp.shape[3] - kw) // stride[1] + 1
    y = np.zeros((x.shape[0], o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
            y[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w) + (0 if b is None else b)
    return y


# ---------------------------------------------------------------- F.pad

def pad_reference(x, pad, mode="constant", value=0.0):
    """F.pad's meaning through np.pad: pad pairs listed from the last axis; negative sizes crop afterwards."""
    k = len(pad) // 2
    widths = [(0, 0)] * (x.ndim - k) + [(pad[2 * i], pad[2 * i + 1]) for i in reversed(range(k))]
    grown = [(max(b, 0), max(a, 0)) for b, a in widths]
    kind = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
    y = np.pad(x, grown, mode=kind, **({"constant_values": value} if mode == "constant" else {}))
    return y[tuple(slice(max(-b, 0), y.shape[d] - max(-a, 0)) for d, (b, a) in enumerate(widths))]


PADS = [(1, 2), (0, 0, 2, 1), (1, 1, 1, 1), (-1, 2), (2, -3, 0, 1), (-1, -1, -2, 0), (1, 0, 0, 0, 1, 1),
        (0, 0, 0, 0, 0, 0, 1, 2)]


@pytest.mark.parametrize("pad", PADS, ids=str)
def test_pad_constant_forward_and_gradcheck(pad, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    y = F.pad(T(x), pad, value=0.5)
    np.testing.assert_array_equal(y.numpy(), pad_reference(x, pad, value=0.5))
    minires.gradcheck(lambda t: F.pad(t, pad, value=-2.0), [T(x)])


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("shape, pad", [((2, 3, 5), (2, 1)), ((2, 3, 4, 5), (1, 3, 2, 0)), ((3, 4, 5), (0, 2, 3, 1)),
                                        ((1, 2, 3, 4, 5), (1, 1, 2, 0, 0, 2)), ((4, 6), (3, 3))], ids=str)
def test_pad_reflect_replicate_circular_forward_and_gradcheck(mode, shape, pad, rng):
    x = rng.standard_normal(shape)
    np.testing.assert_array_equal(F.pad(T(x), pad, mode=mode).numpy(), pad_reference(x, pad, mode))
    minires.gradcheck(lambda t: F.pad(t, pad, mode=mode), [T(x)])


def test_pad_backward_by_hand():
    """reflect: a border cell's gradient goes back to the pixel it copied, on top of that pixel's own."""
    x = T([[[1.0, 2.0, 3.0]]])
    F.pad(x, (2, 1), mode="reflect").backward(np.array([[[10.0, 20.0, 1.0, 2.0, 3.0, 30.0]]]))
    # y = [3, 2 | 1, 2, 3 | 2]: x0 gets 1, x1 gets 2 + 20 + 30, x2 gets 3 + 10
    np.testing.assert_array_equal(x.grad.numpy(), [[[1.0, 52.0, 13.0]]])
    x = T([[1.0, 2.0, 3.0]])
    F.pad(x, (-1, 1)).backward(np.array([[5.0, 6.0, 7.0]]))
    np.testing.assert_array_equal(x.grad.numpy(), [[0.0, 5.0, 6.0]])  # the cropped pixel gets nothing


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_pad_matches_torch(torch, mode, rng):
    pads = [(1, 2, 2, 1), (0, 3, 1, 0), (2, 2, 0, 1)]
    if mode == "constant":
        pads += [(-1, 2, 1, -2), (-2, -1), (0, 3)]  # cropping, and a width-only pad of a 4-D tensor
    for pad in pads:
        x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
        g = rng.standard_normal(pad_reference(x, pad).shape).astype(np.float32)
        mine, theirs = Tensor(x.copy(), requires_grad=True), torch.tensor(x.copy(), requires_grad=True)
        y = F.pad(mine, pad, mode=mode)
        ty = torch.nn.functional.pad(theirs, pad, mode=mode)
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), err_msg=f"{mode} {pad}")
        y.backward(g)
        ty.backward(torch.tensor(g))
        np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=1e-6, atol=1e-6,
                                   err_msg=f"{mode} {pad}")


@pytest.mark.parametrize("call, kind, words", [
    (lambda x: F.pad(x, (1, 2, 3)), ShapeError, ["pad:", "(1, 2, 3)", "(1, 1, 4, 5)"]),
    (lambda x: F.pad(x, (1,) * 10), ShapeError, ["pad:", "at most 4 axes"]),
    (lambda x: F.pad(x, (1.5, 1)), TypeError, ["pad:", "tuple of ints", "1.5"]),
    (lambda x: F.pad(x, 2), TypeError, ["pad:", "tuple of ints"]),
    (lambda x: F.pad(x, (1, 1), mode="full"), ValueError, ["pad:", "'full'", "'reflect'"]),
    (lambda x: F.pad(x, (1, 1), mode="reflect", value=1.0), ValueError, ["pad:", "takes no value"]),
    (lambda x: F.pad(x, (5, 0, 0, 0), mode="reflect"), ShapeError, ["pad:", "less than", "(1, 1, 4, 5)"]),
    (lambda x: F.pad(x, (6, 0, 0, 0), mode="circular"), ShapeError, ["pad:", "at most", "(6, 0)"]),
    (lambda x: F.pad(x, (-1, 0, 0, 0), mode="replicate"), ValueError, ["pad:", "negative", "'constant'"]),
    (lambda x: F.pad(x, (1, 1), mode="reflect"), ShapeError, ["pad:", "2 sizes", "2-D or 3-D", "(1, 1, 4, 5)"]),
    (lambda x: F.pad(x, (-3, -3)), ShapeError, ["pad:", "negative size", "(1, 1, 4, 5)"]),
    (lambda x: F.pad(x.numpy(), (1, 1)), TypeError, ["pad:", "Tensor"]),
], ids=["odd", "too-many", "float", "int", "mode", "value", "reflect-big", "circular-big", "negative-replicate",
        "reflect-ndim", "negative-size", "array"])
def test_pad_bad_input(call, kind, words):
    raises(kind, lambda: call(minires.ones(1, 1, 4, 5)), *words)


def test_pad_layers(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(nn.ZeroPad2d(1)(Tensor(x)).numpy(), pad_reference(x, (1, 1, 1, 1)))
    np.testing.assert_array_equal(nn.ZeroPad2d((1, 0, 2, 3))(Tensor(x)).numpy(), pad_reference(x, (1, 0, 2, 3)))
    np.testing.assert_array_equal(nn.ConstantPad2d((0, -1, 1, 0), 2.5)(Tensor(x)).numpy(),
                                  pad_reference(x, (0, -1, 1, 0), value=2.5))
    np.testing.assert_array_equal(nn.ReflectionPad2d(2)(Tensor(x)).numpy(), pad_reference(x, (2,) * 4, "reflect"))
    np.testing.assert_array_equal(nn.ReplicationPad2d((3, 0, 0, 1))(Tensor(x)).numpy(),
                                  pad_reference(x, (3, 0, 0, 1), "replicate"))
    assert repr(nn.ZeroPad2d(1)) == "ZeroPad2d(padding=(1, 1, 1, 1), value=0.0)"
    raises(ValueError, lambda: nn.ZeroPad2d((1, 2, 3)), "ZeroPad2d", "4-tuple", "(1, 2, 3)")
    raises(TypeError, lambda: nn.ConstantPad2d((1, 2, 3, 0.5), 1.0), "ConstantPad2d", "ints")
    raises(ValueError, lambda: nn.ReflectionPad2d(-1), "ReflectionPad2d", "non-negative")
    model = nn.Sequential(nn.ReflectionPad2d(4))
    msg = raises(ShapeError, lambda: model(Tensor(x)), "less than", "(2, 3, 4, 5)")
    assert msg.startswith("ReflectionPad2d(0): pad:"), msg


# ---------------------------------------------------------------- padding='same' and 'valid'

@pytest.mark.parametrize("n, k, s, want", [(5, 3, 2, (1, 1)), (6, 3, 2, (0, 1)), (4, 2, 2, (0, 0)),
                                           (5, 1, 2, (0, 0)), (7, 4, 1, (1, 2)), (3, 5, 1, (2, 2)),
                                           (7, 3, 3, (1, 1)), (8, 3, 3, (0, 1)), (1, 3, 2, (1, 1))])
def test_same_padding_is_tensorflows_rule(n, k, s, want):
    from minires.checks import same_padding
    assert tf_same(n, k, s) == want  # the oracle against figures worked out by hand
    assert same_padding(n, k, s) == want


CONV_SAME = [((2, 3, 5, 5), 3, 1), ((1, 2, 6, 7), 3, 2), ((2, 2, 7, 6), 4, 2), ((1, 3, 5, 8), (2, 3), (1, 2)),
             ((1, 2, 9, 7), 3, 3), ((1, 1, 4, 4), 1, 2), ((1, 2, 3, 3), 5, 2), ((1, 2, 6, 6), 4, 1)]


@pytest.mark.parametrize("shape, kernel, stride", CONV_SAME, ids=str)
def test_conv2d_same_against_a_loop_oracle_and_gradcheck(shape, kernel, stride, rng):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    x, w, b = rng.standard_normal(shape), rng.standard_normal((3, shape[1], kh, kw)), rng.standard_normal(3)
    y = F.conv2d(T(x), T(w), T(b), stride=stride, padding="same")
    assert y.shape[2:] == (math.ceil(shape[2] / sh), math.ceil(shape[3] / sw))
    pads = (tf_same(shape[2], kh, sh), tf_same(shape[3], kw, sw))
    np.testing.assert_allclose(y.numpy(), conv_loop(x, w, b, (sh, sw), pads), rtol=1e-12, atol=1e-12)
    minires.gradcheck(lambda *t: F.conv2d(*t, stride=stride, padding="same"), [T(x), T(w), T(b)])


def test_conv2d_valid_is_padding_zero_and_case_is_free(rng):
    x, w = T(rng.standard_normal((1, 2, 6, 5))), T(rng.standard_normal((3, 2, 3, 3)))
    np.testing.assert_array_equal(F.conv2d(x, w, stride=2, padding="valid").numpy(),
                                  F.conv2d(x, w, stride=2, padding=0).numpy())
    np.testing.assert_array_equal(F.conv2d(x, w, stride=2, padding="SAME").numpy(),
                                  F.conv2d(x, w, stride=2, padding="same").numpy())


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's note on its own copy
@pytest.mark.parametrize("kernel", [1, 2, 3, 4, (2, 5)])
def test_conv2d_same_at_stride_1_matches_torch(torch, kernel, rng):
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3) + ((kernel, kernel) if isinstance(kernel, int) else kernel)).astype(np.float32)
    check_conv_against_torch(torch, x, w, 1, lambda tx, tw, tb: torch.nn.functional.conv2d(tx, tw, tb, padding="same"),
                             rng)


@pytest.mark.parametrize("shape, kernel, stride", [((2, 3, 7, 6), 3, 2), ((1, 3, 8, 8), 3, 2), ((1, 3, 9, 6), 4, 3),
                                                   ((2, 3, 5, 7), 1, 2), ((1, 3, 224, 224), 7, 2)], ids=str)
def test_conv2d_same_at_stride_2_matches_torch_pad_then_conv(torch, shape, kernel, stride, rng):
    """TensorFlow's rule spelled in torch: F.pad (more at the bottom/right) then an unpadded convolution."""
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((4, 3, kernel, kernel)).astype(np.float32)
    (t, b), (l, r) = tf_same(shape[2], kernel, stride), tf_same(shape[3], kernel, stride)
    TF = torch.nn.functional
    check_conv_against_torch(torch, x, w, stride,
                             lambda tx, tw, tb: TF.conv2d(TF.pad(tx, (l, r, t, b)), tw, tb, stride=stride), rng)


def check_conv_against_torch(torch, x, w, stride, torch_fn, rng):
    bias = rng.standard_normal(w.shape[0]).astype(np.float32)
    mine = [Tensor(a.copy(), requires_grad=True) for a in (x, w, bias)]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in (x, w, bias)]
    y, ty = F.conv2d(*mine, stride=stride, padding="same"), torch_fn(*theirs)
    scale = max(1.0, float(ty.detach().abs().max()))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-5 * scale)
    g = rng.standard_normal(ty.shape).astype(np.float32)
    y.backward(g)
    ty.backward(torch.tensor(g))
    for m, t, name in zip(mine, theirs, ("x", "weight", "bias")):
        scale = max(1.0, float(t.grad.abs().max()))
        np.testing.assert_allclose(m.grad.numpy(), t.grad.numpy(), rtol=1e-4, atol=1e-5 * scale, err_msg=name)


POOL_SAME = [((1, 2, 5, 5), 2, 2), ((2, 1, 6, 7), 3, 2), ((1, 2, 5, 6), 3, 1), ((1, 1, 7, 4), (3, 2), (2, 1)),
             ((1, 2, 4, 4), 2, 1), ((1, 1, 8, 8), 3, 3)]


def _pool_case(shape, kernel, stride):
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    stride = (stride, stride) if isinstance(stride, int) else stride
    return kernel, stride, (tf_same(shape[2], kernel[0], stride[0]), tf_same(shape[3], kernel[1], stride[1]))


@pytest.mark.parametrize("shape, kernel, stride", POOL_SAME, ids=str)
def test_max_pool2d_same_is_the_max_over_real_pixels(shape, kernel, stride, rng):
    x = rng.permutation(np.prod(shape)).reshape(shape) / 7.0 - 3.0  # distinct values: a clear maximum
    k, s, pads = _pool_case(shape, kernel, stride)
    want = windows_loop(x, k, s, lambda v, real: np.where(real > 0, v, -np.inf).max(axis=(2, 3)), pads)
    y = F.max_pool2d(T(x), kernel, stride, padding="same")
    assert y.shape[2:] == (math.ceil(shape[2] / s[0]), math.ceil(shape[3] / s[1]))
    np.testing.assert_array_equal(y.numpy(), want)
    minires.gradcheck(lambda t: F.max_pool2d(t, kernel, stride, padding="same"), [T(x)])


@pytest.mark.parametrize("shape, kernel, stride", POOL_SAME, ids=str)
def test_avg_pool2d_same_divides_by_the_real_pixels_as_tensorflow(shape, kernel, stride, rng):
    x = rng.standard_normal(shape)
    k, s, pads = _pool_case(shape, kernel, stride)
    want = windows_loop(x, k, s, lambda v, real: (v * real).sum(axis=(2, 3)) / real.sum(axis=(2, 3)), pads)
    np.testing.assert_allclose(F.avg_pool2d(T(x), kernel, stride, padding="same").numpy(), want, rtol=1e-12)
    minires.gradcheck(lambda t: F.avg_pool2d(t, kernel, stride, padding="same"), [T(x)])


def test_same_pooling_by_hand():
    """tf.nn.avg_pool2d / max_pool2d(x, 2, 2, 'SAME') on 0..24 (5x5): the last row and column average 2 pixels."""
    x = Tensor(np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5))
    np.testing.assert_array_equal(F.avg_pool2d(x, 2, 2, "same").numpy()[0, 0],
                                  [[3, 5, 6.5], [13, 15, 16.5], [20.5, 22.5, 24]])
    np.testing.assert_array_equal(F.max_pool2d(x, 2, 2, "same").numpy()[0, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    x = Tensor(-np.ones((1, 1, 2, 2), dtype=np.float32))  # all negative: padding never wins the max
    np.testing.assert_array_equal(F.max_pool2d(x, 3, 1, "same").numpy(), -np.ones((1, 1, 2, 2)))


def test_pooling_same_matches_torch(torch, rng):
    """max: torch pads with -inf then pools; avg (a symmetric case): torch's count_include_pad=False."""
    TF = torch.nn.functional
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    (t, b), (l, r) = tf_same(7, 3, 2), tf_same(6, 3, 2)
    cases = [(lambda a: F.max_pool2d(a, 3, 2, "same"),
              lambda a: TF.max_pool2d(TF.pad(a, (l, r, t, b), value=-math.inf), 3, 2)),
             (lambda a: F.avg_pool2d(a, 3, 1, "same"),
              lambda a: TF.avg_pool2d(a, 3, 1, 1, count_include_pad=False))]
    for mine_fn, torch_fn in cases:
        mine, theirs = Tensor(x.copy(), requires_grad=True), torch.tensor(x.copy(), requires_grad=True)
        y, ty = mine_fn(mine), torch_fn(theirs)
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
        g = rng.standard_normal(ty.shape).astype(np.float32)
        y.backward(g)
        ty.backward(torch.tensor(g))
        np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_same_and_valid_layers(rng):
    x = Tensor(rng.standard_normal((2, 3, 9, 8)).astype(np.float32))
    conv = nn.Conv2d(3, 4, 3, stride=2, padding="same")
    assert conv(x).shape == (2, 4, 5, 4) and "padding='same'" in repr(conv)
    np.testing.assert_array_equal(conv(x).numpy(), F.conv2d(x, conv.weight, conv.bias, 2, "same").numpy())
    assert nn.Conv2d(3, 4, 3, padding="valid")(x).shape == (2, 4, 7, 6)
    assert nn.MaxPool2d(2, padding="same")(x).shape == (2, 3, 5, 4)
    assert nn.AvgPool2d(3, 2, padding="SAME")(x).shape == (2, 3, 5, 4)
    assert nn.AvgPool2d(3, 2, padding="valid")(x).shape == (2, 3, 4, 3)
    assert repr(nn.MaxPool2d(2, padding="SAME")) == "MaxPool2d(kernel_size=2, stride=2, padding='same')"
    np.testing.assert_array_equal(nn.AvgPool2d(2, padding="same")(x).numpy(), F.avg_pool2d(x, 2, 2, "same").numpy())


BAD_PADDINGS = [("full", ValueError, "padding must be an int, a pair of ints, 'same' or 'valid', got 'full'"),
                (-1, ValueError, "padding must be non-negative, got -1"),
                ((1, 2, 3), ValueError, "padding must be an int or a pair, got (1, 2, 3)"),
                (1.5, TypeError, "padding must be an int or a pair of ints, got 1.5"),
                (None, TypeError, "padding must be an int or a pair of ints, got None")]


@pytest.mark.parametrize("value, kind, words", BAD_PADDINGS, ids=str)
@pytest.mark.parametrize("name, make", [
    ("Conv2d", lambda p: nn.Conv2d(3, 4, 3, padding=p)), ("LazyConv2d", lambda p: nn.LazyConv2d(4, 3, padding=p)),
    ("MaxPool2d", lambda p: nn.MaxPool2d(2, padding=p)), ("AvgPool2d", lambda p: nn.AvgPool2d(2, padding=p)),
    ("conv2d", lambda p: F.conv2d(minires.ones(1, 3, 5, 5), minires.ones(4, 3, 3, 3), padding=p)),
    ("max_pool2d", lambda p: F.max_pool2d(minires.ones(1, 3, 5, 5), 2, padding=p)),
    ("avg_pool2d", lambda p: F.avg_pool2d(minires.ones(1, 3, 5, 5), 2, padding=p))])
def test_padding_not_understood_names_the_layer(name, make, value, kind, words):
    assert raises(kind, lambda: make(value), words).startswith(name + ": ")


def test_a_same_convolution_that_cannot_run_names_its_place_in_the_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding="same"), nn.Conv2d(5, 4, 3, stride=2, padding="same"))
    msg = raises(ShapeError, lambda: model(minires.ones(1, 3, 8, 8)), "expected 5 input channels, got 4")
    assert msg.startswith("Conv2d(1): "), msg
    empty = nn.Sequential(nn.MaxPool2d(3, 2, padding="same"))
    msg = raises(ShapeError, lambda: empty(minires.ones(1, 3, 0, 4)), "non-zero height and width", "(1, 3, 0, 4)")
    assert msg.startswith("MaxPool2d(0): "), msg


# ---------------------------------------------------------------- leaky ReLU, Softmax, LogSoftmax

@pytest.mark.parametrize("slope", [0.01, 0.3, -0.5, 2.0])
def test_leaky_relu_value_and_gradcheck(slope, rng):
    x = rng.standard_normal((3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # finite differences need a margin around the kink
    np.testing.assert_array_equal(F.leaky_relu(T(x), slope).numpy(), np.where(x > 0, x, slope * x))
    minires.gradcheck(lambda t: F.leaky_relu(t, slope), [T(x)])
    np.testing.assert_array_equal(nn.LeakyReLU(slope)(T(x)).numpy(), np.where(x > 0, x, slope * x))


def test_leaky_relu_defaults_kink_and_errors(torch, rng):
    x = np.concatenate([rng.standard_normal(7), [0.0, -0.0]]).astype(np.float32)
    mine, theirs = Tensor(x.copy(), requires_grad=True), torch.tensor(x.copy(), requires_grad=True)
    y, ty = nn.LeakyReLU()(mine), torch.nn.LeakyReLU()(theirs)
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    g = rng.standard_normal(9).astype(np.float32)
    y.backward(g)
    ty.backward(torch.tensor(g))
    np.testing.assert_array_equal(mine.grad.numpy(), theirs.grad.numpy())  # at 0: the slope, as torch
    assert y.dtype == np.float32 and repr(nn.LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"
    raises(DTypeError, lambda: F.leaky_relu(minires.tensor([1, -2])), "leaky_relu", "floating")
    raises(TypeError, lambda: F.leaky_relu(minires.ones(2), "0.1"), "leaky_relu", "negative_slope")
    raises(TypeError, lambda: nn.LeakyReLU(None), "LeakyReLU", "negative_slope")


def test_softmax_and_log_softmax_layers(torch, rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    for dim in (0, 1, -1):
        np.testing.assert_allclose(nn.Softmax(dim)(Tensor(x)).numpy(),
                                   torch.nn.Softmax(dim)(torch.tensor(x)).numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(nn.LogSoftmax(dim=dim)(Tensor(x)).numpy(),
                                   torch.nn.LogSoftmax(dim)(torch.tensor(x)).numpy(), rtol=1e-5, atol=1e-6)
    for shape in [(3, 4), (2, 3, 4), (2, 3, 4, 5)]:  # dim=None: PyTorch's legacy choice, with its warning
        a = rng.standard_normal(shape).astype(np.float32)
        with pytest.warns(UserWarning, match="pass dim="):
            mine = nn.Softmax()(Tensor(a)).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.testing.assert_allclose(mine, torch.nn.Softmax()(torch.tensor(a)).numpy(), rtol=1e-5, atol=1e-7)
    minires.gradcheck(lambda t: nn.Softmax(1)(t), [T(rng.standard_normal((3, 4)))])
    assert repr(nn.Softmax(dim=1)) == "Softmax(dim=1)"
    msg = raises(IndexError, lambda: nn.Sequential(nn.Softmax(2))(minires.ones(2, 3)), "dimension out of range")
    assert msg.startswith("Softmax(0): "), msg


# ---------------------------------------------------------------- nll_loss

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_value_gradcheck_and_cross_entropy(reduction, rng):
    lp, t = rng.standard_normal((5, 4)), np.array([0, 3, 3, 1, 2])
    loss = F.nll_loss(T(lp), t, reduction=reduction)
    per_row = np.array([-lp[i, t[i]] for i in range(5)])
    np.testing.assert_allclose(loss.numpy(), {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction])
    minires.gradcheck(lambda x: F.nll_loss(x, t, reduction=reduction), [T(lp)])
    # cross_entropy(z) = nll_loss(log_softmax(z)): values and gradients
    z1, z2 = T(lp * 3), T(lp * 3)
    a, b = F.cross_entropy(z1, t, reduction), F.nll_loss(F.log_softmax(z2, 1), t, reduction)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
    r = rng.standard_normal(a.shape)
    (a * Tensor(r)).sum().backward()
    (b * Tensor(r)).sum().backward()
    np.testing.assert_allclose(z1.grad.numpy(), z2.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(nn.NLLLoss(reduction)(T(lp), t).numpy(), loss.numpy())


def test_nll_loss_gradcheck_can_fail():
    """A wrong backward is caught: the same check on a loss whose backward forgets the 1/N."""
    from minires.functional_extra import NLLLossFunction

    class Wrong(NLLLossFunction):
        def backward(self, grad):
            dx, _ = super().backward(grad)
            return dx * self.shape[0], None

    lp, t = T(np.random.default_rng(0).standard_normal((3, 4))), minires.tensor([0, 1, 2])
    with pytest.raises(GradcheckError):
        minires.gradcheck(lambda x: Wrong.apply(x, t, reduction="mean"), [lp])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_matches_torch(torch, reduction, rng):
    lp = np.log(rng.dirichlet(np.ones(5), size=6)).astype(np.float32)
    t = rng.integers(0, 5, 6)
    mine, theirs = Tensor(lp.copy(), requires_grad=True), torch.tensor(lp.copy(), requires_grad=True)
    y = F.nll_loss(mine, t, reduction=reduction)
    ty = torch.nn.functional.nll_loss(theirs, torch.tensor(t), reduction=reduction)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-6)
    g = rng.standard_normal(ty.shape).astype(np.float32)
    y.backward(g)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=1e-6)
    model_loss = nn.NLLLoss()(nn.LogSoftmax(1)(Tensor(lp)), t)
    np.testing.assert_allclose(model_loss.numpy(), nn.CrossEntropyLoss()(Tensor(lp), t).numpy(), rtol=1e-6)


def test_nll_loss_bad_input():
    lp = minires.zeros(3, 4)
    raises(ValueError, lambda: F.nll_loss(lp, [0, 4, 1]), "nll_loss: labels must lie in [0, 4), got min 0 and max 4")
    raises(ValueError, lambda: F.nll_loss(lp, [0, -1, 1]), "nll_loss", "min -1")
    raises(DTypeError, lambda: F.nll_loss(lp, np.array([0.0, 1.0, 2.0])), "nll_loss", "integer class labels")
    raises(ShapeError, lambda: F.nll_loss(lp, [0, 1]), "nll_loss", "input (3, 4)", "target (2,)")
    raises(ShapeError, lambda: F.nll_loss(minires.zeros(3), [0, 1, 2]), "nll_loss", "(N, K)")
    raises(ValueError, lambda: F.nll_loss(lp, [0, 1, 2], reduction="avg"), "nll_loss", "'avg'")
    raises(ValueError, lambda: F.nll_loss(lp, [0, 1, 2], minires.ones(4)), "nll_loss", "reduction")  # torch's weight
    raises(DTypeError, lambda: F.nll_loss(minires.tensor([[0, 1]]), [0]), "nll_loss", "floating")
    assert np.isnan(F.nll_loss(minires.zeros(0, 4), np.zeros(0, dtype=np.int64)).item())  # as torch
    raises(ValueError, lambda: F.cross_entropy(lp, [0, 4, 1]), "cross_entropy: labels must lie in [0, 4)")
    msg = raises(ShapeError, lambda: nn.NLLLoss()(lp, [0, 1]), "target (2,)")
    assert msg.startswith("NLLLoss: "), msg


# ---------------------------------------------------------------- lazy layers

def test_lazy_layers_infer_their_input_size_and_become_eager_ones(rng):
    x = Tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    minires.manual_seed(5)
    eager = nn.Conv2d(3, 8, 3, stride=2, padding="same")
    minires.manual_seed(5)
    lazy = nn.LazyConv2d(8, 3, stride=2, padding="same")
    assert isinstance(lazy.weight, nn.UninitializedParameter) and lazy.in_channels == 0
    y = lazy(x)
    assert type(lazy) is nn.Conv2d and type(lazy.weight) is nn.Parameter and type(lazy.bias) is nn.Parameter
    assert lazy.in_channels == 3 and lazy.weight.shape == (8, 3, 3, 3) and lazy.weight.dtype == np.float32
    np.testing.assert_array_equal(lazy.weight.numpy(), eager.weight.numpy())  # the same draws as Conv2d
    np.testing.assert_array_equal(y.numpy(), eager(x).numpy())
    assert repr(lazy) == repr(eager)
    minires.manual_seed(6)
    eager = nn.Linear(5, 4)
    minires.manual_seed(6)
    lazy = nn.LazyLinear(4)
    h = Tensor(rng.standard_normal((2, 7, 5)).astype(np.float32))
    np.testing.assert_array_equal(lazy(h).numpy(), eager(h).numpy())
    assert type(lazy) is nn.Linear and lazy.in_features == 5
    np.testing.assert_array_equal(lazy.bias.numpy(), eager.bias.numpy())
    no_bias = nn.LazyLinear(2, bias=False)
    no_bias(h)
    assert no_bias.bias is None and no_bias.weight.shape == (2, 5)


def test_an_optimizer_built_before_the_first_forward_trains_the_lazy_weights(rng):
    model = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    params = list(model.parameters())
    assert len(params) == 4 and model.num_parameters() == 0  # handed over, not silently nothing
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    x = Tensor(rng.standard_normal((3, 2, 5, 5)).astype(np.float32))
    F.cross_entropy(model(x), [0, 1, 1]).backward()
    assert [p for p in model.parameters()] == params and all(type(p) is nn.Parameter for p in params)
    before = [p.numpy().copy() for p in params]
    opt.step()
    assert all((p.numpy() != b).any() for p, b in zip(params, before))
    assert model.num_parameters() == 4 * 2 * 9 + 4 + 2 * 36 + 2


def test_reading_uninitialised_weights_says_to_run_a_batch_first():
    model = nn.Sequential(nn.LazyLinear(3))
    for call in (model.state_dict, lambda: model[0].weight.numpy(), lambda: minires.save(model, "/nonexistent")):
        raises(RuntimeError, call, "LazyLinear(out_features=3).weight is not materialised", "model(x[:1])")
    assert "UninitializedParameter" in repr(model[0].weight)


def test_lazy_layers_keep_dtype_and_device_given_before_the_first_forward(rng):
    model = nn.Sequential(nn.LazyConv2d(2, 1), nn.Flatten(), nn.LazyLinear(3)).double()
    y = model(Tensor(rng.standard_normal((1, 3, 2, 2))))
    assert y.dtype == np.float64 and all(p.dtype == np.float64 for p in model.parameters())
    minires.gradcheck(lambda t: model(t), [T(rng.standard_normal((2, 3, 2, 2)))])


def test_load_state_dict_into_a_lazy_layer_takes_the_shapes_from_the_checkpoint(rng):
    source = nn.Conv2d(5, 4, (3, 2), padding=1)
    lazy = nn.LazyConv2d(4, (3, 2), padding=1)
    lazy.load_state_dict(source.state_dict())
    assert type(lazy) is nn.Conv2d and lazy.in_channels == 5
    x = Tensor(rng.standard_normal((1, 5, 4, 4)).astype(np.float32))
    np.testing.assert_array_equal(lazy(x).numpy(), source(x).numpy())
    # a failed load changes nothing: still lazy, still refusing to be read
    failed = nn.LazyLinear(3)
    raises(nn.StateDictError, lambda: failed.load_state_dict({"weight": np.zeros((3, 4))}), "missing keys: bias")
    raises(nn.StateDictError, lambda: failed.load_state_dict({"weight": np.zeros((2, 4)), "bias": np.zeros(3)}),
           "weight", "(2, 4)")
    assert type(failed) is nn.LazyLinear and failed.in_features == 0
    raises(RuntimeError, failed.state_dict, "not materialised")
    # strict=False: a key left out keeps its Linear initialisation
    failed.load_state_dict({"weight": np.ones((3, 4))}, strict=False)
    assert type(failed) is nn.Linear and np.all(np.abs(failed.bias.numpy()) <= 0.5) and failed.bias.shape == (3,)


def test_a_model_with_lazy_layers_loads_a_checkpoint_without_a_dry_run(rng, tmp_path):
    def make():
        return nn.Sequential(nn.LazyConv2d(4, 3, padding="same"), nn.LeakyReLU(0.2), nn.MaxPool2d(2, padding="same"),
                             nn.Flatten(), nn.LazyLinear(3))
    x = Tensor(rng.standard_normal((2, 3, 5, 5)).astype(np.float32))
    model, copy = make(), make()
    y = model(x)
    minires.save(model, tmp_path / "m.npz")
    # a failed load (the Linear's input size is wrong) leaves both lazy layers lazy, the conv's too
    wrong = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3))
    wrong_state = wrong.state_dict()
    wrong_state["4.weight"] = np.zeros((2, 36), dtype=np.float32)
    raises(nn.StateDictError, lambda: copy.load_state_dict(wrong_state), "4.weight", "(2, 36)")
    assert [type(m) for m in (copy[0], copy[4])] == [nn.LazyConv2d, nn.LazyLinear]
    assert copy[0].in_channels == 0 and copy[4].in_features == 0
    raises(RuntimeError, copy.state_dict, "not materialised")
    copy.load_state_dict(minires.load(tmp_path / "m.npz"))  # no dry run needed, as in PyTorch
    assert [type(m) for m in (copy[0], copy[4])] == [nn.Conv2d, nn.Linear] and copy[4].in_features == 36
    np.testing.assert_array_equal(copy(x).numpy(), y.numpy())


def test_lazy_layers_bad_first_input_names_the_layer_and_stays_lazy():
    model = nn.Sequential(nn.LazyConv2d(4, 3), nn.LazyLinear(2))
    assert raises(ShapeError, lambda: model(minires.ones(3, 5, 5)), "expected a 4-D input, got shape (3, 5, 5)") \
        .startswith("LazyConv2d(0): ")
    assert raises(DTypeError, lambda: model(minires.tensor(np.ones((1, 3, 5, 5), dtype=np.int64))), "int64") \
        .startswith("LazyConv2d(0): ")
    assert raises(ShapeError, lambda: model(minires.ones(1, 0, 5, 5)), "at least one channel").startswith("LazyConv2d")
    assert type(model[0]) is nn.LazyConv2d and model[0].in_channels == 0
    raises(ValueError, lambda: nn.LazyLinear(0), "LazyLinear", "out_features")
    raises(ValueError, lambda: nn.LazyConv2d(4, 0), "LazyConv2d", "kernel_size")
    lin = nn.Sequential(nn.LazyLinear(2))
    assert raises(ShapeError, lambda: lin(minires.ones(2, 0)), "last axis").startswith("LazyLinear(0): ")
