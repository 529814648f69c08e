"""minires's ResNet-18 and ResNet-50 against torchvision's architecture, rebuilt here in torch.nn.

torchvision itself is not a dependency: the reference below follows
torchvision/models/resnet.py's structure and names (stride on the 3x3 of the
bottleneck, ``downsample = Sequential(conv1x1, BatchNorm2d)``). Weights travel
from torch to minires through an .npz written by ``minires.save``, as a user's
would.
"""
import numpy as np
import pytest

import minires
from minires import models

torch = pytest.importorskip("torch")
tnn = torch.nn


def conv3x3(in_planes, out_planes, stride=1):
    return tnn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return tnn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class TorchBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TorchBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)  # torchvision's "v1.5": the stride on the 3x3
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = tnn.BatchNorm2d(planes * self.expansion)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TorchResNet(tnn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = tnn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, tnn.Conv2d):
                tnn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = tnn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                        tnn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


REFERENCES = {
    "resnet18": lambda: TorchResNet(TorchBasicBlock, [2, 2, 2, 2]),
    "resnet50": lambda: TorchResNet(TorchBottleneck, [3, 4, 6, 3]),
}
STATE_SIZES = {"resnet18": 122, "resnet50": 320}  # len(torchvision.models.X().state_dict())


@pytest.fixture(scope="module", params=sorted(REFERENCES))
def pair(request):
    """(name, the torch reference with randomised weights and BN state, a fresh minires model)."""
    name = request.param
    torch.manual_seed(0)
    theirs = REFERENCES[name]().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in theirs.modules():
            if isinstance(m, tnn.BatchNorm2d):  # non-trivial statistics and affine maps in every BN
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=generator))
                m.weight.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=generator))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=generator))
                m.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=generator)))
    return name, theirs, models.get(name).eval()


def test_state_dict_keys_shapes_and_dtypes_match(pair):
    name, theirs, ours = pair
    reference = theirs.state_dict()
    state = ours.state_dict()
    assert len(reference) == STATE_SIZES[name]
    assert list(state) == list(reference)  # the same keys, in the same order
    for key, value in reference.items():
        assert state[key].shape == tuple(value.shape), key
        assert state[key].dtype == value.numpy().dtype, key
    assert state["layer2.0.downsample.1.num_batches_tracked"].dtype == np.int64


def test_outputs_match_after_an_npz_round_trip(pair, tmp_path):
    name, theirs, ours = pair
    reference = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
    minires.save(reference, tmp_path / f"{name}.npz")
    loaded = minires.load(tmp_path / f"{name}.npz")
    ours.load_state_dict(loaded)
    for key, value in ours.state_dict().items():  # every value arrived unchanged
        assert value.numpy().tobytes() == reference[key].tobytes(), key

    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    got = ours(minires.tensor(x)).numpy()
    assert got.shape == expected.shape == (2, 1000)
    assert np.std(expected) > 0.1  # a signal that reached the head, not a constant
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
