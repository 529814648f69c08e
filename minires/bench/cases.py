"""What one timed step runs, in minires and in PyTorch: (setup, step) closures for a workload.

Both frameworks get the same step on the same numbers: the inputs are drawn
from one NumPy generator in the same order, and PyTorch's models are twins of
minires's (the same layers, shortcuts and optimiser settings).
"""
import numpy as np


def _conv_case(workload, batch, rng, make, F, no_grad):
    """(setup, step) closures for a conv workload in either framework (both speak PyTorch's API).

    ``make(array, grad)`` turns a float32 NumPy array into the framework's tensor;
    ``F`` is its functional module and ``no_grad`` its context manager. Both
    frameworks draw the same numbers in the same order.
    """
    cin, cout, side, stride = workload.shape
    grad = workload.kind == "conv_bwd"
    x = make(rng.standard_normal((batch, cin, side, side), dtype=np.float32), grad)
    w = make(rng.standard_normal((cout, cin, 3, 3), dtype=np.float32) / 3, grad)
    if not grad:
        def forward():
            with no_grad():
                F.conv2d(x, w, stride=stride, padding=1)
        return None, forward
    out = (side - 1) // stride + 1
    dy = make(rng.standard_normal((batch, cout, out, out), dtype=np.float32))
    graph = {}

    def setup():
        x.grad = w.grad = None
        graph["y"] = F.conv2d(x, w, stride=stride, padding=1)

    def backward():
        graph.pop("y").backward(dy)
    return setup, backward


def minires_case(workload, batch, rng, device="cpu"):
    """(setup, step) closures for a minires workload on float32 data; ``setup`` (or None) runs untimed."""
    from .. import functional as F
    from .. import models, no_grad, optim, tensor
    from ..backend import to_device

    def make(array, grad=False):
        return tensor(to_device(array, device), requires_grad=grad)

    if workload.kind.startswith("conv"):
        return _conv_case(workload, batch, rng, make, F, no_grad)

    model = models.get(workload.model).to(device)
    x = make(rng.standard_normal((batch, 3, workload.image, workload.image), dtype=np.float32))
    if workload.kind == "eval":
        model.eval()

        def evaluate():
            with no_grad():
                model(x)
        return None, evaluate
    labels = make(rng.integers(0, model.fc.out_features, batch))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def train_step():
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return None, train_step


def _torch_models(torch):
    """PyTorch twins of minires's resnet20 (CIFAR layout, option-A shortcuts) and torchvision's resnet50."""
    nn, F = torch.nn, torch.nn.functional

    class BasicBlockA(nn.Module):
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + S(x)), S subsampling and zero-padding channels."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            shortcut = x[:, :, ::self.stride, ::self.stride]
            if self.extra:
                shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
            return self.relu(out + shortcut)

    class Bottleneck(nn.Module):
        """torchvision's Bottleneck: 1x1, 3x3 (with the stride), 1x1 x4, projection where the shape changes."""

        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != planes * 4:
                self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes * 4))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    def stages(block, widths, counts, cin, expansion):
        layers = []
        for i, (planes, n) in enumerate(zip(widths, counts)):
            for j in range(n):
                layers.append(block(cin, planes, 2 if i > 0 and j == 0 else 1))
                cin = planes * expansion
        return layers

    def resnet20():
        return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                             *stages(BasicBlockA, (16, 32, 64), (3, 3, 3), 16, 1),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def resnet50():
        return nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, 2, 1), *stages(Bottleneck, (64, 128, 256, 512), (3, 4, 6, 3), 64, 4),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))

    return {"resnet20": resnet20, "resnet50": resnet50}


def torch_case(workload, batch, rng, device="cpu"):
    """(setup, step) closures for the same workload in PyTorch."""
    import torch
    F = torch.nn.functional

    def make(array, grad=False):
        return torch.from_numpy(array).to(device).requires_grad_(grad)

    if workload.kind.startswith("conv"):
        return _conv_case(workload, batch, rng, make, F, torch.no_grad)

    model = _torch_models(torch)[workload.model]().to(device)
    x = make(rng.standard_normal((batch, 3, workload.image, workload.image), dtype=np.float32))
    if workload.kind == "eval":
        model.eval()

        def evaluate():
            with torch.no_grad():
                model(x)
        return None, evaluate
    labels = make(rng.integers(0, model[-1].out_features, batch))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def train_step():
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return None, train_step
