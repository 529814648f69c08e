"""The Numba CUDA kernels under Numba's CUDA simulator, against the NumPy reference, on tiny shapes.

The simulator runs every GPU thread as a Python thread, so these tests need
no GPU, but they are slow per element: the shapes are tiny (N=2, C=2, 5x5).
Numba reads NUMBA_ENABLE_CUDASIM when it is first imported, so this file runs
in its own process:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_kernels_cudasim.py

Without that variable every test here is skipped.
"""
import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("the CUDA simulator tests run in their own process: "
                "NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_kernels_cudasim.py",
                allow_module_level=True)

cuda = pytest.importorskip("numba.cuda", reason="needs numba-cuda (pip install 'minires[numba]')")

from minires import kernels  # noqa: E402
from minires.course import is_removed  # noqa: E402
from minires.kernels import numpy_ref as ref  # noqa: E402

gpu = kernels.load("numba-cuda")


def needs(*names):
    """Skip in a student copy that removed any of these kernels (they would show an exercise's solution)."""
    gone = [n for n in names if is_removed("kernels/numba_cuda.py", n)]
    if gone:
        pytest.skip(f"removed from this student copy: {', '.join(gone)}")

SHAPE = (2, 2, 5, 5)  # N, C, H, W
# (kernel, stride, padding): a padded 3x3, a strided 2x2, an uneven window with uneven stride, and a 1x1
# (a convolution that is a GEMM alone)
WINDOWS = [((3, 3), (1, 1), (1, 1)), ((2, 2), (2, 2), (0, 0)), ((3, 2), (2, 1), (1, 1)), ((1, 1), (1, 1), (0, 0))]


def close(got, want, rtol=1e-5, atol=1e-5):
    got = got.copy_to_host() if hasattr(got, "copy_to_host") else got
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def normal(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("kernel, stride, padding", WINDOWS)
def test_im2col_and_col2im(rng, kernel, stride, padding):
    needs("_im2col_kernel", "_col2im_kernel")
    x = normal(rng, SHAPE)
    close(gpu.im2col(x, *kernel, stride, padding), ref.im2col(x, *kernel, stride, padding))
    cols = normal(rng, ref.im2col(x, *kernel, stride, padding).shape)
    close(gpu.col2im(cols, SHAPE, *kernel, stride, padding), ref.col2im(cols, SHAPE, *kernel, stride, padding))


@pytest.mark.parametrize("kernel, stride, padding", WINDOWS)
def test_conv2d_forward_and_backward(rng, kernel, stride, padding):
    needs("_im2col_kernel", "_col2im_kernel", "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight")
    x, weight = normal(rng, SHAPE), normal(rng, (3, SHAPE[1], *kernel))
    y = ref.conv2d_forward(x, weight, stride, padding)
    grad = normal(rng, y.shape)
    close(gpu.conv2d_forward(x, weight, stride, padding), y)
    close(gpu.conv2d_backward_input(grad, weight, SHAPE, stride, padding),
          ref.conv2d_backward_input(grad, weight, SHAPE, stride, padding))
    close(gpu.conv2d_backward_weight(grad, x, weight.shape, stride, padding),
          ref.conv2d_backward_weight(grad, x, weight.shape, stride, padding))


@pytest.mark.parametrize("relu", [True, False])
def test_residual_add(rng, relu):
    needs("residual_add_backward", "_relu_mask_kernel")
    f, s, grad = normal(rng, SHAPE), normal(rng, SHAPE), normal(rng, SHAPE)
    y = ref.residual_add_forward(f, s, relu)
    close(gpu.residual_add_forward(f, s, relu), y)
    got, want = gpu.residual_add_backward(grad, y, relu), ref.residual_add_backward(grad, y, relu)
    assert len(got) == 2
    close(got[0], want[0])  # into the residual branch
    close(got[1], want[1])  # into the shortcut


@pytest.mark.parametrize("shape", [SHAPE, (3, 2, 9, 7)])  # one part per channel, and several (see _parts)
def test_batch_norm(rng, shape):
    needs("batch_norm_stats", "_bn_stats_kernel", "batch_norm_forward", "_channel_affine_kernel",
          "batch_norm_grad_sums", "_bn_grad_sums_kernel", "batch_norm_backward_input", "_bn_backward_dx_kernel")
    x, grad = normal(rng, shape) + np.float32(50), normal(rng, shape)
    assert shape == SHAPE or gpu._parts(shape[1], shape[0] * shape[2] * shape[3]) > 1
    for got, want in zip(gpu.batch_norm_stats(x), ref.batch_norm_stats(x)):
        close(got, want, rtol=1e-4)
    mean, var = ref.batch_norm_stats(x)
    invstd = (1 / np.sqrt(var + 1e-5)).astype(np.float32)
    scale, shift = invstd * normal(rng, shape[1]), normal(rng, shape[1])
    close(gpu.batch_norm_forward(x, scale, shift), ref.batch_norm_forward(x, scale, shift))
    got, want = gpu.batch_norm_grad_sums(grad, x, mean, invstd), ref.batch_norm_grad_sums(grad, x, mean, invstd)
    assert len(got) == 2
    for g, w in zip(got, want):
        close(g, w, rtol=1e-4, atol=1e-4)
    close(gpu.batch_norm_backward_input(grad, x, mean, invstd, scale, *want),
          ref.batch_norm_backward_input(grad, x, mean, invstd, scale, *want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel, stride, padding", WINDOWS)
def test_pooling(rng, kernel, stride, padding):
    x = rng.permutation(int(np.prod(SHAPE))).reshape(SHAPE).astype(np.float32)  # tie-free
    y, argmax = gpu.max_pool2d_forward(x, kernel, stride, padding)
    want_y, want_argmax = ref.max_pool2d_forward(x, kernel, stride, padding)
    close(y, want_y)
    np.testing.assert_array_equal(argmax, want_argmax)
    grad = normal(rng, want_y.shape)
    close(gpu.max_pool2d_backward(grad, want_argmax, SHAPE, kernel, stride, padding),
          ref.max_pool2d_backward(grad, want_argmax, SHAPE, kernel, stride, padding))
    close(gpu.avg_pool2d_forward(x, kernel, stride, padding), ref.avg_pool2d_forward(x, kernel, stride, padding))
    close(gpu.avg_pool2d_backward(grad, SHAPE, kernel, stride, padding),
          ref.avg_pool2d_backward(grad, SHAPE, kernel, stride, padding))


def test_max_pool_ties_go_to_the_first_tap():
    x = np.zeros(SHAPE, np.float32)
    _, argmax = gpu.max_pool2d_forward(x, (3, 3), (1, 1), (1, 1))
    np.testing.assert_array_equal(argmax, ref.max_pool2d_forward(x, (3, 3), (1, 1), (1, 1))[1])


def test_numba_device_arrays_in_and_out(rng):
    """Device arrays go in, device arrays come out (the GEMM detours through the host without CuPy)."""
    needs("_im2col_kernel", "conv2d_forward", "batch_norm_stats", "_bn_stats_kernel")
    x, weight = normal(rng, SHAPE), normal(rng, (3, SHAPE[1], 3, 3))
    y = gpu.conv2d_forward(cuda.to_device(x), cuda.to_device(weight), (1, 1), (1, 1))
    assert hasattr(y, "copy_to_host")
    close(y, ref.conv2d_forward(x, weight, (1, 1), (1, 1)))
    mean, var = gpu.batch_norm_stats(cuda.to_device(x))
    close(mean, ref.batch_norm_stats(x)[0])
