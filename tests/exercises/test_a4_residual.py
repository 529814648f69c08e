"""Assignment 4, residual blocks: the residual add's backward, the option-A shortcut, BasicBlock and Bottleneck.

Run: pytest -m residual. Block tests run the convolutions, batch norms and
the option-A shortcut through the tests' own loop oracles, so they check the
wiring of the block alone.

Weights: the residual add's backward and the option-A shortcut are hot
paths, vectorised (no Python loop over images, pixels or channels); each
has a ``..._is_vectorised`` test that checks the values on a small input
and counts the Python lines on larger ones, weighing twice what the
exercise's other tests weigh together, so a correct answer that loops over
pixels (``pad_loop`` pasted in) earns a third of the points. Among the
other tests the general cases weigh 2, degenerate ones (a dtype check, a
shortcut that neither subsamples nor pads) 1.
"""
import numpy as np
import pytest

from exercise_helpers import (LoopKernels, batch_norm_loop, channel_stats_loop, check_array, check_lines_do_not_grow,
                              conv2d_loop, count_runs, numerical_gradient, shape_text, use_loop_kernels)

import minires
import minires.functional as F
from minires import nn
from minires.kernels import numpy_ref as ref
from minires.models.blocks import BasicBlock, Bottleneck, PadChannels
from minires.residual import PadChannelsFunction, ResidualAddFunction

pytestmark = pytest.mark.residual


def normal(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# the vectorisation checks' inputs: a small one, then more images and pixels, then more channels
SMALL, MORE_PIXELS, MORE_CHANNELS = (2, 3, 4, 4), (12, 3, 8, 8), (2, 12, 4, 4)


def vector_runs(fn, make):
    """``count_runs`` of fn on ``make(x_shape)``'s arguments for the small input, more pixels, more channels."""
    inputs = [(f"x of shape {shape_text(shape)}", make(shape), grew)
              for shape, grew in ((SMALL, ""), (MORE_PIXELS, "pixels or images"), (MORE_CHANNELS, "channels"))]
    return inputs[0][1], count_runs(fn, inputs)


# ---------------------------------------------------------------- residual.add_backward

def _add_case(relu, shape=(2, 3, 4, 4)):
    """f, s, R, y and the loss sum(relu(f + s) * R) (or sum((f + s) * R)), with f + s away from relu's kink."""
    rng = np.random.default_rng(1)
    f, s = rng.standard_normal(shape), rng.standard_normal(shape)
    z = f + s
    s += np.where(np.abs(z) < 0.05, 0.2, 0)  # keep f + s away from the kink of relu
    r = rng.standard_normal(f.shape)

    def loss():
        y = f + s
        return float(np.sum((np.maximum(y, 0) if relu else y) * r))

    return f, s, r, np.maximum(f + s, 0) if relu else f + s, loss


def check_add_backward(got, f, s, loss, relu):
    if not isinstance(got, tuple) or len(got) != 2:
        pytest.fail("residual_add_backward must return a pair (grad into f, grad into s)", pytrace=False)
    what = f"residual_add_backward(relu={relu}) for f and s of shape {f.shape}"
    check_array(got[0], numerical_gradient(loss, f), f"{what}: the gradient into the residual branch f",
                rtol=1e-6, atol=1e-7)
    check_array(got[1], numerical_gradient(loss, s), f"{what}: the gradient into the shortcut s (the '1')",
                rtol=1e-6, atol=1e-7)


@pytest.mark.exercise("residual.add_backward", weight=2)
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no-relu"])
def test_residual_add_backward_matches_finite_differences(relu):
    f, s, r, y, loss = _add_case(relu)
    check_add_backward(ref.residual_add_backward(r, y, relu), f, s, loss, relu)


@pytest.mark.exercise("residual.add_backward", weight=10)
def test_residual_add_backward_is_vectorised():
    _, runs = vector_runs(ref.residual_add_backward, lambda shape: _add_case(True, shape)[2:4] + (True,))
    f, s, _, _, loss = _add_case(True, SMALL)
    check_add_backward(runs[0].result, f, s, loss, True)
    check_lines_do_not_grow("residual_add_backward(grad_out, y, relu=True)", runs,
                            "whole-array NumPy expressions, no Python loop")


@pytest.mark.exercise("residual.add_backward")
def test_residual_add_backward_keeps_the_dtype():
    g, y = normal((2, 2, 3, 3), 2, np.float32), np.maximum(normal((2, 2, 3, 3), 3, np.float32), 0)
    df, ds = ref.residual_add_backward(g, y, True)
    for name, a in (("the gradient into f", df), ("the gradient into s", ds)):
        assert a.dtype == np.float32, f"residual_add_backward: {name} has dtype {a.dtype}, expected float32"


# ---------------------------------------------------------------- residual.pad_forward / pad_backward

def pad_loop(x, out_channels, stride):
    """y[n, c, oy, ox] = x[n, c, oy*stride, ox*stride] for the input's channels, 0 for the added ones."""
    n, c, h, w = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    y = np.zeros((n, out_channels, oh, ow), dtype=x.dtype)
    for b, ch, oy, ox in np.ndindex(n, c, oh, ow):
        y[b, ch, oy, ox] = x[b, ch, oy * stride, ox * stride]
    return y


PAD_CASES = [((2, 3, 5, 5), 6, 2), ((1, 2, 6, 4), 8, 2), ((2, 3, 7, 7), 5, 3)]
PAD_IDS = ["3to6-s2-odd", "2to8-s2", "3to5-s3"]
PAD_NOTHING = ((2, 4, 4, 6), 4, 1)  # degenerate: neither subsamples nor pads, y = x


def check_pad_forward(got, x, out_channels, stride):
    check_array(got, pad_loop(x, out_channels, stride),
                f"PadChannelsFunction.forward(x of shape {x.shape}, out_channels={out_channels}, stride={stride})",
                dtype=np.float32)


@pytest.mark.exercise("residual.pad_forward", weight=2)
@pytest.mark.parametrize("shape, out_channels, stride", PAD_CASES, ids=PAD_IDS)
def test_pad_channels_forward_matches_the_loop(shape, out_channels, stride):
    x = normal(shape, 4, np.float32)
    check_pad_forward(PadChannelsFunction().forward(x, out_channels, stride), x, out_channels, stride)


@pytest.mark.exercise("residual.pad_forward")
def test_pad_channels_forward_that_changes_nothing():
    shape, out_channels, stride = PAD_NOTHING
    x = normal(shape, 4, np.float32)
    check_pad_forward(PadChannelsFunction().forward(x, out_channels, stride), x, out_channels, stride)


@pytest.mark.exercise("residual.pad_forward", weight=14)
def test_pad_channels_forward_is_vectorised():
    fn = PadChannelsFunction()
    (x, out_channels, stride), runs = vector_runs(fn.forward, lambda shape: (normal(shape, 4, np.float32),
                                                                             2 * shape[1], 2))
    check_pad_forward(runs[0].result, x, out_channels, stride)
    check_lines_do_not_grow("PadChannelsFunction.forward(x, out_channels=2*C, stride=2)", runs,
                            "one strided slice and one zero array for all images, channels and pixels")


def pad_backward_case(shape, out_channels, stride):
    """The PadChannelsFunction whose backward is tested, R, and the loss sum(pad(x) * R) with its x."""
    x = normal(shape, 5)
    r = normal(pad_loop(x, out_channels, stride).shape, 6)
    fn = PadChannelsFunction()
    fn.shape, fn.stride = x.shape, stride  # what forward saves (set here: these tests check backward alone)
    return fn, r, x, lambda: float(np.sum(pad_loop(x, out_channels, stride) * r))


def check_pad_backward(got, x, loss, out_channels, stride):
    check_array(got, numerical_gradient(loss, x), f"PadChannelsFunction.backward for x of shape {x.shape}, "
                f"out_channels={out_channels}, stride={stride}", rtol=1e-6, atol=1e-7)


@pytest.mark.exercise("residual.pad_backward", weight=2)
@pytest.mark.parametrize("shape, out_channels, stride", PAD_CASES, ids=PAD_IDS)
def test_pad_channels_backward_matches_finite_differences(shape, out_channels, stride):
    fn, r, x, loss = pad_backward_case(shape, out_channels, stride)
    check_pad_backward(fn.backward(r), x, loss, out_channels, stride)


@pytest.mark.exercise("residual.pad_backward")
def test_pad_channels_backward_that_changes_nothing():
    fn, r, x, loss = pad_backward_case(*PAD_NOTHING)
    check_pad_backward(fn.backward(r), x, loss, *PAD_NOTHING[1:])


def pad_backward(fn, grad):
    return fn.backward(grad)


@pytest.mark.exercise("residual.pad_backward", weight=14)
def test_pad_channels_backward_is_vectorised():
    (fn, r), runs = vector_runs(pad_backward, lambda shape: pad_backward_case(shape, 2 * shape[1], 2)[:2])
    _, _, x, loss = pad_backward_case(SMALL, 2 * SMALL[1], 2)
    check_pad_backward(runs[0].result, x, loss, 2 * SMALL[1], 2)
    check_lines_do_not_grow("PadChannelsFunction.backward(grad) (out_channels=2*C, stride=2)", runs,
                            "one zero array and one strided assignment for all images, channels and pixels")


# ---------------------------------------------------------------- residual.basic_block / bottleneck

def oracle_batch_norm_forward(self, x, weight, bias, running_mean, running_var, training, momentum, eps):
    """BatchNormFunction.forward by the tests' loops (batch norm is assignment 3, not this one)."""
    self.kernels, self.training = LoopKernels(), training
    if training:
        mean, var = channel_stats_loop(x)
    else:
        mean, var = running_mean, running_var
    invstd = 1 / np.sqrt(var + eps)
    self.x, self.mean, self.invstd, self.weight, self.has_affine = x, mean, invstd, weight, weight is not None
    return batch_norm_loop(x, mean, invstd, weight, bias).astype(x.dtype)


def oracle_pad_forward(self, x, out_channels, stride):
    self.shape, self.stride = x.shape, stride
    return pad_loop(x, out_channels, stride)


@pytest.fixture
def oracles(monkeypatch):
    use_loop_kernels(monkeypatch)
    monkeypatch.setattr(F.BatchNormFunction, "forward", oracle_batch_norm_forward)
    monkeypatch.setattr(PadChannelsFunction, "forward", oracle_pad_forward)


def randomize(block, seed):
    """Random weights, and batch norms that are far from the identity."""
    rng = np.random.default_rng(seed)
    for name, p in block.named_parameters():
        p.data[...] = rng.standard_normal(p.shape) * (0.3 if p.ndim == 4 else 1.0)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.data[...] = rng.standard_normal(m.num_features)
            m.running_var.data[...] = rng.uniform(0.5, 2.0, m.num_features)
    return block


def conv(m, z):
    return conv2d_loop(z, m.weight.data, m.stride, m.padding)


def bn(m, z, training):
    if training:
        mean, var = channel_stats_loop(z)
    else:
        mean, var = m.running_mean.data, m.running_var.data
    return batch_norm_loop(z, mean, 1 / np.sqrt(var + m.eps), m.weight.data, m.bias.data)


def relu(z):
    return np.maximum(z, 0)


def shortcut(block, x, training):
    d = block.downsample
    if d is None:
        return x
    if isinstance(d, PadChannels):
        return pad_loop(x, d.out_channels, d.stride)
    return bn(d[1], conv(d[0], x), training)


def expected_basic(block, x, training):
    out = relu(bn(block.bn1, conv(block.conv1, x), training))
    out = bn(block.bn2, conv(block.conv2, out), training)
    return relu(out + shortcut(block, x, training)) if block.residual else relu(out)


def expected_bottleneck(block, x, training):
    out = relu(bn(block.bn1, conv(block.conv1, x), training))
    out = relu(bn(block.bn2, conv(block.conv2, out), training))
    out = bn(block.bn3, conv(block.conv3, out), training)
    return relu(out + shortcut(block, x, training)) if block.residual else relu(out)


BLOCK_CASES = [(4, 4, 1, "B", True), (4, 8, 2, "A", True), (4, 8, 2, "B", True), (3, 6, 2, "C", True),
               (4, 8, 2, "B", False)]
BLOCK_IDS = ["identity", "A-stride2", "B-stride2", "C-stride2", "plain"]


def _check_block(block, expected, x_shape, seed, training, what):
    randomize(block, seed)
    block.train(training)
    x = np.random.default_rng(seed + 1).standard_normal(x_shape).astype(np.float32)
    with minires.record_residuals() as records:
        y = block(minires.tensor(x, requires_grad=True))
    if not isinstance(y, minires.Tensor):
        pytest.fail(f"{what}.forward must return a Tensor, got {type(y).__name__}", pytrace=False)
    check_array(y.numpy(), expected(block, x.astype(np.float64), training),
                f"{what}.forward ({'training' if training else 'eval'} mode, input {x_shape})", rtol=1e-4, atol=1e-4)
    ends_in_the_add = len(records) == 1 and records[0].has_shortcut == block.residual
    if block.residual:
        ends_in_the_add = ends_in_the_add and isinstance(y.grad_fn, ResidualAddFunction)
    assert ends_in_the_add, (
        f"{what}.forward must end in F.residual_add(F(x), self.shortcut(x)) (so the gradient records exist); "
        f"it made {len(records)} residual add(s) and its output came from {type(y.grad_fn).__name__}")


@pytest.mark.exercise("residual.basic_block")
@pytest.mark.parametrize("cin, planes, stride, option, residual", BLOCK_CASES, ids=BLOCK_IDS)
def test_basic_block_forward(oracles, cin, planes, stride, option, residual):
    block = BasicBlock(cin, planes, stride, shortcut=option, residual=residual)
    what = f"BasicBlock({cin}, {planes}, stride={stride}, shortcut={option!r}, residual={residual})"
    _check_block(block, expected_basic, (2, cin, 6, 6), 10, False, what)


@pytest.mark.exercise("residual.basic_block")
def test_basic_block_forward_in_training_mode(oracles):
    _check_block(BasicBlock(4, 4), expected_basic, (3, 4, 5, 5), 20, True, "BasicBlock(4, 4)")


@pytest.mark.exercise("residual.bottleneck")
@pytest.mark.parametrize("cin, planes, stride, option, residual", BLOCK_CASES, ids=BLOCK_IDS)
def test_bottleneck_forward(oracles, cin, planes, stride, option, residual):
    cin = cin * 4 if option != "C" and stride == 1 else cin  # identity needs in = planes * 4
    block = Bottleneck(cin, planes, stride, shortcut=option, residual=residual)
    what = f"Bottleneck({cin}, {planes}, stride={stride}, shortcut={option!r}, residual={residual})"
    _check_block(block, expected_bottleneck, (2, cin, 6, 6), 30, False, what)


@pytest.mark.exercise("residual.bottleneck")
def test_bottleneck_forward_with_the_stride_on_the_first_1x1(oracles):
    block = Bottleneck(8, 2, stride=2, stride_on_1x1=True)
    _check_block(block, expected_bottleneck, (2, 8, 6, 6), 40, True, "Bottleneck(8, 2, stride=2, stride_on_1x1)")
