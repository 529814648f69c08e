"""PyTorch as the oracle: forward and backward of every op agree in float32.

Skipped cleanly where torch is not installed. Each comparison uses rtol 1e-4
and an absolute tolerance of 1e-5 times the reference's largest magnitude
(at least 1), since float32 sums of many terms lose absolute, not relative,
precision near zero.
"""
import numpy as np
import pytest

import minires
import minires.functional as F
from minires import Tensor

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def close(actual, expected, what=""):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    actual = actual.numpy() if isinstance(actual, Tensor) else np.asarray(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs torch {expected.shape}"
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=what)


def pair(array, requires_grad=True):
    """The same float32 data as a minires tensor and a torch tensor."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    return (Tensor(array.copy(), requires_grad=requires_grad),
            torch.tensor(array.copy(), requires_grad=requires_grad))


def run_both(mine_fn, torch_fn, arrays, rng, grad_inputs=None, what=""):
    """Apply both, push the same random upstream gradient back, compare outputs and input gradients."""
    mine, theirs = zip(*(pair(a) for a in arrays))
    y, ty = mine_fn(*mine), torch_fn(*theirs)
    close(y, ty, f"{what} forward")
    g = rng.standard_normal(ty.shape).astype(np.float32)
    y.backward(g)
    ty.backward(torch.tensor(g))
    for k, (m, t) in enumerate(zip(mine, theirs)):
        if grad_inputs is not None and k not in grad_inputs:
            continue
        close(m.grad, t.grad, f"{what} grad of input {k}")
    return y, ty


# ---------------------------------------------------------------- tensor ops

TENSOR_CASES = [
    ("add", lambda a, b: a + b, [(2, 3), (3,)]),
    ("sub", lambda a, b: a - b, [(2, 1, 3), (4, 1)]),
    ("mul", lambda a, b: a * b, [(2, 3), (2, 1)]),
    ("div", lambda a, b: a / (b * b + 1), [(3, 1), (1, 4)]),
    ("pow", lambda a, b: (a * a + 0.5) ** b, [(2, 3), (3,)]),
    ("neg", lambda a, b: -a * b, [(2, 3), ()]),
    ("scalars", lambda a, b: 2 * a - 1.5 / (b * b + 1) + 3 ** a + a ** 2, [(4,), (4,)]),
    ("matmul", lambda a, b: a @ b, [(2, 3, 4), (4, 5)]),
    ("matmul_vec", lambda a, b: a @ b, [(3, 4), (4,)]),
    ("matmul_batched", lambda a, b: a @ b, [(2, 1, 3, 4), (5, 4, 2)]),
    ("exp_log_sqrt", lambda a, b: (a * a + 1).sqrt().log() * b.exp(), [(2, 3), (2, 3)]),
    ("sum_axis", (lambda a, b: (a * b).sum(axis=1), lambda a, b: (a * b).sum(dim=1)), [(2, 3, 4), (3, 4)]),
    ("sum_keepdims", (lambda a, b: (a * b).sum(axis=(0, 2), keepdims=True),
                      lambda a, b: (a * b).sum(dim=(0, 2), keepdim=True)), [(2, 3, 4), (3, 4)]),
    ("sum_all", (lambda a, b: (a * b).sum(), lambda a, b: (a * b).sum()), [(2, 3), (3,)]),
    ("mean", (lambda a, b: (a + b).mean(axis=-1), lambda a, b: (a + b).mean(dim=-1)), [(2, 3, 4), (4,)]),
    ("mean_keepdims", (lambda a, b: (a + b).mean(axis=(0, 1), keepdims=True),
                       lambda a, b: (a + b).mean(dim=(0, 1), keepdim=True)), [(2, 3, 4), (4,)]),
    ("max", (lambda a, b: (a * b).max(axis=1), lambda a, b: (a * b).amax(dim=1)), [(3, 5), (5,)]),
    ("max_keepdims", (lambda a, b: (a * b).max(axis=0, keepdims=True), lambda a, b: (a * b).amax(dim=0, keepdim=True)),
                      [(3, 5), (5,)]),
    ("reshape_permute", lambda a, b: (a + b).reshape(4, 6).permute(1, 0), [(2, 3, 4), (4,)]),
    ("transpose", lambda a, b: a.transpose(0, 2) * b, [(2, 3, 4), (2,)]),
    ("getitem", lambda a, b: a[[0, 0, 2], 1:] * b[1, 1:], [(3, 4), (3, 4)]),
]


@pytest.mark.parametrize("name,fn,shapes", TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_tensor_ops_match_torch(name, fn, shapes, rng):
    mine_fn, torch_fn = fn if isinstance(fn, tuple) else (fn, fn)
    arrays = [rng.standard_normal(s) for s in shapes]
    run_both(mine_fn, torch_fn, arrays, rng, what=name)


# ---------------------------------------------------------------- conv2d

@pytest.mark.parametrize("shape,wshape,stride,padding,bias", [
    ((2, 3, 7, 7), (4, 3, 3, 3), 1, 1, True),
    ((2, 3, 8, 6), (5, 3, 3, 3), 2, 1, False),
    ((1, 2, 6, 7), (3, 2, 1, 1), 2, 0, True),
    ((2, 4, 9, 9), (2, 4, 5, 3), (2, 1), (2, 0), True),
    ((3, 1, 4, 4), (2, 1, 2, 2), 3, 1, False),
])
def test_conv2d_matches_torch(shape, wshape, stride, padding, bias, rng):
    arrays = [rng.standard_normal(shape), rng.standard_normal(wshape)]
    if bias:
        arrays.append(rng.standard_normal(wshape[0]))
    run_both(lambda x, w, *b: F.conv2d(x, w, b[0] if b else None, stride=stride, padding=padding),
             lambda x, w, *b: TF.conv2d(x, w, b[0] if b else None, stride=stride, padding=padding),
             arrays, rng, what="conv2d")


# ---------------------------------------------------------------- batch norm

@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 4), (2, 2, 1, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_matches_torch(shape, affine, rng):
    c = shape[1]
    x_np = rng.standard_normal(shape) * 2 + 0.5
    rm0, rv0 = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    rm, rv = Tensor(rm0.copy()), Tensor(rv0.copy())
    trm, trv = torch.tensor(rm0.copy()), torch.tensor(rv0.copy())
    arrays = [x_np] + ([rng.uniform(0.5, 1.5, c), rng.standard_normal(c)] if affine else [])
    for step in range(2):  # two steps: the running statistics compound
        run_both(lambda x, *p: F.batch_norm(x, rm, rv, *p, training=True, momentum=0.1, eps=1e-5),
                 lambda x, *p: TF.batch_norm(x, trm, trv, *p, training=True, momentum=0.1, eps=1e-5),
                 arrays, rng, what=f"batch_norm training step {step}")
        close(rm, trm, "running_mean")
        close(rv, trv, "running_var")
        arrays[0] = arrays[0] * 0.5 + 1.0


@pytest.mark.parametrize("shape", [(3, 3, 4, 4), (5, 2)])
def test_batch_norm_eval_matches_torch(shape, rng):
    c = shape[1]
    rm0, rv0 = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    rm, rv = Tensor(rm0.copy()), Tensor(rv0.copy())
    trm, trv = torch.tensor(rm0.copy()), torch.tensor(rv0.copy())
    arrays = [rng.standard_normal(shape), rng.uniform(0.5, 1.5, c), rng.standard_normal(c)]
    run_both(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=False),
             lambda x, w, b: TF.batch_norm(x, trm, trv, w, b, training=False),
             arrays, rng, what="batch_norm eval")
    close(rm, trm, "running_mean unchanged")
    np.testing.assert_array_equal(rm.numpy(), rm0)
    np.testing.assert_array_equal(rv.numpy(), rv0)


# ---------------------------------------------------------------- activations and pooling

def test_relu_matches_torch(rng):
    run_both(F.relu, torch.relu, [rng.standard_normal((2, 3, 4, 4))], rng, what="relu")


@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((2, 3, 8, 8), 2, None, 0),
    ((2, 2, 7, 7), 3, 2, 1),
    ((1, 2, 6, 5), (3, 2), (1, 2), (1, 1)),
    ((2, 1, 9, 9), 3, 3, 1),
    ((1, 1, 4, 4), 2, 1, 1),
])
def test_max_pool2d_matches_torch(shape, kernel, stride, padding, rng):
    x_np = rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0 - 3.0  # distinct values: no ties
    run_both(lambda x: F.max_pool2d(x, kernel, stride, padding),
             lambda x: TF.max_pool2d(x, kernel, stride, padding), [x_np], rng, what="max_pool2d")


@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((2, 3, 8, 8), 2, None, 0),
    ((2, 2, 7, 7), 3, 2, 1),
    ((1, 2, 6, 5), (3, 2), (1, 2), (1, 1)),
    ((2, 1, 5, 5), 3, 1, 1),
])
def test_avg_pool2d_matches_torch_count_include_pad(shape, kernel, stride, padding, rng):
    run_both(lambda x: F.avg_pool2d(x, kernel, stride, padding),
             lambda x: TF.avg_pool2d(x, kernel, stride, padding, count_include_pad=True),
             [rng.standard_normal(shape)], rng, what="avg_pool2d")


@pytest.mark.parametrize("shape,size", [
    ((2, 3, 7, 7), 1), ((2, 3, 7, 5), (3, 2)), ((1, 2, 5, 7), (4, 3)), ((1, 2, 3, 3), (5, 4)),
    ((2, 2, 8, 8), (4, 4)), ((1, 1, 6, 9), (6, 1)),
])
def test_adaptive_avg_pool2d_matches_torch(shape, size, rng):
    run_both(lambda x: F.adaptive_avg_pool2d(x, size), lambda x: TF.adaptive_avg_pool2d(x, size),
             [rng.standard_normal(shape)], rng, what="adaptive_avg_pool2d")


# ---------------------------------------------------------------- linear, flatten, concat, losses

@pytest.mark.parametrize("xshape,bias", [((4, 5), True), ((2, 3, 5), True), ((4, 5), False)])
def test_linear_matches_torch(xshape, bias, rng):
    arrays = [rng.standard_normal(xshape), rng.standard_normal((3, 5))] + ([rng.standard_normal(3)] if bias else [])
    run_both(lambda x, w, *b: F.linear(x, w, b[0] if b else None),
             lambda x, w, *b: TF.linear(x, w, b[0] if b else None), arrays, rng, what="linear")


def test_flatten_matches_torch(rng):
    run_both(lambda x: F.flatten(x), lambda x: torch.flatten(x, 1), [rng.standard_normal((2, 3, 2, 2))], rng,
             what="flatten")


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_concat_matches_torch(dim, rng):
    shapes = {0: [(1, 3, 2), (2, 3, 2)], 1: [(2, 1, 2), (2, 3, 2), (2, 2, 2)], -1: [(2, 3, 1), (2, 3, 3)]}[dim]
    run_both(lambda *ts: F.concat(ts, dim=dim), lambda *ts: torch.cat(ts, dim=dim),
             [rng.standard_normal(s) for s in shapes], rng, what="concat")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_cross_entropy_matches_torch(reduction, scale, rng):
    z = rng.standard_normal((5, 4)) * scale
    t = rng.integers(0, 4, 5)
    run_both(lambda z: F.cross_entropy(z, minires.tensor(t), reduction=reduction),
             lambda z: TF.cross_entropy(z, torch.tensor(t), reduction=reduction), [z], rng, what="cross_entropy")


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_log_softmax_and_softmax_match_torch(dim, rng):
    x_np = rng.standard_normal((3, 4, 2)) * 3
    run_both(lambda x: F.log_softmax(x, dim), lambda x: TF.log_softmax(x, dim), [x_np], rng, what="log_softmax")
    run_both(lambda x: F.softmax(x, dim), lambda x: TF.softmax(x, dim), [x_np], rng, what="softmax")


@pytest.mark.parametrize("relu", [True, False])
def test_residual_add_matches_torch(relu, rng):
    shape = (2, 3, 4, 4)
    run_both(lambda f, s: F.residual_add(f, s, relu=relu),
             lambda f, s: torch.relu(f + s) if relu else f + s,
             [rng.standard_normal(shape), rng.standard_normal(shape)], rng, what="residual_add")


@pytest.mark.parametrize("c,out,stride,hw", [(2, 4, 2, (5, 6)), (3, 3, 1, (4, 4)), (2, 5, 3, (7, 7))])
def test_pad_channels_matches_torch(c, out, stride, hw, rng):
    run_both(lambda x: F.pad_channels(x, out, stride),
             lambda x: TF.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, 0, out - c)),
             [rng.standard_normal((2, c) + hw)], rng, what="pad_channels")


def test_max_pool2d_ties_match_torch(rng):
    x_np = np.round(rng.standard_normal((2, 2, 6, 6))).clip(-1, 1)  # many ties
    run_both(lambda x: F.max_pool2d(x, 3, 2, 1), lambda x: TF.max_pool2d(x, 3, 2, 1), [x_np], rng,
             what="max_pool2d ties")


F64_CASES = {
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
               lambda x, w, b: TF.conv2d(x, w, b, stride=2, padding=1), [(2, 3, 6, 5), (4, 3, 3, 3), (4,)]),
    "batch_norm": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                   lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True), [(3, 2, 3, 3), (2,), (2,)]),
    "linear": (F.linear, TF.linear, [(2, 3, 4), (5, 4), (5,)]),
    "log_softmax": (lambda x: F.log_softmax(x, 1), lambda x: TF.log_softmax(x, 1), [(3, 4, 2)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 3, 2, 1), lambda x: TF.avg_pool2d(x, 3, 2, 1), [(2, 2, 7, 6)]),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (3, 2)), lambda x: TF.adaptive_avg_pool2d(x, (3, 2)),
                            [(2, 2, 7, 5)]),
    "matmul": (lambda a, b: a @ b, lambda a, b: a @ b, [(2, 1, 3, 4), (5, 4, 2)]),
}


@pytest.mark.parametrize("name", list(F64_CASES))
def test_float64_matches_torch_tightly(name, rng):
    """In float64 the two must agree to rounding, which catches errors far below float32's tolerance."""
    mine_fn, torch_fn, shapes = F64_CASES[name]
    arrays = [rng.standard_normal(s) for s in shapes]
    mine = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    y, ty = mine_fn(*mine), torch_fn(*theirs)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(ty.shape)
    y.backward(g)
    ty.backward(torch.tensor(g))
    for k, (m, t) in enumerate(zip(mine, theirs)):
        np.testing.assert_allclose(m.grad.numpy(), t.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=f"{name} {k}")


def test_small_network_matches_torch_end_to_end(rng):
    """conv-bn-relu, a residual add, pooling and a linear head: every parameter's gradient."""
    shapes = [(2, 3, 6, 6), (4, 3, 3, 3), (4,), (4,), (4, 4, 3, 3), (5, 4)]
    arrays = [rng.standard_normal(s) * (0.5 if k else 1.0) for k, s in enumerate(shapes)]
    arrays[2] = np.abs(arrays[2]) + 0.5
    target = rng.integers(0, 5, 2)

    def net(lib, fn, x, w1, g1, b1, w2, wl, rm, rv, target):
        h = fn.relu(fn.batch_norm(fn.conv2d(x, w1, padding=1), rm, rv, g1, b1, training=True))
        h2 = fn.conv2d(h, w2, padding=1)
        y = lib["res"](h2, h)
        p = fn.max_pool2d(y, 2) if lib["name"] == "torch" else F.max_pool2d(y, 2)
        feats = lib["flat"](fn.adaptive_avg_pool2d(p, 1))
        return fn.cross_entropy(fn.linear(feats, wl), target)

    mine, theirs = zip(*(pair(a) for a in arrays))
    loss = net({"name": "minires", "res": F.residual_add, "flat": F.flatten}, F, *mine,
               minires.zeros(4), minires.ones(4), minires.tensor(target))
    tloss = net({"name": "torch", "res": lambda f, s: torch.relu(f + s), "flat": lambda t: torch.flatten(t, 1)}, TF,
                *theirs, torch.zeros(4), torch.ones(4), torch.tensor(target))
    close(loss, tloss, "loss")
    loss.backward()
    tloss.backward()
    for k, (m, t) in enumerate(zip(mine, theirs)):
        close(m.grad, t.grad, f"grad of input {k}")
