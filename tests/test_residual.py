"""Residual blocks built from the functional ops, and the two gradient contributions they record.

A block computes y = relu(F(x) + S(x)) with F = conv-bn-relu-conv-bn and S
the identity, the option-A shortcut (subsample + zero channels) or a 1x1
projection (conv + bn). The gradient at x is the sum of what flows back
through S (``via_shortcut``) and through F (``via_residual``).
"""
import numpy as np
import pytest

import minires
import minires.functional as F
from minires import Tensor
from ported_blocks import PortedBlock

pytestmark = pytest.mark.residual  # the engine's tests of what assignment 4 builds


def make_params(cin, cout, shortcut, dtype, rng):
    def p(*shape, scale=0.3):
        return Tensor((rng.standard_normal(shape) * scale).astype(dtype), requires_grad=True)

    params = {"w1": p(cout, cin, 3, 3), "bn1.w": p(cout, scale=1.0), "bn1.b": p(cout),
              "w2": p(cout, cout, 3, 3), "bn2.w": p(cout, scale=1.0), "bn2.b": p(cout)}
    if shortcut == "B":
        params.update({"wp": p(cout, cin, 1, 1), "bnp.w": p(cout, scale=1.0), "bnp.b": p(cout)})
    return params


def bn(x, p, name):
    return F.batch_norm(x, None, None, p[name + ".w"], p[name + ".b"], training=True)


def branch(x, p, stride):
    """F(x): conv-bn-relu-conv-bn."""
    out = F.relu(bn(F.conv2d(x, p["w1"], stride=stride, padding=1), p, "bn1"))
    return bn(F.conv2d(out, p["w2"], padding=1), p, "bn2")


def shortcut_of(x, p, kind, cout, stride):
    if kind == "identity":
        return x
    if kind == "A":
        return F.pad_channels(x, cout, stride=stride)
    return bn(F.conv2d(x, p["wp"], stride=stride), p, "bnp")


def block(x, p, kind, cout, stride, name=None):
    f = branch(x, p, stride)
    s = shortcut_of(x, p, kind, cout, stride)
    return F.residual_add(f, s, relu=True, name=name), f, s


CONFIGS = {  # kind: (cin, cout, stride)
    "identity": (3, 3, 1),
    "A": (2, 4, 2),
    "B": (2, 4, 2),
}


def leaf_copy(t):
    return Tensor(t.numpy().copy(), requires_grad=True)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-11), (np.float32, 2e-5)])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_input_gradient_is_the_sum_of_the_two_recorded_contributions(kind, dtype, rtol, rng):
    cin, cout, stride = CONFIGS[kind]
    p = make_params(cin, cout, kind, dtype, rng)
    x = Tensor(rng.standard_normal((2, cin, 6, 6)).astype(dtype), requires_grad=True)
    y, f, s = block(x, p, kind, cout, stride)
    f_np, s_np = f.numpy().copy(), s.numpy().copy()
    G = rng.standard_normal(y.shape).astype(dtype)
    y.backward(G)
    rec = y.grad_fn.record
    assert rec.input_shape == x.shape
    assert rec.via_shortcut.shape == rec.via_residual.shape == x.shape
    scale = np.abs(x.grad.numpy()).max()
    np.testing.assert_allclose(x.grad.numpy(), rec.via_shortcut + rec.via_residual, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(rec.input_grad, x.grad.numpy(), rtol=rtol, atol=rtol * scale)

    # the add sends g = G * relu'(f + s) into both sides
    g = G * ((f_np + s_np) > 0)
    assert np.array_equal(rec.grad_residual, g) and np.array_equal(rec.grad_shortcut, g)

    # each contribution, recomputed by running that side alone from a fresh copy of x
    x_f, x_s = leaf_copy(x), leaf_copy(x)
    branch(x_f, p, stride).backward(g)
    np.testing.assert_allclose(rec.via_residual, x_f.grad.numpy(), rtol=rtol, atol=rtol * scale)
    if kind == "identity":
        assert np.array_equal(rec.via_shortcut, g)  # the "1" of 1 + dF/dx
    elif kind == "A":
        expected = np.zeros(x.shape, dtype=dtype)
        expected[:, :, ::stride, ::stride] = g[:, :cin]
        assert np.array_equal(rec.via_shortcut, expected)
    else:
        shortcut_of(x_s, p, kind, cout, stride).backward(g)
        np.testing.assert_allclose(rec.via_shortcut, x_s.grad.numpy(), rtol=rtol, atol=rtol * scale)
        assert np.abs(rec.via_shortcut).max() > 0


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_block_input_gradient_matches_torch(kind, rng):
    torch = pytest.importorskip("torch")
    TF = torch.nn.functional
    cin, cout, stride = CONFIGS[kind]
    p = make_params(cin, cout, kind, np.float64, rng)
    x_np = rng.standard_normal((2, cin, 5, 5))
    x = Tensor(x_np.copy(), requires_grad=True)
    y, _, _ = block(x, p, kind, cout, stride)
    G = rng.standard_normal(y.shape)
    y.backward(G)

    tp = {k: torch.tensor(v.numpy()) for k, v in p.items()}
    tx = torch.tensor(x_np, requires_grad=True)

    def tbn(t, name):
        return TF.batch_norm(t, None, None, tp[name + ".w"], tp[name + ".b"], training=True)

    tf = tbn(TF.conv2d(torch.relu(tbn(TF.conv2d(tx, tp["w1"], stride=stride, padding=1), "bn1")),
                       tp["w2"], padding=1), "bn2")
    if kind == "identity":
        ts = tx
    elif kind == "A":
        ts = TF.pad(tx[:, :, ::stride, ::stride], (0, 0, 0, 0, 0, cout - cin))
    else:
        ts = tbn(TF.conv2d(tx, tp["wp"], stride=stride), "bnp")
    torch.relu(tf + ts).backward(torch.tensor(G))
    np.testing.assert_allclose(y.grad_fn.record.input_grad, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_record_residuals_collects_every_block_in_call_order(rng):
    p1 = make_params(3, 3, "identity", np.float64, rng)
    p2 = make_params(3, 6, "A", np.float64, rng)
    p3 = make_params(6, 6, "B", np.float64, rng)
    x = Tensor(rng.standard_normal((2, 3, 6, 6)), requires_grad=True)
    with minires.record_residuals() as records:
        h1, _, _ = block(x, p1, "identity", 3, 1, name="layer1.0")
        h1.retain_grad()
        h2, _, _ = block(h1, p2, "A", 6, 2, name="layer2.0")
        h2.retain_grad()
        h3, _, _ = block(h2, p3, "B", 6, 1, name="layer2.1")
        h3.backward(rng.standard_normal(h3.shape))
    block(x, p1, "identity", 3, 1, name="outside")  # after the context: not collected
    assert [r.name for r in records] == ["layer1.0", "layer2.0", "layer2.1"]
    assert records[0] is h1.grad_fn.record and records[1] is h2.grad_fn.record and records[2] is h3.grad_fn.record
    assert [r.input_shape for r in records] == [(2, 3, 6, 6), (2, 3, 6, 6), (2, 6, 3, 3)]
    for rec, inp in zip(records, (x, h1, h2)):
        np.testing.assert_allclose(inp.grad.numpy(), rec.via_shortcut + rec.via_residual, rtol=1e-11,
                                   atol=1e-13)
    assert "layer2.0" in repr(records[1])


def _one_residual_add(rng):
    a = Tensor(rng.standard_normal(3), requires_grad=True)
    return F.residual_add(a * 1.0, a, name="block")


def test_nested_record_residuals_with_different_contents(rng):
    with minires.record_residuals() as outer:
        _one_residual_add(rng)
        with minires.record_residuals() as inner:
            _one_residual_add(rng)
        _one_residual_add(rng)
    assert len(outer) == 3 and len(inner) == 1


def test_nested_record_residuals_with_equal_contents(rng):
    with minires.record_residuals() as outer:
        with minires.record_residuals() as inner:
            pass
        _one_residual_add(rng)
    assert len(outer) == 1 and inner == []


def test_records_keep_grad_residual_and_grad_shortcut_after_the_graph_is_freed(rng):
    f = Tensor(rng.standard_normal((2, 3, 2, 2)), requires_grad=True)
    s = Tensor(rng.standard_normal((2, 3, 2, 2)), requires_grad=True)
    y = F.residual_add(f * 1.0, s * 1.0, relu=False)
    G = rng.standard_normal(y.shape)
    y.backward(G)
    assert y.grad_fn.inputs is None  # freed
    rec = y.grad_fn.record
    assert np.array_equal(rec.grad_residual, G) and np.array_equal(rec.grad_shortcut, G)
    np.testing.assert_array_equal(f.grad.numpy(), G)
    np.testing.assert_array_equal(s.grad.numpy(), G)
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward(G)
    assert np.array_equal(rec.grad_residual, G)  # the failed call changed nothing


def test_without_grad_the_record_is_made_but_holds_no_gradient(rng):
    """A forward pass under no_grad still finds the blocks (summary and plot_model rely on it)."""
    with minires.record_residuals() as records:
        with minires.no_grad():
            y = F.residual_add(Tensor(rng.standard_normal(3), requires_grad=True), Tensor(rng.standard_normal(3)))
    assert y.grad_fn is None and len(records) == 1
    rec = records[0]
    assert rec.has_shortcut
    assert all(getattr(rec, f) is None for f in ("grad_residual", "grad_shortcut", "via_shortcut", "via_residual"))


@pytest.mark.parametrize("relu", [True, False])
def test_without_a_shortcut_the_add_is_the_plain_block(relu, rng):
    """residual_add(f, None): y = relu(f) (or f), recorded with nothing through a shortcut."""
    x_np = rng.standard_normal((2, 3, 4, 4))
    x = Tensor(x_np.copy(), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 3, 3, 3)) * 0.3, requires_grad=True)
    with minires.record_residuals() as records:
        f = F.conv2d(x, w, padding=1)
        y = F.residual_add(f, None, relu=relu)
    expected = np.maximum(f.numpy(), 0) if relu else f.numpy()
    assert np.array_equal(y.numpy(), expected)
    G = rng.standard_normal(y.shape)
    y.backward(G)
    x_ref = leaf_copy(x)
    out = F.conv2d(x_ref, w, padding=1)
    (F.relu(out) if relu else out).backward(G)
    np.testing.assert_array_equal(x.grad.numpy(), x_ref.grad.numpy())
    assert len(records) == 1 and not records[0].has_shortcut
    assert records[0].via_shortcut is None and records[0].input_grad is None


def test_record_residuals_of_a_model_names_each_record_by_its_block(rng):
    model = minires.nn.Sequential(minires.nn.Conv2d(1, 4, 3, padding=1),
                                  minires.nn.Sequential(PortedBlock(4, 4, 1), PortedBlock(4, 8, 2)))
    x = Tensor(rng.standard_normal((2, 1, 6, 6)).astype(np.float32))
    with minires.record_residuals(model) as records:
        out = model(x)
        (out * Tensor(rng.standard_normal(out.shape).astype(np.float32))).sum().backward()
    assert [r.name for r in records] == ["1.0", "1.1"]
    assert [r.identity for r in records] == [True, False]
    assert [r.shortcut_module for r in records] == [None, "1.1.proj"]
    assert [r.input_shape for r in records] == [(2, 4, 6, 6), (2, 4, 6, 6)]
    assert all(r.via_shortcut is not None and r.via_residual is not None for r in records)
    with minires.record_residuals() as unnamed:  # without the model: named only by residual_add's name=
        model(x)
    assert [r.name for r in unnamed] == [None, None]


def test_via_residual_sums_every_edge_by_which_the_branch_consumes_x(rng):
    """F(x) = c * x + x * x consumes x three times, at input positions 1, 0 and 1: J_F^T g = g c + 2 x g."""
    x_np, c_np = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    x, c = Tensor(x_np.copy(), requires_grad=True), Tensor(c_np.copy(), requires_grad=True)
    f = c * x + x * x
    y = F.residual_add(f, x, relu=True)
    G = rng.standard_normal((2, 3))
    y.backward(G)
    g = G * ((c_np * x_np + x_np * x_np + x_np) > 0)
    rec = y.grad_fn.record
    np.testing.assert_allclose(rec.via_residual, g * c_np + 2 * x_np * g, rtol=1e-12, atol=1e-15)
    assert np.array_equal(rec.via_shortcut, g)
    np.testing.assert_allclose(x.grad.numpy(), g + g * c_np + 2 * x_np * g, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("zeroed", ["conv2", "bn2_gamma", "both_convs"])
def test_zero_residual_branch_passes_the_gradient_through_exactly(zeroed, rng):
    """With F's weights at zero the block is relu(beta2 + x), and dx = dy * relu'(beta2 + x), bit for bit."""
    p = make_params(3, 3, "identity", np.float32, rng)
    zero = {"conv2": ["w2"], "bn2_gamma": ["bn2.w"], "both_convs": ["w1", "w2"]}[zeroed]
    for name in zero:
        p[name].data[...] = 0
    x_np = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    x = Tensor(x_np.copy(), requires_grad=True)
    y, f, _ = block(x, p, "identity", 3, 1)
    beta = p["bn2.b"].numpy().reshape(1, 3, 1, 1)
    assert np.array_equal(f.numpy(), np.broadcast_to(beta, f.shape))  # F(x) = beta2, a constant
    G = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(G)
    mask = (beta + x_np) > 0
    assert mask.any() and not mask.all()
    assert x.grad.dtype == np.float32
    assert np.array_equal(x.grad.numpy(), G * mask)
    rec = y.grad_fn.record
    assert np.array_equal(rec.via_shortcut, G * mask)
    assert not np.any(rec.via_residual)


def test_the_add_saves_only_its_output_for_backward(rng):
    """As PyTorch's add + relu: changing an input after the add is harmless, changing y is caught."""
    f = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    s = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    y = F.residual_add(f, s)
    s.data = s.data + 1.0  # an in-place change of an input the backward does not read
    G = rng.standard_normal((2, 3))
    y.backward(G, retain_graph=True)
    np.testing.assert_array_equal(f.grad.numpy(), G * (y.numpy() > 0))
    y.data = y.data * 2.0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward(G)
