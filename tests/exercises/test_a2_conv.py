"""Assignment 2, convolution: im2col, col2im, conv2d forward and backward, the layer's backward.

Run: pytest -m conv. The oracles are loops over every index (see
exercise_helpers.py), finite differences in float64 and PyTorch when it is
installed. A test of one function replaces the other exercises it calls by
the oracles, so it fails only for the piece it names.

Weights: the five kernels must be vectorised (no Python loop over pixels,
images or channels; a loop over the kh*kw taps is fine), so each has an
``..._is_vectorised`` test that checks the values on a small input and then
counts the Python lines on larger ones. Its two cases weigh together twice
what the exercise's other tests weigh: a correct answer that loops over
pixels (a loop oracle pasted in) earns a third of the points. Among the
other tests the general cases weigh 2, the degenerate ones (a 1x1 kernel,
a dtype check) 1.
"""
import numpy as np
import pytest

from exercise_helpers import (check_array, check_cols, check_image, check_lines_do_not_grow, col2im_loop,
                              conv2d_input_grad_loop, conv2d_loop, conv2d_weight_grad_loop, count_runs,
                              describe_window, im2col_loop, numerical_gradient, shape_text, use_loop_kernels)

import minires.functional as F
from minires.kernels import numpy_ref as ref

pytestmark = pytest.mark.conv

SHAPE = (2, 3, 5, 6)  # N, C, H, W: not square, so swapped axes show

# the general windows; the 1x1 one is degenerate (no tap order to get wrong) and tested apart
WINDOWS = [((3, 3), (1, 1), (1, 1)), ((2, 2), (2, 2), (0, 0)), ((3, 2), (2, 1), (1, 0))]
WINDOW_IDS = ["3x3-s1-p1", "2x2-s2", "3x2-s2x1-p1x0"]
WINDOW_1X1 = ((1, 1), (2, 2), (0, 0))
# the vectorisation checks: two windows (stride 1 with padding; unequal strides and paddings), and three
# inputs: a small one, then more images and pixels, then more channels (and output channels)
VECTOR_WINDOWS, VECTOR_IDS = [WINDOWS[0], WINDOWS[2]], [WINDOW_IDS[0], WINDOW_IDS[2]]
SMALL, MORE_PIXELS, MORE_CHANNELS = (2, 3, 5, 6), (12, 3, 10, 12), (2, 12, 5, 6)
ADVICE = ("work on all images, channels and output positions at once with strided slices of the padded image "
          "(or fancy indexing) and matrix products; a loop over the kh*kw taps is fine")


def normal(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def out_channels(c):
    return 4 * c // 3  # 4 output channels for 3 input channels, 16 for 12: more than the input's, as in SMALL


def conv2d_forward_oracle(x, weight, stride, padding):
    return conv2d_loop(x, weight, stride, padding).astype(x.dtype)


def patch_im2col(monkeypatch):
    monkeypatch.setattr(ref, "im2col", im2col_loop)
    monkeypatch.setattr(ref, "col2im", col2im_loop)


def patch_for_backward(monkeypatch):
    """im2col, col2im and the forward (a stride-1 input gradient may be a convolution) by the loops."""
    patch_im2col(monkeypatch)
    monkeypatch.setattr(ref, "conv2d_forward", conv2d_forward_oracle)


BACKWARD_ORACLES = (im2col_loop, col2im_loop, conv2d_forward_oracle)


def vector_runs(fn, make, exempt=()):
    """``count_runs`` of fn on ``make(x_shape)``'s arguments for the small input, more pixels, more channels.

    ``exempt``: the loop oracles the test put in for other exercises (their lines are not counted);
    never the oracle of the exercise under test.
    """
    inputs = [(f"x of shape {shape_text(shape)}", make(shape), grew)
              for shape, grew in ((SMALL, ""), (MORE_PIXELS, "pixels or images"), (MORE_CHANNELS, "channels"))]
    return inputs[0][1], count_runs(fn, inputs, exempt=exempt)


# ---------------------------------------------------------------- conv.im2col

def check_im2col(got, x, kernel, stride, padding, dtype=np.float32):
    check_cols(got, im2col_loop(x, *kernel, stride, padding),
               f"im2col(x of shape {x.shape}, {describe_window(kernel, stride, padding)})", x.shape, kernel,
               stride, padding, dtype=dtype)


@pytest.mark.exercise("conv.im2col", weight=2)
@pytest.mark.parametrize("kernel, stride, padding", WINDOWS, ids=WINDOW_IDS)
def test_im2col_matches_the_loop(kernel, stride, padding):
    x = normal(SHAPE)
    check_im2col(ref.im2col(x, *kernel, stride, padding), x, kernel, stride, padding)


@pytest.mark.exercise("conv.im2col")
def test_im2col_of_a_1x1_kernel():
    x = normal(SHAPE)
    check_im2col(ref.im2col(x, *WINDOW_1X1[0], *WINDOW_1X1[1:]), x, *WINDOW_1X1)


@pytest.mark.exercise("conv.im2col")
def test_im2col_keeps_float64():
    x = normal((1, 2, 4, 4), dtype=np.float64)
    check_im2col(ref.im2col(x, 3, 3, (1, 1), (1, 1)), x, (3, 3), (1, 1), (1, 1), dtype=np.float64)


@pytest.mark.exercise("conv.im2col", weight=8)
@pytest.mark.parametrize("kernel, stride, padding", VECTOR_WINDOWS, ids=VECTOR_IDS)
def test_im2col_is_vectorised(kernel, stride, padding):
    (x, *_), runs = vector_runs(ref.im2col, lambda shape: (normal(shape), *kernel, stride, padding))
    check_im2col(runs[0].result, x, kernel, stride, padding)
    check_lines_do_not_grow(f"im2col(x, {describe_window(kernel, stride, padding)})", runs, ADVICE)


# ---------------------------------------------------------------- conv.col2im

def check_col2im(got, cols, x_shape, kernel, stride, padding):
    reads = col2im_loop(np.ones(cols.shape), x_shape, *kernel, stride, padding)  # how many taps read each pixel
    check_image(got, col2im_loop(cols, x_shape, *kernel, stride, padding),
                f"col2im(cols of shape {cols.shape}, x_shape {x_shape}, {describe_window(kernel, stride, padding)})",
                rtol=1e-5, atol=1e-5, dtype=cols.dtype, overlaps=reads > 1)


def random_cols(x_shape, kernel, stride, padding, seed=1, dtype=np.float32):
    return normal(im2col_loop(np.zeros(x_shape), *kernel, stride, padding).shape, seed=seed, dtype=dtype)


@pytest.mark.exercise("conv.col2im", weight=2)
@pytest.mark.parametrize("kernel, stride, padding", WINDOWS, ids=WINDOW_IDS)
def test_col2im_matches_the_loop(kernel, stride, padding):
    cols = random_cols(SHAPE, kernel, stride, padding)
    check_col2im(ref.col2im(cols, SHAPE, *kernel, stride, padding), cols, SHAPE, kernel, stride, padding)


@pytest.mark.exercise("conv.col2im")
def test_col2im_of_a_1x1_kernel():
    cols = random_cols(SHAPE, *WINDOW_1X1)
    check_col2im(ref.col2im(cols, SHAPE, *WINDOW_1X1[0], *WINDOW_1X1[1:]), cols, SHAPE, *WINDOW_1X1)


@pytest.mark.exercise("conv.col2im", weight=2)
def test_col2im_is_the_adjoint_of_im2col():
    """<im2col(x), c> = <x, col2im(c)> for every x and c: what makes it the backward of im2col."""
    x = normal(SHAPE, dtype=np.float64)
    cols = normal(im2col_loop(x, 3, 3, (2, 2), (1, 1)).shape, seed=2, dtype=np.float64)
    left = np.sum(im2col_loop(x, 3, 3, (2, 2), (1, 1)) * cols)
    right = np.sum(x * ref.col2im(cols, SHAPE, 3, 3, (2, 2), (1, 1)))
    assert np.isclose(left, right, rtol=1e-10), (f"<im2col(x), cols> = {left:.10g} but <x, col2im(cols)> = "
                                                 f"{right:.10g}: col2im is not im2col's adjoint")


@pytest.mark.exercise("conv.col2im", weight=9)
@pytest.mark.parametrize("kernel, stride, padding", VECTOR_WINDOWS, ids=VECTOR_IDS)
def test_col2im_is_vectorised(kernel, stride, padding):
    def make(shape):
        return random_cols(shape, kernel, stride, padding), shape, *kernel, stride, padding

    (cols, *_), runs = vector_runs(ref.col2im, make)
    check_col2im(runs[0].result, cols, SMALL, kernel, stride, padding)
    check_lines_do_not_grow(f"col2im(cols, x_shape, {describe_window(kernel, stride, padding)})", runs, ADVICE)


# ---------------------------------------------------------------- conv.forward

def check_forward(got, x, weight, stride, padding, rtol=1e-4, atol=1e-5, dtype=np.float32, what=None):
    window = describe_window(weight.shape[2:], stride, padding)
    check_image(got, conv2d_loop(x, weight, stride, padding),
                what or f"conv2d_forward(x {x.shape}, weight {weight.shape}, {window})",
                names=("image", "output channel", "output"), rtol=rtol, atol=atol, dtype=dtype)


@pytest.mark.exercise("conv.forward", weight=2)
@pytest.mark.parametrize("kernel, stride, padding", WINDOWS, ids=WINDOW_IDS)
def test_conv2d_forward_matches_the_loop(monkeypatch, kernel, stride, padding):
    patch_im2col(monkeypatch)
    x, weight = normal(SHAPE), normal((4, SHAPE[1]) + kernel, seed=3)
    check_forward(ref.conv2d_forward(x, weight, stride, padding), x, weight, stride, padding)


@pytest.mark.exercise("conv.forward")
def test_conv2d_forward_of_a_1x1_kernel(monkeypatch):
    patch_im2col(monkeypatch)
    kernel, stride, padding = WINDOW_1X1
    x, weight = normal(SHAPE), normal((4, SHAPE[1]) + kernel, seed=3)
    check_forward(ref.conv2d_forward(x, weight, stride, padding), x, weight, stride, padding)


@pytest.mark.exercise("conv.forward", weight=2)
def test_conv2d_forward_matches_pytorch(monkeypatch):
    torch = pytest.importorskip("torch")
    patch_im2col(monkeypatch)
    x, weight = normal(SHAPE, dtype=np.float64), normal((4, SHAPE[1], 3, 3), seed=4, dtype=np.float64)
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(weight), stride=2, padding=1).numpy()
    check_image(ref.conv2d_forward(x, weight, (2, 2), (1, 1)), want, "conv2d_forward against PyTorch",
                names=("image", "output channel", "output"), rtol=1e-10, atol=1e-10)


@pytest.mark.exercise("conv.forward", weight=9)
@pytest.mark.parametrize("kernel, stride, padding", VECTOR_WINDOWS, ids=VECTOR_IDS)
def test_conv2d_forward_is_vectorised(monkeypatch, kernel, stride, padding):
    patch_im2col(monkeypatch)

    def make(shape):
        return normal(shape), normal((out_channels(shape[1]), shape[1]) + kernel, seed=3), stride, padding

    (x, weight, *_), runs = vector_runs(ref.conv2d_forward, make, exempt=(im2col_loop, col2im_loop))
    check_forward(runs[0].result, x, weight, stride, padding)
    check_lines_do_not_grow(f"conv2d_forward(x, weight, {describe_window(kernel, stride, padding)})", runs, ADVICE)


# ---------------------------------------------------------------- conv.backward_input / backward_weight

def grad_for(x_shape, weight_shape, stride, padding, seed):
    return normal(conv2d_loop(np.zeros(x_shape), np.zeros(weight_shape), stride, padding).shape, seed=seed)


def check_backward_input(got, grad, weight, x_shape, stride, padding):
    check_image(got, conv2d_input_grad_loop(grad, weight, x_shape, stride, padding),
                f"conv2d_backward_input(grad {grad.shape}, weight {weight.shape}, "
                f"{describe_window(weight.shape[2:], stride, padding)})", rtol=1e-4, atol=1e-5, dtype=np.float32)


def check_backward_weight(got, grad, x, weight_shape, stride, padding):
    check_image(got, conv2d_weight_grad_loop(grad, x, weight_shape, stride, padding),
                f"conv2d_backward_weight(grad {grad.shape}, x {x.shape}, "
                f"{describe_window(weight_shape[2:], stride, padding)})", names=("output channel", "channel", "tap"),
                rtol=1e-4, atol=1e-4, dtype=np.float32)


@pytest.mark.exercise("conv.backward_input", weight=2)
@pytest.mark.parametrize("kernel, stride, padding", WINDOWS, ids=WINDOW_IDS)
def test_conv2d_backward_input_matches_the_loop(monkeypatch, kernel, stride, padding):
    patch_for_backward(monkeypatch)
    weight = normal((4, SHAPE[1]) + kernel, seed=5)
    grad = grad_for(SHAPE, weight.shape, stride, padding, seed=6)
    got = ref.conv2d_backward_input(grad, weight, SHAPE, stride, padding)
    check_backward_input(got, grad, weight, SHAPE, stride, padding)


@pytest.mark.exercise("conv.backward_input")
def test_conv2d_backward_input_of_a_1x1_kernel(monkeypatch):
    patch_for_backward(monkeypatch)
    kernel, stride, padding = WINDOW_1X1
    weight = normal((4, SHAPE[1]) + kernel, seed=5)
    grad = grad_for(SHAPE, weight.shape, stride, padding, seed=6)
    got = ref.conv2d_backward_input(grad, weight, SHAPE, stride, padding)
    check_backward_input(got, grad, weight, SHAPE, stride, padding)


@pytest.mark.exercise("conv.backward_weight", weight=2)
@pytest.mark.parametrize("kernel, stride, padding", WINDOWS, ids=WINDOW_IDS)
def test_conv2d_backward_weight_matches_the_loop(monkeypatch, kernel, stride, padding):
    patch_for_backward(monkeypatch)
    x, wshape = normal(SHAPE), (4, SHAPE[1]) + kernel
    grad = grad_for(SHAPE, wshape, stride, padding, seed=7)
    check_backward_weight(ref.conv2d_backward_weight(grad, x, wshape, stride, padding), grad, x, wshape, stride,
                          padding)


@pytest.mark.exercise("conv.backward_weight")
def test_conv2d_backward_weight_of_a_1x1_kernel(monkeypatch):
    patch_for_backward(monkeypatch)
    kernel, stride, padding = WINDOW_1X1
    x, wshape = normal(SHAPE), (4, SHAPE[1]) + kernel
    grad = grad_for(SHAPE, wshape, stride, padding, seed=7)
    check_backward_weight(ref.conv2d_backward_weight(grad, x, wshape, stride, padding), grad, x, wshape, stride,
                          padding)


def _finite_difference_case():
    x = normal((1, 2, 4, 5), seed=8, dtype=np.float64)
    weight = normal((3, 2, 3, 3), seed=9, dtype=np.float64)
    r = normal(conv2d_loop(x, weight, (2, 1), (1, 1)).shape, seed=10, dtype=np.float64)
    loss = lambda: float(np.sum(conv2d_loop(x, weight, (2, 1), (1, 1)) * r))  # noqa: E731
    return x, weight, r, loss


@pytest.mark.exercise("conv.backward_input", weight=2)
def test_conv2d_backward_input_matches_finite_differences(monkeypatch):
    patch_for_backward(monkeypatch)
    x, weight, r, loss = _finite_difference_case()
    check_image(ref.conv2d_backward_input(r, weight, x.shape, (2, 1), (1, 1)), numerical_gradient(loss, x),
                "conv2d_backward_input against finite differences of sum(conv2d(x) * R)", rtol=1e-6, atol=1e-7)


@pytest.mark.exercise("conv.backward_weight", weight=2)
def test_conv2d_backward_weight_matches_finite_differences(monkeypatch):
    patch_for_backward(monkeypatch)
    x, weight, r, loss = _finite_difference_case()
    check_image(ref.conv2d_backward_weight(r, x, weight.shape, (2, 1), (1, 1)), numerical_gradient(loss, weight),
                "conv2d_backward_weight against finite differences of sum(conv2d(x) * R)",
                names=("output channel", "channel", "tap"), rtol=1e-6, atol=1e-7)


def _torch_conv_gradients():
    """(x, weight, R, dx, dW): PyTorch's gradients of sum(conv2d(x, W, stride (1, 2), padding (1, 0)) * R)."""
    torch = pytest.importorskip("torch")
    x, weight = normal(SHAPE, dtype=np.float64), normal((4, SHAPE[1], 3, 2), seed=11, dtype=np.float64)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(weight, requires_grad=True)
    y = torch.nn.functional.conv2d(tx, tw, stride=(1, 2), padding=(1, 0))
    r = normal(tuple(y.shape), seed=12, dtype=np.float64)
    (y * torch.tensor(r)).sum().backward()
    return x, weight, r, tx.grad.numpy(), tw.grad.numpy()


@pytest.mark.exercise("conv.backward_input", weight=2)
def test_conv2d_backward_input_matches_pytorch(monkeypatch):
    patch_for_backward(monkeypatch)
    _, weight, r, dx, _ = _torch_conv_gradients()
    check_image(ref.conv2d_backward_input(r, weight, SHAPE, (1, 2), (1, 0)), dx,
                "conv2d_backward_input against PyTorch", rtol=1e-10, atol=1e-10)


@pytest.mark.exercise("conv.backward_weight", weight=2)
def test_conv2d_backward_weight_matches_pytorch(monkeypatch):
    patch_for_backward(monkeypatch)
    x, weight, r, _, dw = _torch_conv_gradients()
    check_image(ref.conv2d_backward_weight(r, x, weight.shape, (1, 2), (1, 0)), dw,
                "conv2d_backward_weight against PyTorch", names=("output channel", "channel", "tap"),
                rtol=1e-10, atol=1e-10)


@pytest.mark.exercise("conv.backward_input", weight=11)
@pytest.mark.parametrize("kernel, stride, padding", VECTOR_WINDOWS, ids=VECTOR_IDS)
def test_conv2d_backward_input_is_vectorised(monkeypatch, kernel, stride, padding):
    patch_for_backward(monkeypatch)

    def make(shape):
        weight = normal((out_channels(shape[1]), shape[1]) + kernel, seed=5)
        return grad_for(shape, weight.shape, stride, padding, seed=6), weight, shape, stride, padding

    (grad, weight, *_), runs = vector_runs(ref.conv2d_backward_input, make, exempt=BACKWARD_ORACLES)
    check_backward_input(runs[0].result, grad, weight, SMALL, stride, padding)
    check_lines_do_not_grow(f"conv2d_backward_input(grad, weight, x_shape, "
                            f"{describe_window(kernel, stride, padding)})", runs, ADVICE)


@pytest.mark.exercise("conv.backward_weight", weight=11)
@pytest.mark.parametrize("kernel, stride, padding", VECTOR_WINDOWS, ids=VECTOR_IDS)
def test_conv2d_backward_weight_is_vectorised(monkeypatch, kernel, stride, padding):
    patch_for_backward(monkeypatch)

    def make(shape):
        wshape = (out_channels(shape[1]), shape[1]) + kernel
        return grad_for(shape, wshape, stride, padding, seed=7), normal(shape), wshape, stride, padding

    (grad, x, wshape, *_), runs = vector_runs(ref.conv2d_backward_weight, make, exempt=BACKWARD_ORACLES)
    check_backward_weight(runs[0].result, grad, x, wshape, stride, padding)
    check_lines_do_not_grow(f"conv2d_backward_weight(grad, x, weight_shape, "
                            f"{describe_window(kernel, stride, padding)})", runs, ADVICE)


# ---------------------------------------------------------------- conv.layer_backward

def _conv_function(needs, bias=True):
    x, weight = normal(SHAPE, seed=13, dtype=np.float64), normal((4, SHAPE[1], 3, 3), seed=14, dtype=np.float64)
    b = normal((4,), seed=15, dtype=np.float64) if bias else None
    fn = F.Conv2dFunction()
    fn.needs_input_grad = needs
    y = fn.forward(x, weight, b, (2, 2), (1, 1))
    return fn, x, weight, b, normal(y.shape, seed=16, dtype=np.float64)


@pytest.mark.exercise("conv.layer_backward", weight=3)  # the three gradients' values, as much as the three cases below
def test_conv_layer_backward_gives_all_three_gradients(monkeypatch):
    use_loop_kernels(monkeypatch)
    fn, x, weight, b, r = _conv_function((True, True, True))
    grads = fn.backward(r)
    if not isinstance(grads, tuple) or len(grads) != 3:
        pytest.fail("Conv2dFunction.backward must return a triple (dx, dw, db)", pytrace=False)
    dx, dw, db = grads
    check_array(dx, conv2d_input_grad_loop(r, weight, SHAPE, (2, 2), (1, 1)), "Conv2dFunction.backward's dx")
    check_array(dw, conv2d_weight_grad_loop(r, x, weight.shape, (2, 2), (1, 1)), "Conv2dFunction.backward's dw")
    loss = lambda: float(np.sum((conv2d_loop(x, weight, (2, 2), (1, 1)) + b[None, :, None, None]) * r))  # noqa
    check_array(db, numerical_gradient(loss, b), "Conv2dFunction.backward's db (the bias gradient)", rtol=1e-6, atol=1e-6)


@pytest.mark.exercise("conv.layer_backward")
@pytest.mark.parametrize("needs, bias", [((True, False, False), True), ((False, True, False), True),
                                         ((True, True, False), False)], ids=["x-only", "weight-only", "no-bias"])
def test_conv_layer_backward_computes_only_what_is_needed(monkeypatch, needs, bias):
    kernels = use_loop_kernels(monkeypatch)
    fn, *_, r = _conv_function(needs, bias)
    kernels.calls.clear()
    dx, dw, db = fn.backward(r)
    names = ("dx", "dw", "db")
    for name, need, g in zip(names, needs, (dx, dw, db)):
        if not need and g is not None:
            pytest.fail(f"Conv2dFunction.backward returned {name} although needs_input_grad={needs} "
                        f"(bias {'given' if bias else 'absent'}): return None there", pytrace=False)
        if need and g is None:
            pytest.fail(f"Conv2dFunction.backward returned None for {name} although needs_input_grad={needs}", pytrace=False)
    wasted = [c for c, need in (("conv2d_backward_input", needs[0]), ("conv2d_backward_weight", needs[1]))
              if not need and c in kernels.calls]
    assert not wasted, f"Conv2dFunction.backward called {wasted} although needs_input_grad={needs}: skip unneeded work"
