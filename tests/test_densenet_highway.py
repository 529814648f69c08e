"""DenseNet-BC (concatenation instead of addition) and the highway block (a gated shortcut)."""
import numpy as np
import pytest

import minires
import minires.functional as F
from minires import gradcheck
from minires.functional import sigmoid
from minires.models import BasicBlock, ResidualBlock, resnet20
from minires.models.densenet import DenseBlock, DenseLayer, DenseNet, Transition, densenet_bc_40, densenet_bc_100
from minires.models.highway import HighwayBlock, HighwayNet, highway20
from minires.ops import Sigmoid


def _randomise(model, rng, dtype=np.float32):
    """Random weights and BN statistics everywhere, so a comparison exercises every value."""
    for name, t in model._state_items():
        if name.endswith("running_var"):
            t.data = rng.uniform(0.5, 2.0, t.shape).astype(dtype)
        elif name.endswith(("bn1.weight", "bn2.weight", "norm.weight", "norm1.weight", "norm2.weight")):
            t.data = rng.uniform(0.5, 1.5, t.shape).astype(dtype)
        elif t.data.dtype.kind == "f":
            t.data = (0.3 * rng.standard_normal(t.shape)).astype(dtype)
    return model


# ================================================================ DenseNet

def _densenet_count(depth, k=12, num_classes=10, in_channels=3):
    """DenseNet-BC's weights from the paper's description, layer by layer, independently of the code."""
    n = (depth - 4) // 6
    total, c = in_channels * 2 * k * 9, 2 * k          # stem: 3x3 conv to 2k channels, no bias
    for stage in range(3):
        for _ in range(n):
            total += 2 * c + c * 4 * k                   # BN(c), 1x1 conv c -> 4k
            total += 2 * 4 * k + 4 * k * k * 9           # BN(4k), 3x3 conv 4k -> k
            c += k
        if stage < 2:
            total += 2 * c + c * (c // 2)                # transition: BN(c), 1x1 conv c -> c/2
            c //= 2
    return total + 2 * c + c * num_classes + num_classes  # final BN, fc with bias


@pytest.mark.parametrize("build, depth", [(densenet_bc_40, 40), (densenet_bc_100, 100)])
@pytest.mark.parametrize("classes, channels", [(10, 3), (100, 1)])
def test_densenet_parameter_counts(build, depth, classes, channels):
    count = build(num_classes=classes, in_channels=channels).num_parameters()
    assert count == _densenet_count(depth, num_classes=classes, in_channels=channels)


def test_densenet_bc_100_is_the_papers_0_8m():
    count = densenet_bc_100().num_parameters()
    assert count == 769_162
    assert round(count / 1e6, 1) == 0.8  # Huang et al. 2017, Table 2: DenseNet-BC (L=100, k=12), 0.8M


def test_densenet_layout():
    model = densenet_bc_100()
    assert len(list(model.block1.children())) == 16
    assert [model.block1.out_channels, model.block2.out_channels, model.block3.out_channels] == [216, 300, 342]
    assert model.trans1.conv.weight.shape == (108, 216, 1, 1)
    assert model.trans2.conv.weight.shape == (150, 300, 1, 1)
    assert model.block2.denselayer16.conv1.weight.shape == (48, 108 + 15 * 12, 1, 1)
    assert model.block2.denselayer16.conv2.weight.shape == (12, 48, 3, 3)
    assert model.fc.weight.shape == (10, 342)
    assert len(list(densenet_bc_40().block3.children())) == 6
    keys = set(densenet_bc_40().state_dict())
    assert {"conv1.weight", "block1.denselayer1.norm1.running_mean", "trans2.norm.num_batches_tracked",
            "block3.denselayer6.conv2.weight", "norm.weight", "fc.bias"} <= keys
    with pytest.raises(ValueError, match="4 \\+ 6n"):
        DenseNet(depth=41)


def test_densenet_forward_shapes(rng):
    model = densenet_bc_40(num_classes=7, in_channels=1)
    assert model(minires.randn(2, 1, 32, 32, rng=rng)).shape == (2, 7)
    assert densenet_bc_100()(minires.randn(2, 3, 8, 8, rng=rng)).shape == (2, 10)
    with pytest.raises(minires.ShapeError, match="input channels"):
        model(minires.randn(2, 3, 32, 32, rng=rng))


def test_dense_block_feeds_every_layer_all_earlier_features(rng):
    block = DenseBlock(4, in_channels=5, growth_rate=3)
    seen, made = [], []

    def keep(module, inputs, out):
        seen.append(inputs[0].numpy())
        made.append(out.numpy())

    for layer in block.children():
        layer.register_forward_hook(keep)
    x = minires.randn(2, 5, 6, 6, rng=rng)
    y = block(x).numpy()
    assert y.shape == (2, 5 + 4 * 3, 6, 6) and block.out_channels == 17
    for i in range(4):
        expected = np.concatenate([x.numpy()] + made[:i], axis=1)  # x, then the new channels of layers < i
        np.testing.assert_array_equal(seen[i], expected)
    np.testing.assert_array_equal(y, np.concatenate([x.numpy()] + made, axis=1))


def test_dense_block_passes_its_input_straight_through(rng):
    """The first in_channels output channels are x itself, so their gradient reaches x unchanged."""
    block = DenseBlock(3, in_channels=4, growth_rate=2)
    x = minires.randn(2, 4, 5, 5, rng=rng, requires_grad=True)
    r = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    (block(x)[:, :4] * minires.tensor(r)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), r)


def test_dense_layer_adds_growth_rate_channels(rng):
    x = minires.randn(2, 10, 5, 5, rng=rng)
    layer = DenseLayer(10, 4)
    assert layer(x).shape == (2, 4, 5, 5)
    assert layer.conv1.weight.shape == (16, 10, 1, 1) and layer.conv2.weight.shape == (4, 16, 3, 3)
    plain = DenseLayer(10, 4, bottleneck=False)
    assert plain(x).shape == (2, 4, 5, 5)
    assert sorted(dict(plain.named_parameters())) == ["conv1.weight", "norm1.bias", "norm1.weight"]
    assert plain.conv1.weight.shape == (4, 10, 3, 3)


def test_transition_compresses_and_halves(rng):
    t = Transition(10, 5)
    assert t(minires.randn(2, 10, 8, 8, rng=rng)).shape == (2, 5, 4, 4)


@pytest.mark.parametrize("bottleneck", [True, False])
def test_gradcheck_dense_block(rng, bottleneck):
    block = DenseBlock(2, in_channels=2, growth_rate=2, bottleneck=bottleneck).double()
    x = minires.randn(2, 2, 3, 3, dtype=np.float64, rng=rng, requires_grad=True)
    first = block.denselayer1.conv1.weight
    gradcheck(lambda x, *weights: block(x), [x, first])  # weights perturbed in place


def test_gradcheck_transition(rng):
    t = Transition(3, 2).double()
    x = minires.randn(2, 3, 4, 4, dtype=np.float64, rng=rng, requires_grad=True)
    gradcheck(lambda x, *weights: t(x), [x, t.conv.weight, t.norm.weight])


def _torch_densenet(torch, depth, k, num_classes, in_channels):
    """A DenseNet-BC written directly in torch.nn with torch.cat, named like minires's."""
    tnn = torch.nn

    class Layer(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.norm1, self.conv1 = tnn.BatchNorm2d(c), tnn.Conv2d(c, 4 * k, 1, bias=False)
            self.norm2, self.conv2 = tnn.BatchNorm2d(4 * k), tnn.Conv2d(4 * k, k, 3, padding=1, bias=False)

        def forward(self, x):
            return self.conv2(torch.relu(self.norm2(self.conv1(torch.relu(self.norm1(x))))))

    class Block(tnn.Module):
        def __init__(self, n, c):
            super().__init__()
            for i in range(n):
                self.add_module(f"denselayer{i + 1}", Layer(c + i * k))

        def forward(self, x):
            features = [x]
            for layer in self.children():
                features.append(layer(torch.cat(features, 1)))
            return torch.cat(features, 1)

    class Trans(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.norm, self.conv = tnn.BatchNorm2d(c), tnn.Conv2d(c, c // 2, 1, bias=False)

        def forward(self, x):
            return torch.nn.functional.avg_pool2d(self.conv(torch.relu(self.norm(x))), 2)

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            n, c = (depth - 4) // 6, 2 * k
            self.conv1 = tnn.Conv2d(in_channels, c, 3, padding=1, bias=False)
            self.block1, c = Block(n, c), c + n * k
            self.trans1, c = Trans(c), c // 2
            self.block2, c = Block(n, c), c + n * k
            self.trans2, c = Trans(c), c // 2
            self.block3, c = Block(n, c), c + n * k
            self.norm, self.fc = tnn.BatchNorm2d(c), tnn.Linear(c, num_classes)

        def forward(self, x):
            x = self.trans2(self.block2(self.trans1(self.block1(self.conv1(x)))))
            x = torch.relu(self.norm(self.block3(x)))
            return self.fc(x.mean(dim=(2, 3)))

    return Net()


def test_densenet_bc_40_matches_a_torch_densenet(torch, rng):
    ours = _randomise(densenet_bc_40(num_classes=5, in_channels=2), rng).eval()
    theirs = _torch_densenet(torch, 40, 12, 5, 2).eval()
    theirs.load_state_dict({k: torch.from_numpy(v.numpy().copy()) for k, v in ours.state_dict().items()})
    x = rng.standard_normal((2, 2, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(minires.tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_small_densenet_training_gradients_match_torch(torch, rng):
    ours = _randomise(DenseNet(depth=10, growth_rate=4, num_classes=3), rng, np.float64).double().train()
    theirs = _torch_densenet(torch, 10, 4, 3, 3).double().train()
    theirs.load_state_dict({k: torch.from_numpy(v.numpy().copy()) for k, v in ours.state_dict().items()})
    x = rng.standard_normal((2, 3, 8, 8))
    r = rng.standard_normal((2, 3))
    xt = torch.tensor(x, requires_grad=True)
    (theirs(xt) * torch.from_numpy(r)).sum().backward()
    xo = minires.tensor(x, requires_grad=True)
    (ours(xo) * minires.tensor(r)).sum().backward()
    np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=1e-7, atol=1e-10)
    theirs_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), theirs_grads[name].grad.numpy(), rtol=1e-7, atol=1e-10,
                                   err_msg=name)


# ================================================================ the highway block

def _pair(rng, in_planes, planes, stride, dtype=np.float32):
    """A HighwayBlock and a BasicBlock (option A) with the same branch weights."""
    basic = _randomise(BasicBlock(in_planes, planes, stride, shortcut="A"), rng, dtype)
    highway = _randomise(HighwayBlock(in_planes, planes, stride), rng, dtype)
    result = highway.load_state_dict(basic.state_dict(), strict=False)
    assert result.missing_keys == ["gate.weight", "gate.bias"] and result.unexpected_keys == []
    if dtype == np.float64:
        basic.double(), highway.double()
    return highway, basic


def _run(block, x, r):
    """Output, input gradient and parameter gradients of sum(block(x) * r), with the residual records."""
    x = minires.tensor(x, requires_grad=True)
    with minires.record_residuals() as records:
        y = block(x)
        (y * minires.tensor(r)).sum().backward()
    grads = {n: p.grad.numpy() for n, p in block.named_parameters() if p.grad is not None}
    return y.numpy(), x.grad.numpy(), grads, records


@pytest.mark.parametrize("in_planes, planes, stride", [(4, 4, 1), (4, 8, 2)])
def test_gate_held_open_is_exactly_the_residual_block(rng, in_planes, planes, stride):
    highway, basic = _pair(rng, in_planes, planes, stride)
    highway.hold_gate(1.0, carry=1.0)
    assert highway.residual and basic.residual
    x = rng.standard_normal((2, in_planes, 6, 6)).astype(np.float32)
    r = rng.standard_normal((2, planes, 6 // stride, 6 // stride)).astype(np.float32)
    y_h, dx_h, grads_h, records_h = _run(highway, x, r)
    y_b, dx_b, grads_b, records_b = _run(basic, x, r)
    np.testing.assert_array_equal(y_h, y_b)
    np.testing.assert_array_equal(dx_h, dx_b)
    assert sorted(grads_h) == sorted(grads_b)  # the gate is unused: no gradient reaches it
    for name in grads_b:
        np.testing.assert_array_equal(grads_h[name], grads_b[name])
    assert len(records_h) == len(records_b) == 1
    for field in ("grad_residual", "grad_shortcut", "via_shortcut", "via_residual"):
        np.testing.assert_array_equal(getattr(records_h[0], field), getattr(records_b[0], field))
    np.testing.assert_array_equal(records_h[0].input_grad, dx_h)


def test_exclusive_gate_held_at_one_is_exactly_the_plain_block(rng):
    highway, _ = _pair(rng, 4, 8, 2)
    plain = BasicBlock(4, 8, 2, residual=False)
    plain.load_state_dict(highway.state_dict(), strict=False)
    highway.hold_gate(1.0)
    assert highway.held == (1.0, 0.0) and not highway.residual
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    r = rng.standard_normal((2, 8, 3, 3)).astype(np.float32)
    y_h, dx_h, _, records = _run(highway, x, r)
    y_p, dx_p, _, records_p = _run(plain, x, r)
    np.testing.assert_array_equal(y_h, y_p)
    np.testing.assert_array_equal(dx_h, dx_p)
    # the highway block still ends in a residual add, of T * F(x) and C * S(x) with C = 0: nothing
    # reaches its input through the shortcut; the plain block's add has no shortcut at all
    assert len(records) == len(records_p) == 1
    assert records[0].has_shortcut and not np.any(records[0].via_shortcut)
    assert not records_p[0].has_shortcut and records_p[0].via_shortcut is None
    np.testing.assert_array_equal(records[0].input_grad, dx_h)


def test_exclusive_gate_held_at_zero_carries_the_input(rng):
    highway, _ = _pair(rng, 4, 8, 2)
    highway.hold_gate(0.0)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    expected = np.zeros((2, 8, 3, 3), np.float32)
    expected[:, :4] = x[:, :, ::2, ::2]  # option A: subsample, zero-pad the channels
    np.testing.assert_array_equal(highway(minires.tensor(x)).numpy(), np.maximum(expected, 0))
    same, _ = _pair(rng, 4, 4, 1)
    np.testing.assert_array_equal(same.hold_gate(0.0)(minires.tensor(x)).numpy(), np.maximum(x, 0))


def test_learned_gate_starts_from_its_bias(rng):
    """With the gate's weights at zero, T(x) = sigmoid(gate_bias) everywhere: a held constant gives the same."""
    block = HighwayBlock(4, 4, gate_bias=-2.0)
    np.testing.assert_array_equal(block.gate.bias.numpy(), np.full(4, -2.0, np.float32))
    assert block.held is None and not block.residual
    block.gate.weight.data[...] = 0
    x = minires.randn(2, 4, 5, 5, rng=rng)
    learned = block(x).numpy()
    t = 1 / (1 + np.exp(2.0))
    np.testing.assert_allclose(block.hold_gate(t)(x).numpy(), learned, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(block.release_gate()(x).numpy(), learned)
    assert block.held is None


@pytest.mark.parametrize("stride", [1, 2])
def test_learned_gate_matches_torch(torch, rng, stride):
    """y = relu(T F + (1 - T) S) written out in torch.nn.functional: output and every gradient."""
    tf = torch.nn.functional
    planes = 4 * stride
    block = _randomise(HighwayBlock(4, planes, stride), rng, np.float64).double().train()
    x = rng.standard_normal((2, 4, 6, 6))
    r = rng.standard_normal((2, planes, 6 // stride, 6 // stride))
    y, dx, grads, records = _run(block, x, r)
    assert len(records) == 1  # one add, of the gated paths; its two contributions sum to the input gradient
    np.testing.assert_allclose(records[0].input_grad, dx, rtol=1e-12, atol=1e-14)

    w = {n: torch.tensor(p.numpy(), requires_grad=True) for n, p in block.named_parameters()}
    xt = torch.tensor(x, requires_grad=True)

    def bn(h, name):
        return tf.batch_norm(h, None, None, w[f"{name}.weight"], w[f"{name}.bias"], training=True, eps=1e-5)

    branch = bn(tf.conv2d(torch.relu(bn(tf.conv2d(xt, w["conv1.weight"], stride=stride, padding=1), "bn1")),
                          w["conv2.weight"], padding=1), "bn2")
    shortcut = tf.pad(xt[:, :, ::stride, ::stride], (0, 0, 0, 0, 0, planes - 4))
    gate = torch.sigmoid(tf.conv2d(xt, w["gate.weight"], w["gate.bias"], stride=stride))
    yt = torch.relu(gate * branch + (1 - gate) * shortcut)
    (yt * torch.from_numpy(r)).sum().backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    assert set(grads) == set(w)
    for name, g in grads.items():
        np.testing.assert_allclose(g, w[name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("mode", ["learned", "open", "exclusive 0.3"])
@pytest.mark.parametrize("stride", [1, 2])
def test_gradcheck_highway_block(rng, mode, stride):
    block = HighwayBlock(2, 2 * stride, stride).double()
    if mode == "open":
        block.hold_gate(1.0, carry=1.0)
    elif mode != "learned":
        block.hold_gate(0.3)
    x = minires.randn(2, 2, 4, 4, dtype=np.float64, rng=rng, requires_grad=True)
    inputs = [x, block.conv1.weight, block.bn2.bias]
    if mode == "learned":
        inputs += [block.gate.weight, block.gate.bias]
    gradcheck(lambda x, *weights: block(x), inputs)


def test_sigmoid_function(rng):
    x = minires.tensor(np.array([-1000.0, -30.0, 0.0, 2.0, 1000.0], np.float32))
    with np.errstate(over="raise", invalid="raise"):  # no overflow for large |x|
        y = sigmoid(x).numpy()
    np.testing.assert_allclose(y, [0.0, 1 / (1 + np.exp(30.0)), 0.5, 1 / (1 + np.exp(-2.0)), 1.0], rtol=1e-6)
    assert y.dtype == np.float32
    assert issubclass(Sigmoid, minires.Function)
    gradcheck(sigmoid, [minires.randn(3, 4, dtype=np.float64, rng=rng, requires_grad=True)])


# ================================================================ highway20

def _highway20_count(num_classes=10, in_channels=3):
    """resnet20's weights (stem, 9 basic blocks with option-A shortcuts, fc) plus one 1x1 gate per block."""
    total, c = in_channels * 16 * 9 + 2 * 16, 16
    for planes in (16, 32, 64):
        for _ in range(3):
            total += c * planes * 9 + 2 * planes + planes * planes * 9 + 2 * planes  # conv-BN-conv-BN
            total += c * planes + planes                                             # the gate
            c = planes
    return total + 64 * num_classes + num_classes


def test_highway20_count_and_layout(rng):
    assert highway20().num_parameters() == _highway20_count() == 283_626
    assert highway20(num_classes=100, in_channels=1).num_parameters() == _highway20_count(100, 1)
    model = highway20(num_classes=7, in_channels=1)
    assert isinstance(model, HighwayNet)
    assert model(minires.randn(2, 1, 32, 32, rng=rng)).shape == (2, 7)
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, ResidualBlock)]
    assert [n for n, _ in blocks] == [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(3)]
    assert all(isinstance(m, HighwayBlock) for _, m in blocks)
    with minires.no_grad(), minires.record_residuals(model) as records:
        model(minires.randn(1, 1, 8, 8, rng=rng))
    assert [r.name for r in records] == [n for n, _ in blocks]   # every block ends in its residual add
    assert not any(r.identity for r in records)                  # a gated shortcut C * S(x) is no identity
    assert [m.downsample is None for _, m in blocks] == [True] * 3 + [False, True, True] * 2


def test_highway20_with_gates_open_is_resnet20(rng):
    resnet = _randomise(resnet20(), rng).eval()
    model = _randomise(highway20(), rng).eval()
    model.load_state_dict(resnet.state_dict(), strict=False)
    x = minires.randn(2, 3, 32, 32, rng=rng)
    expected = resnet(x).numpy()
    assert not np.allclose(model(x).numpy(), expected)  # the learned gates change the function
    model.hold_gates(1.0, carry=1.0)
    with minires.record_residuals(model) as records:
        np.testing.assert_array_equal(model(x).numpy(), expected)
    assert [rec.name for rec in records] == [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(3)]
    model.release_gates()
    assert not any(m.residual for m in model.modules() if isinstance(m, HighwayBlock))
    assert not np.allclose(model(x).numpy(), expected)


def test_highway20_trains(rng):
    """A few SGD steps on a fixed batch lower the loss, gradients reaching the gates."""
    model = highway20(num_classes=3)
    x = minires.randn(8, 3, 8, 8, rng=rng)
    y = minires.tensor(rng.integers(0, 3, 8))
    losses = []
    for _ in range(4):
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        losses.append(float(loss.item()))
        for p in model.parameters():
            p.data -= 0.05 * p.grad.data
    assert losses[-1] < losses[0]
    assert np.abs(model.layer3[2].gate.weight.grad.numpy()).sum() > 0
