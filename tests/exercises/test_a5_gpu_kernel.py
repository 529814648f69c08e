"""Assignment 5, a GPU kernel: im2col, col2im and the residual add's kernels in kernels/numba_cuda.py.

The kernels are launched directly, on tiny arrays, under Numba's CUDA
simulator (every GPU thread a Python thread: no GPU needed). Numba reads the
switch once, when it is imported, so these tests run in a process of their own:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/exercises/test_a5_gpu_kernel.py

``pytest -m gpu_kernel`` does that for you (tests/exercises/test_a5_gpu_kernel_process.py).
Without the variable every test here is skipped.
"""
import math
import os

import numpy as np
import pytest

from exercise_helpers import WINDOW_IDS, WINDOWS, check_array, col2im_loop, describe_window, im2col_loop, out_size

pytestmark = pytest.mark.gpu_kernel

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("the GPU kernel exercises run under the CUDA simulator in their own process: "
                "NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/exercises/test_a5_gpu_kernel.py",
                allow_module_level=True)

pytest.importorskip("numba.cuda", reason="needs numba-cuda (pip install 'minires[numba]')")

from minires import kernels  # noqa: E402
from minires.course import is_removed  # noqa: E402

gpu = kernels.load("numba-cuda")
SHAPE = (2, 2, 4, 5)  # N, C, H, W: tiny, the simulator runs a Python thread per GPU thread
CUDA = "kernels/numba_cuda.py"


def launch(kernel_name, size, *args):
    """Run kernel ``kernel_name`` with at least ``size`` threads (whole blocks: some threads are past the end)."""
    if is_removed(CUDA, kernel_name):
        pytest.skip(f"{kernel_name} is removed from this student copy (another assignment's solution)")
    threads = gpu.THREADS
    getattr(gpu, kernel_name)[max(1, math.ceil(size / threads)) + 1, threads](*args)


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- gpu.im2col

@pytest.mark.exercise("gpu.im2col")
@pytest.mark.parametrize("kernel, stride, padding", WINDOWS, ids=WINDOW_IDS)
def test_im2col_kernel_matches_the_loop(kernel, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    x = normal(SHAPE)
    oh, ow = out_size(SHAPE[2], kh, sh, ph), out_size(SHAPE[3], kw, sw, pw)
    cols = np.full((SHAPE[1] * kh * kw, SHAPE[0] * oh * ow), np.nan, dtype=np.float32)  # NaN: never written
    launch("_im2col_kernel", cols.size, x, kh, kw, sh, sw, ph, pw, oh, ow, cols)
    check_array(cols, im2col_loop(x, kh, kw, stride, padding),
                f"cols written by _im2col_kernel for x {SHAPE}, {describe_window(kernel, stride, padding)} "
                "(NaN: an element no thread wrote)")


# ---------------------------------------------------------------- gpu.col2im

@pytest.mark.exercise("gpu.col2im")
@pytest.mark.parametrize("kernel, stride, padding", WINDOWS, ids=WINDOW_IDS)
def test_col2im_kernel_matches_the_loop(kernel, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = out_size(SHAPE[2], kh, sh, ph), out_size(SHAPE[3], kw, sw, pw)
    cols = normal((SHAPE[1] * kh * kw, SHAPE[0] * oh * ow), seed=1)
    x = np.full(SHAPE, np.nan, dtype=np.float32)
    launch("_col2im_kernel", x.size, cols, kh, kw, sh, sw, ph, pw, oh, ow, x)
    check_array(x, col2im_loop(cols, SHAPE, kh, kw, stride, padding),
                f"the image written by _col2im_kernel, {describe_window(kernel, stride, padding)} "
                "(NaN: a pixel no thread wrote)", rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- gpu.residual_forward / residual_backward

@pytest.mark.exercise("gpu.residual_forward")
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no-relu"])
def test_residual_add_kernel(relu):
    f, s = normal(37, seed=2), normal(37, seed=3)  # 37: not a multiple of the block size
    y = np.full(37, np.nan, dtype=np.float32)
    launch("_residual_add_kernel", y.size, f, s, relu, y)
    want = np.array([max(a + b, 0.0) if relu else a + b for a, b in zip(f.tolist(), s.tolist())])
    check_array(y, want, f"y written by _residual_add_kernel(relu={relu})")


@pytest.mark.exercise("gpu.residual_backward")
def test_relu_mask_kernel_matches_finite_differences():
    rng = np.random.default_rng(4)
    z = rng.standard_normal(45)
    z += np.where(np.abs(z) < 0.05, 0.2, 0)  # away from the kink
    grad = rng.standard_normal(45).astype(np.float32)
    y = np.maximum(z, 0).astype(np.float32)
    g = np.full(45, np.nan, dtype=np.float32)
    launch("_relu_mask_kernel", g.size, grad, y, g)
    h = 1e-4
    slope = (np.maximum(z + h, 0) - np.maximum(z - h, 0)) / (2 * h)  # d relu(z) / dz, numerically
    check_array(g, grad * slope, "g written by _relu_mask_kernel: the gradient through y = relu(f + s)",
                rtol=1e-5, atol=1e-6)
