"""Assignment 3, batch norm: statistics, normalisation, the op's forward in training and eval, the backward.

Run: pytest -m batchnorm. Gradients are checked against finite differences
in float64 of sum(y * R) for a fixed random R (never plain sum(y): its
gradient through batch norm is identically zero, so a wrong backward would
pass), and against PyTorch when it is installed.

Weights: the four kernels must be vectorised (no Python loop over images,
pixels or channels), so each has a ``..._is_vectorised`` test that checks
the values on a small input and counts the Python lines on larger ones. It
weighs twice what the exercise's other tests weigh together: a correct
answer that loops (the tests' per-channel loops pasted in) earns a third of
the points. Among the other tests the general cases weigh 2, batches of
1x1 images 1.
"""
import numpy as np
import pytest

from exercise_helpers import (batch_norm_loop, batch_norm_train_loop, channel_stats_loop, check_array,
                              check_lines_do_not_grow, count_runs, numerical_gradient, shape_text, use_loop_kernels)

import minires.functional as F
from minires.kernels import numpy_ref as ref

pytestmark = pytest.mark.batchnorm

SHAPE = (3, 4, 3, 5)  # N, C, H, W
EPS = 1e-5


def normal(shape, seed=0, dtype=np.float32, loc=0.0, scale=1.0):
    return (loc + scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


# the vectorisation checks' inputs: a small one, then more images and pixels, then more channels
SMALL, MORE_PIXELS, MORE_CHANNELS = (2, 3, 3, 4), (12, 3, 6, 8), (2, 12, 3, 4)
ADVICE = "reduce over the axes (0, 2, 3) and broadcast per-channel arrays with [None, :, None, None]; no Python loop"


def vector_runs(fn, make):
    """``count_runs`` of fn on ``make(x_shape)``'s arguments for the small input, more pixels, more channels."""
    inputs = [(f"x of shape {shape_text(shape)}", make(shape), grew)
              for shape, grew in ((SMALL, ""), (MORE_PIXELS, "pixels or images"), (MORE_CHANNELS, "channels"))]
    return inputs[0][1], count_runs(fn, inputs)


# ---------------------------------------------------------------- bn.stats

@pytest.mark.exercise("bn.stats", weight=2)
def test_batch_norm_stats_match_the_loop():
    x = normal(SHAPE, loc=3.0, scale=2.0)
    got = ref.batch_norm_stats(x)
    assert isinstance(got, tuple) and len(got) == 2, "batch_norm_stats must return a pair (mean, var)"
    want_mean, want_var = channel_stats_loop(x)
    check_array(got[0], want_mean, f"the mean of batch_norm_stats(x of shape {SHAPE})", rtol=1e-5, dtype=np.float32)
    check_array(got[1], want_var, f"the variance of batch_norm_stats(x of shape {SHAPE}) (biased: / N*H*W)",
                rtol=1e-4, dtype=np.float32)


@pytest.mark.exercise("bn.stats")
def test_batch_norm_stats_of_one_pixel_images():
    x = normal((6, 2, 1, 1), seed=1, dtype=np.float64)
    mean, var = ref.batch_norm_stats(x)
    want_mean, want_var = channel_stats_loop(x)
    check_array(mean, want_mean, "the mean over a batch of 1x1 images", dtype=np.float64)
    check_array(var, want_var, "the variance over a batch of 1x1 images", dtype=np.float64)


@pytest.mark.exercise("bn.stats", weight=6)
def test_batch_norm_stats_is_vectorised():
    (x,), runs = vector_runs(ref.batch_norm_stats, lambda shape: (normal(shape, loc=3.0, scale=2.0),))
    got = runs[0].result
    assert isinstance(got, tuple) and len(got) == 2, "batch_norm_stats must return a pair (mean, var)"
    want_mean, want_var = channel_stats_loop(x)
    check_array(got[0], want_mean, f"the mean of batch_norm_stats(x of shape {x.shape})", rtol=1e-5, dtype=np.float32)
    check_array(got[1], want_var, f"the variance of batch_norm_stats(x of shape {x.shape})", rtol=1e-4,
                dtype=np.float32)
    check_lines_do_not_grow("batch_norm_stats(x)", runs, ADVICE)


# ---------------------------------------------------------------- bn.normalize

def affine_loop(x, scale, shift):
    """y[:, c] = x[:, c] * scale[c] + shift[c], channel by channel in float64."""
    y = np.zeros(x.shape)
    for ch in range(x.shape[1]):
        y[:, ch] = x[:, ch].astype(np.float64) * float(scale[ch]) + float(shift[ch])
    return y


def affine_case(shape):
    return normal(shape, seed=2), normal((shape[1],), seed=3), normal((shape[1],), seed=4)


def check_affine(got, x, scale, shift):
    check_array(got, affine_loop(x, scale, shift), f"batch_norm_forward(x of shape {x.shape}, scale, shift)",
                rtol=1e-5, atol=1e-5, dtype=np.float32)


@pytest.mark.exercise("bn.normalize", weight=2)
def test_batch_norm_forward_matches_the_loop():
    x, scale, shift = affine_case(SHAPE)
    check_affine(ref.batch_norm_forward(x, scale, shift), x, scale, shift)


@pytest.mark.exercise("bn.normalize")
def test_batch_norm_forward_of_one_pixel_images():
    x, scale, shift = affine_case((5, 3, 1, 1))
    check_affine(ref.batch_norm_forward(x, scale, shift), x, scale, shift)


@pytest.mark.exercise("bn.normalize", weight=6)
def test_batch_norm_forward_is_vectorised():
    (x, scale, shift), runs = vector_runs(ref.batch_norm_forward, affine_case)
    check_affine(runs[0].result, x, scale, shift)
    check_lines_do_not_grow("batch_norm_forward(x, scale, shift)", runs, ADVICE)


# ---------------------------------------------------------------- bn.forward

def _run_forward(monkeypatch, training, with_running=True, momentum=0.1):
    use_loop_kernels(monkeypatch)
    x = normal(SHAPE, seed=7, dtype=np.float64, loc=1.0, scale=3.0)
    weight, bias = normal((4,), seed=8, dtype=np.float64), normal((4,), seed=9, dtype=np.float64)
    rm = normal((4,), seed=10, dtype=np.float64) if with_running else None
    rv = np.abs(normal((4,), seed=11, dtype=np.float64)) + 0.5 if with_running else None
    before = (None if rm is None else rm.copy(), None if rv is None else rv.copy())
    y = F.BatchNormFunction().forward(x, weight, bias, rm, rv, training, momentum, EPS)
    return x, weight, bias, rm, rv, before, y


@pytest.mark.exercise("bn.forward")
def test_training_forward_normalises_with_the_batch_statistics(monkeypatch):
    x, weight, bias, _, _, _, y = _run_forward(monkeypatch, training=True)
    check_array(y, batch_norm_train_loop(x, weight, bias, EPS), "BatchNorm.forward in training mode", rtol=1e-6)


@pytest.mark.exercise("bn.forward")
def test_training_forward_updates_the_running_statistics_in_place(monkeypatch):
    x, _, _, rm, rv, (rm0, rv0), _ = _run_forward(monkeypatch, training=True, momentum=0.3)
    mean, var = channel_stats_loop(x)
    m = x.size // x.shape[1]
    check_array(rm, 0.7 * rm0 + 0.3 * mean, "running_mean after one training step (updated in place, momentum 0.3)")
    check_array(rv, 0.7 * rv0 + 0.3 * var * m / (m - 1),
                "running_var after one training step (in place; the unbiased variance, * M / (M - 1))")


@pytest.mark.exercise("bn.forward")
def test_training_forward_without_running_statistics(monkeypatch):
    x, weight, bias, _, _, _, y = _run_forward(monkeypatch, training=True, with_running=False)
    check_array(y, batch_norm_train_loop(x, weight, bias, EPS),
                "BatchNorm.forward in training mode with running_mean=running_var=None", rtol=1e-6)


@pytest.mark.exercise("bn.forward")
def test_eval_forward_uses_the_running_statistics_and_keeps_them(monkeypatch):
    x, weight, bias, rm, rv, (rm0, rv0), y = _run_forward(monkeypatch, training=False)
    check_array(y, batch_norm_loop(x, rm0, 1 / np.sqrt(rv0 + EPS), weight, bias),
                "BatchNorm.forward in eval mode (normalised by the running statistics)", rtol=1e-6)
    check_array(rm, rm0, "running_mean after an eval step (must not change)")
    check_array(rv, rv0, "running_var after an eval step (must not change)")


@pytest.mark.exercise("bn.forward")
def test_forward_matches_pytorch(monkeypatch):
    torch = pytest.importorskip("torch")
    x, weight, bias, rm, rv, (rm0, rv0), y = _run_forward(monkeypatch, training=True)
    trm, trv = torch.tensor(rm0), torch.tensor(rv0)
    want = torch.nn.functional.batch_norm(torch.tensor(x), trm, trv, torch.tensor(weight), torch.tensor(bias),
                                          training=True, momentum=0.1, eps=EPS)
    check_array(y, want.numpy(), "BatchNorm.forward in training mode against PyTorch", rtol=1e-8, atol=1e-10)
    check_array(rm, trm.numpy(), "running_mean against PyTorch's", rtol=1e-10)
    check_array(rv, trv.numpy(), "running_var against PyTorch's", rtol=1e-10)


# ---------------------------------------------------------------- bn.grad_sums and bn.backward

def _backward_case(training, affine=True, shape=(2, 3, 3, 4)):
    """x, weight, bias, R, the statistics and the loss sum(batch_norm(x) * R) as a function of no arguments."""
    x = normal(shape, seed=12, dtype=np.float64, loc=0.5, scale=2.0)
    c = shape[1]
    weight = normal((c,), seed=13, dtype=np.float64) if affine else None
    bias = normal((c,), seed=14, dtype=np.float64)
    r = normal(shape, seed=15, dtype=np.float64)
    if training:
        def loss():
            return float(np.sum(batch_norm_train_loop(x, weight, bias, EPS) * r))
        mean, var = channel_stats_loop(x)
    else:
        mean, var = normal((c,), seed=16, dtype=np.float64), np.abs(normal((c,), seed=17, dtype=np.float64)) + 0.3

        def loss():
            return float(np.sum(batch_norm_loop(x, mean, 1 / np.sqrt(var + EPS), weight, bias) * r))
    return x, weight, bias, r, mean, 1 / np.sqrt(var + EPS), loss


def _grad_sums(r, x, mean, invstd):
    got = ref.batch_norm_grad_sums(r, x, mean, invstd)
    if not isinstance(got, tuple) or len(got) != 2:
        pytest.fail("batch_norm_grad_sums must return a pair (dbias, dweight)", pytrace=False)
    return got


def _sums_loop(r, x, mean, invstd):
    """(sum(dy), sum(dy * xhat)) per channel, by the tests' own loop: what batch_norm_backward_input is given."""
    dbias, dweight = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for ch in range(x.shape[1]):
        dbias[ch] = r[:, ch].sum()
        dweight[ch] = (r[:, ch] * (x[:, ch] - mean[ch]) * invstd[ch]).sum()
    return dbias, dweight


@pytest.mark.exercise("bn.grad_sums", weight=2)
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_batch_norm_grad_sums_match_finite_differences(training):
    x, weight, bias, r, mean, invstd, loss = _backward_case(training)
    dbias, dweight = _grad_sums(r, x, mean, invstd)
    mode = "training" if training else "eval"
    check_array(dweight, numerical_gradient(loss, weight), f"dweight of batch_norm_grad_sums in {mode} mode "
                "(against finite differences of sum(y * R))", rtol=1e-5, atol=1e-6)
    check_array(dbias, numerical_gradient(loss, bias), f"dbias of batch_norm_grad_sums in {mode} mode",
                rtol=1e-5, atol=1e-6)


@pytest.mark.exercise("bn.grad_sums")
def test_batch_norm_grad_sums_of_one_pixel_images():
    x, weight, bias, r, mean, invstd, loss = _backward_case(True, shape=(6, 2, 1, 1))
    dbias, dweight = _grad_sums(r, x, mean, invstd)
    check_array(dweight, numerical_gradient(loss, weight), "dweight of batch_norm_grad_sums over a batch of 1x1 "
                "images", rtol=1e-5, atol=1e-6)
    check_array(dbias, numerical_gradient(loss, bias), "dbias of batch_norm_grad_sums over a batch of 1x1 images",
                rtol=1e-5, atol=1e-6)


@pytest.mark.exercise("bn.backward", weight=2)
@pytest.mark.parametrize("affine", [True, False], ids=["weight", "no-weight"])
def test_batch_norm_backward_input_matches_finite_differences(affine):
    x, weight, _, r, mean, invstd, loss = _backward_case(True, affine=affine)
    scale = invstd if weight is None else invstd * weight
    dx = ref.batch_norm_backward_input(r, x, mean, invstd, scale, *_sums_loop(r, x, mean, invstd))
    what = "weight" if affine else "weight=None (scale = invstd)"
    check_array(dx, numerical_gradient(loss, x), f"dx of batch_norm_backward_input with {what} (against finite "
                "differences of sum(y * R), batch statistics)", rtol=1e-5, atol=1e-6)


@pytest.mark.exercise("bn.backward")
def test_batch_norm_backward_input_of_one_pixel_images():
    x, weight, _, r, mean, invstd, loss = _backward_case(True, shape=(6, 2, 1, 1))
    dx = ref.batch_norm_backward_input(r, x, mean, invstd, invstd * weight, *_sums_loop(r, x, mean, invstd))
    check_array(dx, numerical_gradient(loss, x), "dx of batch_norm_backward_input over a batch of 1x1 images",
                rtol=1e-5, atol=1e-6)


def _pytorch_case():
    """x, weight, R, and PyTorch's gradients of sum(batch_norm(x) * R) in training (dx, dweight, dbias)."""
    torch = pytest.importorskip("torch")
    x = normal(SHAPE, seed=18, dtype=np.float64, loc=-1.0, scale=0.5)
    weight, bias = normal((4,), seed=19, dtype=np.float64), normal((4,), seed=20, dtype=np.float64)
    r = normal(SHAPE, seed=21, dtype=np.float64)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, weight, bias))
    y = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True, eps=EPS)
    (y * torch.tensor(r)).sum().backward()
    mean, var = channel_stats_loop(x)
    return x, weight, r, mean, 1 / np.sqrt(var + EPS), (tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy())


@pytest.mark.exercise("bn.grad_sums", weight=2)
def test_batch_norm_grad_sums_match_pytorch():
    x, _, r, mean, invstd, (_, want_dweight, want_dbias) = _pytorch_case()
    dbias, dweight = _grad_sums(r, x, mean, invstd)
    check_array(dweight, want_dweight, "dweight of batch_norm_grad_sums against PyTorch", rtol=1e-7, atol=1e-9)
    check_array(dbias, want_dbias, "dbias of batch_norm_grad_sums against PyTorch", rtol=1e-7, atol=1e-9)


@pytest.mark.exercise("bn.backward", weight=2)
def test_batch_norm_backward_input_matches_pytorch():
    x, weight, r, mean, invstd, (want_dx, _, _) = _pytorch_case()
    dx = ref.batch_norm_backward_input(r, x, mean, invstd, invstd * weight, *_sums_loop(r, x, mean, invstd))
    check_array(dx, want_dx, "dx of batch_norm_backward_input against PyTorch", rtol=1e-7, atol=1e-9)


@pytest.mark.exercise("bn.grad_sums", weight=14)
def test_batch_norm_grad_sums_is_vectorised():
    def make(shape):
        x, _, _, r, mean, invstd, _ = _backward_case(True, shape=shape)
        return r, x, mean, invstd

    (r, x, mean, invstd), runs = vector_runs(ref.batch_norm_grad_sums, make)
    got = runs[0].result
    if not isinstance(got, tuple) or len(got) != 2:
        pytest.fail("batch_norm_grad_sums must return a pair (dbias, dweight)", pytrace=False)
    want_dbias, want_dweight = _sums_loop(r, x, mean, invstd)
    check_array(got[0], want_dbias, f"dbias of batch_norm_grad_sums (x of shape {x.shape})", rtol=1e-7, atol=1e-9)
    check_array(got[1], want_dweight, f"dweight of batch_norm_grad_sums (x of shape {x.shape})", rtol=1e-7,
                atol=1e-9)
    check_lines_do_not_grow("batch_norm_grad_sums(grad_out, x, mean, invstd)", runs, ADVICE)


@pytest.mark.exercise("bn.backward", weight=14)
def test_batch_norm_backward_input_is_vectorised():
    def make(shape):
        x, weight, _, r, mean, invstd, _ = _backward_case(True, shape=shape)
        return (r, x, mean, invstd, invstd * weight) + _sums_loop(r, x, mean, invstd)

    _, runs = vector_runs(ref.batch_norm_backward_input, make)
    x, _, _, _, _, _, loss = _backward_case(True, shape=SMALL)
    check_array(runs[0].result, numerical_gradient(loss, x), f"dx of batch_norm_backward_input (x of shape "
                f"{x.shape}, against finite differences of sum(y * R))", rtol=1e-5, atol=1e-6)
    check_lines_do_not_grow("batch_norm_backward_input(grad_out, x, mean, invstd, scale, dbias, dweight)", runs,
                            ADVICE)
