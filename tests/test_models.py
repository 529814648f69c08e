"""The ResNet family: parameter counts from the papers and torchvision, names, shortcuts, records."""
import numpy as np
import pytest

import minires
import minires.functional as F
from minires import models, nn
from minires.models import BasicBlock, Bottleneck, PadChannels, PreActBlock, PreActBottleneck

# torchvision's figures for num_classes=1000, and the CIFAR figures of He et al. (option A)
PARAMETERS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
    "resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
    "resnet110": 1_727_962, "resnet1202": 19_421_274,
    "plain20": 269_722, "plain32": 464_154, "plain44": 658_586, "plain56": 853_018, "plain110": 1_727_962,
}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_counts(name):
    assert models.get(name).num_parameters() == PARAMETERS[name]


def _preact_count(bottleneck, n, classes=10):
    """Count the pre-activation CIFAR net's weights from its description, independently of the code."""
    total = 3 * 16 * 9  # stem conv
    in_planes = 16
    for i, planes in enumerate((16, 32, 64)):
        for j in range(n):
            out = planes * (4 if bottleneck else 1)
            if bottleneck:
                total += 2 * in_planes + in_planes * planes          # bn1, 1x1
                total += 2 * planes + planes * planes * 9            # bn2, 3x3
                total += 2 * planes + planes * out                   # bn3, 1x1
            else:
                total += 2 * in_planes + in_planes * planes * 9 + 2 * planes + planes * planes * 9
            if in_planes != out or (i > 0 and j == 0):
                total += in_planes * out                              # 1x1 projection
            in_planes = out
    return total + 2 * in_planes + in_planes * classes + classes     # final BN, fc


@pytest.mark.parametrize("name, bottleneck, n, approx", [
    ("preact_resnet110", False, 18, 1.7e6), ("preact_resnet164", True, 18, 1.7e6),
    ("preact_resnet1001", True, 111, 10.2e6)])
def test_preact_counts(name, bottleneck, n, approx):
    count = models.get(name).num_parameters()
    assert count == _preact_count(bottleneck, n)
    assert abs(count - approx) / approx < 0.02  # the papers' tables: 1.7M, 1.7M, 10.2M


def test_torchvision_state_dict_names():
    state = models.resnet50().state_dict()
    for key, shape in [("conv1.weight", (64, 3, 7, 7)), ("bn1.running_mean", (64,)),
                       ("bn1.num_batches_tracked", ()), ("layer1.0.conv1.weight", (64, 64, 1, 1)),
                       ("layer1.0.conv3.weight", (256, 64, 1, 1)),
                       ("layer2.0.conv2.weight", (128, 128, 3, 3)),
                       ("layer2.0.downsample.0.weight", (512, 256, 1, 1)),
                       ("layer2.0.downsample.1.running_var", (512,)),
                       ("layer4.2.bn3.weight", (2048,)), ("fc.weight", (1000, 2048)), ("fc.bias", (1000,))]:
        assert state[key].shape == shape, key
    assert "layer1.1.downsample.0.weight" not in state
    assert len(state) == 320  # torchvision's resnet50 state dict has 320 entries
    assert len(models.resnet18().state_dict()) == 122  # and resnet18's 122


def test_bottleneck_stride_placement():
    v15 = Bottleneck(64, 32, stride=2)
    v1 = Bottleneck(64, 32, stride=2, stride_on_1x1=True)
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))
    assert (v1.conv1.stride, v1.conv2.stride) == ((2, 2), (1, 1))
    x = minires.randn(1, 64, 8, 8)
    assert v15(x).shape == v1(x).shape == (1, 128, 4, 4)


def test_shortcut_options():
    # same shape: A and B are identity, C projects
    assert BasicBlock(16, 16, 1, shortcut="A").downsample is None
    assert BasicBlock(16, 16, 1, shortcut="B").downsample is None
    c = BasicBlock(16, 16, 1, shortcut="C").downsample
    assert isinstance(c, nn.Sequential) and isinstance(c[0], nn.Conv2d) and isinstance(c[1], nn.BatchNorm2d)
    # shape change: A pads (no parameters), B projects
    a = BasicBlock(16, 32, 2, shortcut="A")
    assert isinstance(a.downsample, PadChannels)
    b = BasicBlock(16, 32, 2, shortcut="B")
    assert b.num_parameters() - a.num_parameters() == 16 * 32 + 2 * 32
    with pytest.raises(ValueError, match="shortcut"):
        BasicBlock(16, 16, shortcut="D")


def test_option_a_shortcut_is_subsample_and_zero_pad():
    block = BasicBlock(2, 4, 2, shortcut="A")
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    s = block.shortcut(minires.tensor(x)).numpy()
    np.testing.assert_array_equal(s[:, :2], x[:, :, ::2, ::2])
    np.testing.assert_array_equal(s[:, 2:], 0)


def test_cifar_resnet_option_a_and_option_b():
    a = models.resnet20()
    assert sum(isinstance(m, PadChannels) for m in a.modules()) == 2
    b = models.resnet20(shortcut="B")
    assert b.num_parameters() == a.num_parameters() + (16 * 32 + 64) + (32 * 64 + 128)


def _blocks(model):
    return [m for m in model.modules() if isinstance(m, models.ResidualBlock)]


def test_zero_init_residual_makes_every_block_its_shortcut():
    minires.manual_seed(0)
    model = models.resnet18(zero_init_residual=True, num_classes=4)
    for block in _blocks(model):
        assert np.all(block.bn2.weight.numpy() == 0)
    block = model.layer1[0]
    model.eval()
    x = minires.tensor(np.abs(np.random.default_rng(0).standard_normal((1, 64, 8, 8))).astype(np.float32))
    # with bn2's weight and bias zero the branch is exactly zero: y = relu(x) = x for x >= 0
    np.testing.assert_array_equal(block(x).numpy(), x.numpy())
    bottleneck = models.resnet50(zero_init_residual=True)
    assert all(np.all(b.bn3.weight.numpy() == 0) for b in _blocks(bottleneck))
    default = models.resnet18()
    assert all(np.all(b.bn2.weight.numpy() == 1) for b in _blocks(default))


@pytest.mark.parametrize("name, blocks", [("resnet20", 9), ("resnet18", 8), ("resnet50", 16),
                                          ("preact_resnet164", 54), ("plain20", 9)])
def test_every_block_records_through_residual_add(name, blocks):
    minires.manual_seed(1)
    size = 32 if name != "resnet50" and name != "resnet18" else 64
    model = models.get(name, num_classes=3)
    x = minires.randn(2, 3, size, size)
    with minires.record_residuals(model) as records:
        F.cross_entropy(model(x), minires.tensor([0, 2])).backward()
    assert len(records) == blocks
    expected = [n for n, m in model.named_modules() if isinstance(m, models.ResidualBlock)]
    assert [r.name for r in records] == [r.block for r in records] == expected
    for r in records:
        if name.startswith("plain"):  # F.residual_add(out, None): recorded, nothing through a shortcut
            assert not r.has_shortcut and r.via_shortcut is None and r.via_residual is None
        else:
            assert r.has_shortcut and r.via_shortcut is not None and r.via_residual is not None
            assert r.via_shortcut.shape == r.input_shape


def test_plain_twin_has_same_layers_without_shortcuts():
    res, plain = models.resnet20(), models.plain20()
    assert [k for k in res.state_dict()] == [k for k in plain.state_dict()]
    assert all(not b.residual and b.downsample is None for b in _blocks(plain))


def test_preact_block_has_nothing_after_the_add():
    minires.manual_seed(2)
    block = PreActBlock(4, 4)
    y = block(minires.randn(2, 4, 5, 5)).numpy()
    assert (y < 0).any()  # no ReLU after the addition
    assert PreActBottleneck(16, 4, 2).downsample is not None


@pytest.mark.parametrize("name, size", [("resnet20", 8), ("resnet18", 32), ("preact_resnet110", 8),
                                        ("plain20", 8)])
def test_models_run_on_one_channel_data(name, size):
    model = models.get(name, in_channels=1, num_classes=7)
    out = model(minires.randn(2, 1, size, size))
    assert out.shape == (2, 7) and out.dtype == np.float32


def test_wrong_channels_error_names_the_layer():
    with pytest.raises(minires.ShapeError, match=r"^Conv2d\(conv1\): expected 3 input channels, got 1"):
        models.resnet20()(minires.randn(2, 1, 32, 32))


def test_registry():
    names = models.list()
    assert {"resnet18", "resnet1202", "plain110", "preact_resnet1001"} <= set(names)
    with pytest.raises(ValueError, match="unknown model 'resnet21'"):
        models.get("resnet21")


def test_resnet1202_forward_and_backward_without_recursion_error():
    minires.manual_seed(3)
    model = models.resnet1202()
    x = minires.randn(2, 3, 32, 32, requires_grad=True)
    loss = F.cross_entropy(model(x), minires.tensor([3, 7]))
    loss.backward()
    assert np.isfinite(loss.item())
    assert x.grad is not None and np.isfinite(x.grad.numpy()).all()
    assert model.conv1.weight.grad is not None
