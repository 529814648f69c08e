"""Assignment 2, convolution: im2col, col2im, conv2d forward and backward, the layer's backward.

Run: pytest -m conv. The oracles are loops over every index (see
exercise_helpers.py), finite differences in float64 and PyTorch when it is
installed. A test of one function replaces the other exercises it calls by
the oracles, so it fails only for the piece it names.
"""
import numpy as np
import pytest

from exercise_helpers import (WINDOW_IDS, WINDOWS, check_array, col2im_loop, conv2d_input_grad_loop, conv2d_loop,
                              conv2d_weight_grad_loop, describe_window, im2col_loop, numerical_gradient,
                              use_loop_kernels)

import minires.functional as F
from minires.kernels import numpy_ref as ref

pytestmark = pytest.mark.conv

SHAPE = (2, 3, 5, 6)  # N, C, H, W: not square, so swapped axes show


def normal(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def patch_im2col(monkeypatch):
    monkeypatch.setattr(ref, "im2col", im2col_loop)
    monkeypatch.setattr(ref, "col2im", col2im_loop)


# ---------------------------------------------------------------- conv.im2col

@pytest.mark.exercise("conv.im2col")
@pytest.mark.parametrize("kernel, stride, padding", WINDOWS, ids=WINDOW_IDS)
def test_im2col_matches_the_loop(kernel, stride, padding):
    x = normal(SHAPE)
    got = ref.im2col(x, *kernel, stride, padding)
    check_array(got, im2col_loop(x, *kernel, stride, padding),
                f"im2col(x of shape {SHAPE}, {describe_window(kernel, stride, padding)})", dtype=np.float32)


@pytest.mark.exercise("conv.im2col")
def test_im2col_keeps_float64():
    x = normal((1, 2, 4, 4), dtype=np.float64)
    check_array(ref.im2col(x, 3, 3, (1, 1), (1, 1)), im2col_loop(x, 3, 3, (1, 1), (1, 1)),
                "im2col of a float64 image", dtype=np.float64)


# ---------------------------------------------------------------- conv.col2im

@pytest.mark.exercise("conv.col2im")
@pytest.mark.parametrize("kernel, stride, padding", WINDOWS, ids=WINDOW_IDS)
def test_col2im_matches_the_loop(kernel, stride, padding):
    cols = normal(im2col_loop(normal(SHAPE), *kernel, stride, padding).shape, seed=1)
    got = ref.col2im(cols, SHAPE, *kernel, stride, padding)
    check_array(got, col2im_loop(cols, SHAPE, *kernel, stride, padding),
                f"col2im(cols of shape {cols.shape}, x_shape {SHAPE}, {describe_window(kernel, stride, padding)})",
                rtol=1e-5, atol=1e-5, dtype=np.float32)


@pytest.mark.exercise("conv.col2im")
def test_col2im_is_the_adjoint_of_im2col():
    """<im2col(x), c> = <x, col2im(c)> for every x and c: what makes it the backward of im2col."""
    x = normal(SHAPE, dtype=np.float64)
    cols = normal(im2col_loop(x, 3, 3, (2, 2), (1, 1)).shape, seed=2, dtype=np.float64)
    left = np.sum(im2col_loop(x, 3, 3, (2, 2), (1, 1)) * cols)
    right = np.sum(x * ref.col2im(cols, SHAPE, 3, 3, (2, 2), (1, 1)))
    assert np.isclose(left, right, rtol=1e-10), (f"<im2col(x), cols> = {left:.10g} but <x, col2im(cols)> = "
                                                 f"{right:.10g}: col2im is not im2col's adjoint")


# ---------------------------------------------------------------- conv.forward

@pytest.mark.exercise("conv.forward")
@pytest.mark.parametrize("kernel, stride, padding", WINDOWS, ids=WINDOW_IDS)
def test_conv2d_forward_matches_the_loop(monkeypatch, kernel, stride, padding):
    patch_im2col(monkeypatch)
    x, weight = normal(SHAPE), normal((4, SHAPE[1]) + kernel, seed=3)
    got = ref.conv2d_forward(x, weight, stride, padding)
    check_array(got, conv2d_loop(x, weight, stride, padding),
                f"conv2d_forward(x {SHAPE}, weight {weight.shape}, {describe_window(kernel, stride, padding)})",
                rtol=1e-4, atol=1e-5, dtype=np.float32)


@pytest.mark.exercise("conv.forward")
def test_conv2d_forward_matches_pytorch(monkeypatch):
    torch = pytest.importorskip("torch")
    patch_im2col(monkeypatch)
    x, weight = normal(SHAPE, dtype=np.float64), normal((4, SHAPE[1], 3, 3), seed=4, dtype=np.float64)
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(weight), stride=2, padding=1).numpy()
    check_array(ref.conv2d_forward(x, weight, (2, 2), (1, 1)), want, "conv2d_forward against PyTorch",
                rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- conv.backward_input / backward_weight

@pytest.mark.exercise("conv.backward_input")
@pytest.mark.parametrize("kernel, stride, padding", WINDOWS, ids=WINDOW_IDS)
def test_conv2d_backward_input_matches_the_loop(monkeypatch, kernel, stride, padding):
    patch_im2col(monkeypatch)
    weight = normal((4, SHAPE[1]) + kernel, seed=5)
    grad = normal(conv2d_loop(normal(SHAPE), weight, stride, padding).shape, seed=6)
    got = ref.conv2d_backward_input(grad, weight, SHAPE, stride, padding)
    check_array(got, conv2d_input_grad_loop(grad, weight, SHAPE, stride, padding),
                f"conv2d_backward_input(grad {grad.shape}, weight {weight.shape}, "
                f"{describe_window(kernel, stride, padding)})", rtol=1e-4, atol=1e-5, dtype=np.float32)


@pytest.mark.exercise("conv.backward_weight")
@pytest.mark.parametrize("kernel, stride, padding", WINDOWS, ids=WINDOW_IDS)
def test_conv2d_backward_weight_matches_the_loop(monkeypatch, kernel, stride, padding):
    patch_im2col(monkeypatch)
    x, wshape = normal(SHAPE), (4, SHAPE[1]) + kernel
    grad = normal(conv2d_loop(x, np.zeros(wshape), stride, padding).shape, seed=7)
    got = ref.conv2d_backward_weight(grad, x, wshape, stride, padding)
    check_array(got, conv2d_weight_grad_loop(grad, x, wshape, stride, padding),
                f"conv2d_backward_weight(grad {grad.shape}, x {SHAPE}, {describe_window(kernel, stride, padding)})",
                rtol=1e-4, atol=1e-4, dtype=np.float32)


def _finite_difference_case():
    x = normal((1, 2, 4, 5), seed=8, dtype=np.float64)
    weight = normal((3, 2, 3, 3), seed=9, dtype=np.float64)
    r = normal(conv2d_loop(x, weight, (2, 1), (1, 1)).shape, seed=10, dtype=np.float64)
    loss = lambda: float(np.sum(conv2d_loop(x, weight, (2, 1), (1, 1)) * r))  # noqa: E731
    return x, weight, r, loss


@pytest.mark.exercise("conv.backward_input")
def test_conv2d_backward_input_matches_finite_differences(monkeypatch):
    patch_im2col(monkeypatch)
    x, weight, r, loss = _finite_difference_case()
    check_array(ref.conv2d_backward_input(r, weight, x.shape, (2, 1), (1, 1)), numerical_gradient(loss, x),
                "conv2d_backward_input against finite differences of sum(conv2d(x) * R)", rtol=1e-6, atol=1e-7)


@pytest.mark.exercise("conv.backward_weight")
def test_conv2d_backward_weight_matches_finite_differences(monkeypatch):
    patch_im2col(monkeypatch)
    x, weight, r, loss = _finite_difference_case()
    check_array(ref.conv2d_backward_weight(r, x, weight.shape, (2, 1), (1, 1)), numerical_gradient(loss, weight),
                "conv2d_backward_weight against finite differences of sum(conv2d(x) * R)", rtol=1e-6, atol=1e-7)


def _torch_conv_gradients():
    """(x, weight, R, dx, dW): PyTorch's gradients of sum(conv2d(x, W, stride (1, 2), padding (1, 0)) * R)."""
    torch = pytest.importorskip("torch")
    x, weight = normal(SHAPE, dtype=np.float64), normal((4, SHAPE[1], 3, 2), seed=11, dtype=np.float64)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(weight, requires_grad=True)
    y = torch.nn.functional.conv2d(tx, tw, stride=(1, 2), padding=(1, 0))
    r = normal(tuple(y.shape), seed=12, dtype=np.float64)
    (y * torch.tensor(r)).sum().backward()
    return x, weight, r, tx.grad.numpy(), tw.grad.numpy()


@pytest.mark.exercise("conv.backward_input")
def test_conv2d_backward_input_matches_pytorch(monkeypatch):
    patch_im2col(monkeypatch)
    _, weight, r, dx, _ = _torch_conv_gradients()
    check_array(ref.conv2d_backward_input(r, weight, SHAPE, (1, 2), (1, 0)), dx,
                "conv2d_backward_input against PyTorch", rtol=1e-10, atol=1e-10)


@pytest.mark.exercise("conv.backward_weight")
def test_conv2d_backward_weight_matches_pytorch(monkeypatch):
    patch_im2col(monkeypatch)
    x, weight, r, _, dw = _torch_conv_gradients()
    check_array(ref.conv2d_backward_weight(r, x, weight.shape, (1, 2), (1, 0)), dw,
                "conv2d_backward_weight against PyTorch", rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- conv.layer_backward

def _conv_function(needs, bias=True):
    x, weight = normal(SHAPE, seed=13, dtype=np.float64), normal((4, SHAPE[1], 3, 3), seed=14, dtype=np.float64)
    b = normal((4,), seed=15, dtype=np.float64) if bias else None
    fn = F.Conv2dFunction()
    fn.needs_input_grad = needs
    y = fn.forward(x, weight, b, (2, 2), (1, 1))
    return fn, x, weight, b, normal(y.shape, seed=16, dtype=np.float64)


@pytest.mark.exercise("conv.layer_backward")
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
