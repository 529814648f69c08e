"""Assignment 3, batch norm: statistics, normalisation, the op's forward in training and eval, the backward.

Run: pytest -m batchnorm. Gradients are checked against finite differences
in float64 of sum(y * R) for a fixed random R (never plain sum(y): its
gradient through batch norm is identically zero, so a wrong backward would
pass), and against PyTorch when it is installed.
"""
import numpy as np
import pytest

from exercise_helpers import (batch_norm_loop, batch_norm_train_loop, channel_stats_loop, check_array,
                              numerical_gradient, use_loop_kernels)

import minires.functional as F
from minires.kernels import numpy_ref as ref

pytestmark = pytest.mark.batchnorm

SHAPE = (3, 4, 3, 5)  # N, C, H, W
EPS = 1e-5


def normal(shape, seed=0, dtype=np.float32, loc=0.0, scale=1.0):
    return (loc + scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


# ---------------------------------------------------------------- bn.stats

@pytest.mark.exercise("bn.stats")
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


# ---------------------------------------------------------------- bn.normalize

@pytest.mark.exercise("bn.normalize")
@pytest.mark.parametrize("affine", ["weight-and-bias", "weight-only", "bias-only", "none"])
def test_batch_norm_forward_matches_the_loop(affine):
    x = normal(SHAPE, seed=2)
    mean, invstd = normal((4,), seed=3), np.abs(normal((4,), seed=4)) + 0.5
    weight = normal((4,), seed=5) if affine in ("weight-and-bias", "weight-only") else None
    bias = normal((4,), seed=6) if affine in ("weight-and-bias", "bias-only") else None
    got = ref.batch_norm_forward(x, mean, invstd, weight, bias)
    check_array(got, batch_norm_loop(x, mean, invstd, weight, bias),
                f"batch_norm_forward with {affine} (x of shape {SHAPE})", rtol=1e-5, atol=1e-5, dtype=np.float32)


# ---------------------------------------------------------------- bn.forward

def _run_forward(monkeypatch, training, with_running=True, momentum=0.1):
    use_loop_kernels(monkeypatch)
    x = normal(SHAPE, seed=7, dtype=np.float64, loc=1.0, scale=3.0)
    weight, bias = normal((4,), seed=8, dtype=np.float64), normal((4,), seed=9, dtype=np.float64)
    rm = normal((4,), seed=10, dtype=np.float64) if with_running else None
    rv = np.abs(normal((4,), seed=11, dtype=np.float64)) + 0.5 if with_running else None
    before = (None if rm is None else rm.copy(), None if rv is None else rv.copy())
    y = F.BatchNorm().forward(x, weight, bias, rm, rv, training, momentum, EPS)
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


# ---------------------------------------------------------------- bn.backward

def _backward_case(training, affine=True):
    x = normal((2, 3, 3, 4), seed=12, dtype=np.float64, loc=0.5, scale=2.0)
    weight = normal((3,), seed=13, dtype=np.float64) if affine else None
    bias = normal((3,), seed=14, dtype=np.float64)
    r = normal(x.shape, seed=15, dtype=np.float64)
    if training:
        def loss():
            return float(np.sum(batch_norm_train_loop(x, weight, bias, EPS) * r))
        mean, var = channel_stats_loop(x)
    else:
        mean, var = normal((3,), seed=16, dtype=np.float64), np.abs(normal((3,), seed=17, dtype=np.float64)) + 0.3

        def loss():
            return float(np.sum(batch_norm_loop(x, mean, 1 / np.sqrt(var + EPS), weight, bias) * r))
    invstd = 1 / np.sqrt(var + EPS)
    got = ref.batch_norm_backward(r, x, mean, invstd, weight, training)
    if not isinstance(got, tuple) or len(got) != 3:
        pytest.fail("batch_norm_backward must return a triple (dx, dweight, dbias)", pytrace=False)
    return x, weight, bias, loss, got


@pytest.mark.exercise("bn.backward")
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_batch_norm_backward_matches_finite_differences(training):
    x, weight, bias, loss, (dx, dweight, dbias) = _backward_case(training)
    mode = "training" if training else "eval"
    check_array(dx, numerical_gradient(loss, x), f"dx of batch_norm_backward in {mode} mode (against finite "
                "differences of sum(y * R))", rtol=1e-5, atol=1e-6)
    check_array(dweight, numerical_gradient(loss, weight), f"dweight of batch_norm_backward in {mode} mode",
                rtol=1e-5, atol=1e-6)
    check_array(dbias, numerical_gradient(loss, bias), f"dbias of batch_norm_backward in {mode} mode",
                rtol=1e-5, atol=1e-6)


@pytest.mark.exercise("bn.backward")
def test_batch_norm_backward_without_weight():
    x, _, _, loss, (dx, _, _) = _backward_case(True, affine=False)
    check_array(dx, numerical_gradient(loss, x), "dx of batch_norm_backward with weight=None (training mode)",
                rtol=1e-5, atol=1e-6)


@pytest.mark.exercise("bn.backward")
def test_batch_norm_backward_matches_pytorch():
    torch = pytest.importorskip("torch")
    x = normal(SHAPE, seed=18, dtype=np.float64, loc=-1.0, scale=0.5)
    weight, bias = normal((4,), seed=19, dtype=np.float64), normal((4,), seed=20, dtype=np.float64)
    r = normal(SHAPE, seed=21, dtype=np.float64)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, weight, bias))
    y = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True, eps=EPS)
    (y * torch.tensor(r)).sum().backward()
    mean, var = channel_stats_loop(x)
    dx, dweight, dbias = ref.batch_norm_backward(r, x, mean, 1 / np.sqrt(var + EPS), weight, True)
    check_array(dx, tx.grad.numpy(), "dx of batch_norm_backward against PyTorch", rtol=1e-7, atol=1e-9)
    check_array(dweight, tw.grad.numpy(), "dweight against PyTorch", rtol=1e-7, atol=1e-9)
    check_array(dbias, tb.grad.numpy(), "dbias against PyTorch", rtol=1e-7, atol=1e-9)
