"""Ported ResNet code (issue 21): option A's four forms, the pre-activation options, the CIFAR stem.

Option A maps each stride x stride window to one pixel ("subsample": its
top-left pixel; "avg": its mean) and adds zero channels ("append": after the
input's; "centre": (out - in) // 2 before, the rest after). Each form is
checked against a loop over every output element, against finite differences
in float64 (the output projected onto a fixed random tensor), and against the
same maps written in PyTorch, including the two ported codes' own lines.
"""
import numpy as np
import pytest

import minires
import minires.functional as F
from minires import Tensor, models, nn
from minires.gradcheck import gradcheck
from minires.models import BasicBlock, PadChannels, PreActBlock, PreActBottleneck, ResidualBlock
from minires.residual import PadChannelsFunction, RollChannelsFunction, WindowMeanFunction

VARIANTS = [(pool, channels) for pool in ("subsample", "avg") for channels in ("append", "centre")]
VARIANT_IDS = [f"{p}-{c}" for p, c in VARIANTS]
CASES = [((2, 3, 5, 5), 8, 2), ((1, 2, 6, 4), 6, 2), ((2, 3, 7, 8), 4, 3), ((1, 4, 4, 4), 4, 1),
         ((2, 2, 3, 4), 5, 1)]
CASE_IDS = ["3to8-s2-odd-size-odd-extra", "2to6-s2", "3to4-s3-short-windows", "same-shape", "2to5-s1"]


def pad_loop(x, out_channels, stride, pool, channels):
    """y[n, first + c, i, j] = the (i, j) window of x's channel c, reduced; zero in the added channels."""
    n, c, h, w = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    first = (out_channels - c) // 2 if channels == "centre" else 0
    y = np.zeros((n, out_channels, oh, ow), dtype=x.dtype)
    for b, ch, i, j in np.ndindex(n, c, oh, ow):
        window = x[b, ch, i * stride:(i + 1) * stride, j * stride:(j + 1) * stride]
        y[b, first + ch, i, j] = window[0, 0] if pool == "subsample" else window.mean()
    return y


def torch_pad(torch, tx, out_channels, stride, pool, channels):
    TF = torch.nn.functional
    pooled = (tx[:, :, ::stride, ::stride] if pool == "subsample"
              else TF.avg_pool2d(tx, stride, stride, ceil_mode=True))  # a short window: the mean of what it holds
    extra = out_channels - tx.shape[1]
    before = extra // 2 if channels == "centre" else 0
    return TF.pad(pooled, (0, 0, 0, 0, before, extra - before))


# ---------------------------------------------------------------- F.pad_channels

@pytest.mark.parametrize("pool, channels", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("shape, out_channels, stride", CASES, ids=CASE_IDS)
def test_forward_matches_the_loop(shape, out_channels, stride, pool, channels, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    y = F.pad_channels(Tensor(x), out_channels, stride, pool=pool, channels=channels)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), pad_loop(x, out_channels, stride, pool, channels), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pool, channels", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("shape, out_channels, stride", CASES, ids=CASE_IDS)
def test_backward_matches_finite_differences(shape, out_channels, stride, pool, channels, rng):
    x = Tensor(rng.standard_normal(shape), requires_grad=True)
    gradcheck(lambda t: F.pad_channels(t, out_channels, stride, pool=pool, channels=channels), [x],
              atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("pool, channels", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("shape, out_channels, stride", CASES, ids=CASE_IDS)
def test_forward_and_backward_match_torch(shape, out_channels, stride, pool, channels, rng, torch):
    _same_as_torch(lambda x: F.pad_channels(x, out_channels, stride, pool=pool, channels=channels),
                   lambda tx: torch_pad(torch, tx, out_channels, stride, pool, channels),
                   rng.standard_normal(shape), rng, torch, rtol=1e-12, atol=1e-14)


def _same_as_torch(ours, theirs, x_np, rng, torch, rtol, atol):
    """ours(x) and theirs(x) agree in value and in the input gradient of a random projection of the output."""
    x, tx = Tensor(x_np.copy(), requires_grad=True), torch.tensor(x_np, requires_grad=True)
    y, ty = ours(x), theirs(tx)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=rtol, atol=atol)
    R = rng.standard_normal(y.shape)
    (y * Tensor(R)).sum().backward()
    (ty * torch.tensor(R)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=10 * rtol, atol=atol)


def test_the_ported_codes_own_lines(rng, torch):
    """akamaster/pytorch_resnet_cifar10's lambda and tensorflow/models' research/resnet lines, as written there."""
    TF = torch.nn.functional
    planes, x_np = 32, rng.standard_normal((2, 16, 8, 8))
    tx = torch.tensor(x_np)
    pytorch_cifar = TF.pad(tx[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0)
    ours = F.pad_channels(Tensor(x_np), planes, 2, channels="centre").numpy()
    np.testing.assert_array_equal(ours, pytorch_cifar.numpy())
    in_filter, out_filter = 16, 32  # tf.nn.avg_pool(x, stride, stride, 'VALID'), then tf.pad of the channels
    tensorflow = TF.pad(TF.avg_pool2d(tx, 2, 2), (0, 0, 0, 0, (out_filter - in_filter) // 2,
                                                  (out_filter - in_filter) // 2))
    ours = F.pad_channels(Tensor(x_np), out_filter, 2, pool="avg", channels="centre").numpy()
    np.testing.assert_allclose(ours, tensorflow.numpy(), rtol=1e-12, atol=1e-15)


def test_an_odd_difference_puts_the_extra_zero_channel_after():
    x = minires.ones(1, 2, 2, 2)
    y = F.pad_channels(x, 5, channels="centre").numpy()[0, :, 0, 0]
    assert list(y) == [0, 1, 1, 0, 0]  # (5 - 2) // 2 = 1 before, 2 after
    assert list(F.pad_channels(x, 5).numpy()[0, :, 0, 0]) == [1, 1, 0, 0, 0]


def test_the_default_is_the_exercise_op_alone_and_the_variants_compose_it(rng):
    x = Tensor(rng.standard_normal((1, 2, 4, 4)), requires_grad=True)
    assert type(F.pad_channels(x, 4, 2).grad_fn) is PadChannelsFunction
    centre = F.pad_channels(x, 4, 2, channels="centre")
    assert type(centre.grad_fn) is RollChannelsFunction
    assert type(centre.grad_fn.inputs[0].grad_fn) is PadChannelsFunction
    avg = F.pad_channels(x, 4, 2, pool="avg")
    assert type(avg.grad_fn) is PadChannelsFunction and type(avg.grad_fn.inputs[0].grad_fn) is WindowMeanFunction
    assert type(F.pad_channels(x, 4, 1, pool="avg").grad_fn) is PadChannelsFunction  # a 1x1 window: nothing to average


def test_window_mean_spreads_the_gradient_over_each_window():
    x = Tensor(np.arange(9.0).reshape(1, 1, 3, 3), requires_grad=True)
    y = WindowMeanFunction.apply(x, size=2)
    np.testing.assert_array_equal(y.numpy()[0, 0], [[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2], [(6 + 7) / 2, 8]])
    y.backward(Tensor(np.ones((1, 1, 2, 2))))
    np.testing.assert_array_equal(x.grad.numpy()[0, 0], [[0.25, 0.25, 0.5], [0.25, 0.25, 0.5], [0.5, 0.5, 1]])


@pytest.mark.parametrize("kwargs, message", [
    ({"pool": "max"}, r"^pad_channels: pool must be one of 'subsample', 'avg'; got 'max'$"),
    ({"channels": "middle"}, r"^pad_channels: channels must be one of 'append', 'centre'; got 'middle'$"),
    ({"channels": "center"}, r"'append', 'centre'; got 'center'"),
])
def test_bad_choices_name_the_op_and_the_allowed_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        F.pad_channels(minires.randn(1, 2, 4, 4), 4, 2, **kwargs)


def test_bad_choices_in_a_layer_name_the_layer():
    with pytest.raises(ValueError, match=r"^PadChannels: pool must be one of 'subsample', 'avg'; got 'mean'"):
        PadChannels(8, 2, pool="mean")
    with pytest.raises(ValueError, match=r"^BasicBlock: pad_channels must be one of 'append', 'centre'; got 'both'"):
        BasicBlock(4, 8, 2, shortcut="A", pad_channels="both")
    with pytest.raises(ValueError, match=r"^Bottleneck: pad_pool must be one of"):
        models.resnet50(shortcut="A", pad_pool="max")
    with pytest.raises(ValueError, match=r"^BasicBlock: shortcut must be one of 'A', 'B', 'C'; got 'D'"):
        models.resnet20(shortcut="D")


# ---------------------------------------------------------------- the option-A shortcut in blocks and models

@pytest.mark.parametrize("pool, channels", VARIANTS, ids=VARIANT_IDS)
def test_records_split_the_input_gradient_through_each_variant(pool, channels, rng):
    minires.manual_seed(0)
    block = BasicBlock(3, 8, 2, shortcut="A", pad_pool=pool, pad_channels=channels).double()
    assert (block.downsample.pool, block.downsample.channels) == (pool, channels)
    x = Tensor(rng.standard_normal((2, 3, 5, 5)), requires_grad=True)
    with minires.record_residuals(block) as records:
        y = block(x)
        (y * Tensor(rng.standard_normal(y.shape))).sum().backward()
    (r,) = records
    assert r.block == "BasicBlock" and r.identity is False and r.shortcut_module == "downsample"
    np.testing.assert_allclose(r.via_shortcut + r.via_residual, x.grad.numpy(), rtol=1e-12, atol=1e-13)
    x_s = Tensor(x.numpy().copy(), requires_grad=True)  # the shortcut's backward, run alone
    F.pad_channels(x_s, 8, 2, pool=pool, channels=channels).backward(Tensor(r.grad_shortcut))
    np.testing.assert_allclose(r.via_shortcut, x_s.grad.numpy(), rtol=1e-14, atol=1e-15)


def test_the_four_forms_share_parameters_and_state_dict(rng):
    minires.manual_seed(3)
    default = models.resnet20(num_classes=4)
    state = {k: v.numpy() for k, v in default.state_dict().items()}
    x = Tensor(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    outputs = []
    for pool, channels in VARIANTS:
        model = models.resnet20(num_classes=4, pad_pool=pool, pad_channels=channels)
        assert model.num_parameters() == default.num_parameters() == models.plain20(num_classes=4).num_parameters()
        assert list(model.state_dict()) == list(state)
        model.load_state_dict(state)
        outputs.append(model.eval()(x).numpy())
        pads = [m for m in model.modules() if isinstance(m, PadChannels)]
        assert len(pads) == 2 and all((m.pool, m.channels) == (pool, channels) for m in pads)
    np.testing.assert_array_equal(outputs[0], default.eval()(x).numpy())  # the default is the model as before
    assert not np.allclose(outputs[0], outputs[3])  # the shortcut's form changes what the weights compute


def _torch_cifar_block(torch, in_planes, planes, stride):
    """akamaster/pytorch_resnet_cifar10's BasicBlock with option A, names as in minires."""
    tnn, TF = torch.nn, torch.nn.functional

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)

        def forward(self, x):
            out = TF.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return TF.relu(out + TF.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0))

    return Block().double()


def _torch_tf_unit(torch, in_filter, out_filter, stride, bottleneck):
    """tensorflow/models research/resnet's residual units (activate_before_residual=False), in PyTorch."""
    tnn, TF = torch.nn, torch.nn.functional
    mid = out_filter // 4 if bottleneck else out_filter

    class Unit(tnn.Module):
        def __init__(self):
            super().__init__()
            self.bn1 = tnn.BatchNorm2d(in_filter, eps=1e-3, momentum=0.1)  # TF: decay 0.9, epsilon 0.001
            if bottleneck:
                self.conv1 = tnn.Conv2d(in_filter, mid, 1, stride, bias=False)  # the stride on the first 1x1
                self.bn2 = tnn.BatchNorm2d(mid, eps=1e-3)
                self.conv2 = tnn.Conv2d(mid, mid, 3, 1, 1, bias=False)
                self.bn3 = tnn.BatchNorm2d(mid, eps=1e-3)
                self.conv3 = tnn.Conv2d(mid, out_filter, 1, bias=False)
                self.downsample = tnn.Conv2d(in_filter, out_filter, 1, stride, bias=False)  # 'project'
            else:
                self.conv1 = tnn.Conv2d(in_filter, mid, 3, stride, 1, bias=False)
                self.bn2 = tnn.BatchNorm2d(mid, eps=1e-3)
                self.conv2 = tnn.Conv2d(mid, mid, 3, 1, 1, bias=False)

        def forward(self, x):
            orig_x = x  # activate_before_residual=False: the shortcut reads the raw input
            act = lambda t: TF.leaky_relu(t, 0.1)  # noqa: E731  relu_leakiness 0.1
            out = self.conv1(act(self.bn1(x)))
            out = self.conv2(act(self.bn2(out)))
            if bottleneck:
                return self.conv3(act(self.bn3(out))) + self.downsample(orig_x)
            extra = out_filter - in_filter
            pooled = TF.avg_pool2d(orig_x, stride, stride)
            return out + TF.pad(pooled, (0, 0, 0, 0, extra // 2, extra // 2))

    return Unit().double()


def leaky(x):
    """LeakyReLU(0.1) from relu alone (F.leaky_relu may not exist here)."""
    return F.relu(x) - F.relu(-x) * 0.1


def _compare_with_torch(ours, theirs, x_np, rng, torch):
    """Copy torch's weights into ours, run both in training mode, compare the outputs and the input gradients."""
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    _same_as_torch(ours, theirs, x_np, rng, torch, rtol=1e-10, atol=1e-10)


def test_the_pytorch_cifar_block_is_basicblock_with_centred_channels(rng, torch):
    torch.manual_seed(0)
    ours = BasicBlock(16, 32, 2, shortcut="A", pad_channels="centre").double()
    _compare_with_torch(ours, _torch_cifar_block(torch, 16, 32, 2), rng.standard_normal((2, 16, 8, 8)), rng, torch)


@pytest.mark.parametrize("bottleneck", [False, True], ids=["residual", "bottleneck_residual"])
def test_tensorflows_cifar_units_are_preact_blocks_with_options(bottleneck, rng, torch):
    torch.manual_seed(1)
    if bottleneck:
        ours = PreActBottleneck(16, 8, 2, shortcut="B", stride_on_1x1=True, shortcut_input="raw",
                                activation=leaky, eps=1e-3)
    else:
        ours = PreActBlock(16, 32, 2, shortcut="A", pad_pool="avg", pad_channels="centre", shortcut_input="raw",
                           activation=leaky, eps=1e-3)
    theirs = _torch_tf_unit(torch, 16, 32, 2, bottleneck)
    _compare_with_torch(ours.double(), theirs, rng.standard_normal((2, 16, 8, 8)), rng, torch)


# ---------------------------------------------------------------- the pre-activation options

def test_stride_position_of_the_preact_bottleneck():
    v15, v1 = PreActBottleneck(64, 32, stride=2), PreActBottleneck(64, 32, stride=2, stride_on_1x1=True)
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))
    assert (v1.conv1.stride, v1.conv2.stride) == ((2, 2), (1, 1))
    x = minires.randn(1, 64, 8, 8)
    assert v15(x).shape == v1(x).shape == (1, 128, 4, 4)
    assert v15.num_parameters() == v1.num_parameters()


@pytest.mark.parametrize("block_class", [PreActBlock, PreActBottleneck])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_shortcut_input_chooses_what_the_projection_or_pad_reads(block_class, shortcut, rng):
    seen = {}
    x = Tensor(rng.standard_normal((2, 8, 6, 6)).astype(np.float32))
    for choice in ("preact", "raw"):
        block = block_class(8, 16, 2, shortcut=shortcut, shortcut_input=choice)
        block.downsample.register_forward_hook(lambda m, args, out, c=choice: seen.__setitem__(c, args[0]))
        block(x)
        if choice == "raw":
            assert seen["raw"] is x
        else:
            np.testing.assert_array_equal(seen["preact"].numpy(), block.relu(block.bn1(x)).numpy())
    same = block_class(16, 16 // block_class.expansion, 1, shortcut_input="raw")
    assert same.downsample is None
    with minires.record_residuals(same) as records:
        same(minires.randn(2, 16, 4, 4))
    assert records[0].identity is True  # the identity always takes x


class CountingAct(nn.Module):
    """An activation of the test's own: LeakyReLU(0.1) that counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return leaky(x)


@pytest.mark.parametrize("block_class, calls", [(PreActBlock, 2), (PreActBottleneck, 3)])
def test_the_activation_is_any_module_module_class_or_function(block_class, calls):
    act = CountingAct()
    block = block_class(8, 8 // block_class.expansion, activation=act)
    y = block(minires.randn(2, 8, 4, 4))
    assert block.relu is act and act.calls == calls and y.shape == (2, 8, 4, 4)
    assert isinstance(block_class(8, 8 // block_class.expansion, activation=CountingAct).relu, CountingAct)
    wrapped = block_class(8, 8 // block_class.expansion, activation=leaky).relu
    assert type(wrapped).__name__ == "Activation" and "leaky" in repr(wrapped)
    assert isinstance(block_class(8, 8 // block_class.expansion).relu, nn.ReLU)  # the default
    with pytest.raises(TypeError, match=rf"^{block_class.__name__}: activation must be"):
        block_class(8, 8 // block_class.expansion, activation="leaky")


@pytest.mark.parametrize("block_class", [PreActBlock, PreActBottleneck])
def test_eps_and_momentum_reach_every_batch_norm(block_class):
    block = block_class(8, 8, eps=1e-3, momentum=0.01)
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == (2 if block_class is PreActBlock else 3)
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)
    assert all(m.eps == 1e-5 and m.momentum == 0.1
               for m in block_class(8, 8).modules() if isinstance(m, nn.BatchNorm2d))


def test_bad_preact_choices_name_the_layer():
    with pytest.raises(ValueError, match=r"^PreActBottleneck: shortcut_input must be one of 'preact', 'raw'; got 'x'"):
        PreActBottleneck(8, 4, shortcut_input="x")
    with pytest.raises(ValueError, match=r"^PreActCifarResNet: stride_on_1x1 needs bottleneck blocks"):
        models.preact_resnet110(stride_on_1x1=True)


def test_tensorflow_style_preact_cifar_net_builds_records_and_copies_its_activation(rng):
    act = CountingAct()
    model = models.PreActCifarResNet(PreActBottleneck, 2, num_classes=3, shortcut="A", pad_pool="avg",
                                     pad_channels="centre", shortcut_input="raw", activation=act, eps=1e-3,
                                     stride_on_1x1=True)
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    acts = [b.relu for b in blocks] + [model.relu]
    assert len({id(a) for a in acts}) == len(acts) == 7 and all(isinstance(a, CountingAct) for a in acts)
    assert model.bn.eps == 1e-3 and all(b.conv1.stride == (2, 2) for b in (model.layer2[0], model.layer3[0]))
    x = Tensor(rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    with minires.record_residuals(model) as records:
        F.cross_entropy(model(x), minires.tensor([0, 2])).backward()
    assert [r.block for r in records] == [n for n, m in model.named_modules() if isinstance(m, ResidualBlock)]
    assert all(r.via_shortcut is not None and r.via_residual is not None for r in records)
    assert all(a.calls == (3 if a is not model.relu else 1) for a in acts)


def test_a_block_of_ones_own_still_fits_a_model_built_with_the_defaults():
    class MyBlock(BasicBlock):
        def __init__(self, in_planes, planes, stride=1, shortcut="B", residual=True):  # no option-A keywords
            super().__init__(in_planes, planes, stride, shortcut, residual)

    assert models.CifarResNet(1, block=MyBlock).num_parameters() == models.resnet8().num_parameters()


# ---------------------------------------------------------------- models.ResNet's CIFAR stem

def test_cifar_stem_is_a_3x3_stride_1_conv_without_max_pool():
    ours = models.resnet18(stem="cifar", num_classes=10)
    assert ours.num_parameters() == 11_173_962  # kuangliu/pytorch-cifar's ResNet18
    assert (ours.conv1.kernel_size, ours.conv1.stride, ours.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(ours.maxpool, nn.Identity)
    imagenet = models.resnet18(num_classes=10)
    assert list(ours.state_dict()) == list(imagenet.state_dict())
    shapes = {}
    ours.layer4.register_forward_hook(lambda m, args, out: shapes.__setitem__("layer4", out.shape))
    with minires.no_grad():
        assert ours(minires.randn(1, 3, 32, 32)).shape == (1, 10)
    assert shapes["layer4"] == (1, 512, 4, 4)
    with pytest.raises(ValueError, match=r"^ResNet: stem must be one of 'imagenet', 'cifar'; got 'CIFAR'"):
        models.resnet18(stem="CIFAR")


def test_cifar_stem_matches_the_pytorch_cifar_resnet18(rng, torch):
    """torchvision's resnet18 with conv1 a 3x3 stride 1 and no max pool: the common PyTorch CIFAR recipe."""
    reference = pytest.importorskip("test_torchvision_equivalence")
    torch.manual_seed(0)
    theirs = reference.TorchResNet(reference.TorchBasicBlock, [2, 2, 2, 2], num_classes=10)
    theirs.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    theirs.maxpool = torch.nn.Identity()
    theirs.eval()
    ours = models.resnet18(stem="cifar", num_classes=10).eval()
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    got = ours(Tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
