"""Residual blocks as a new user writes them, e.g. ported from a Keras blog: no minires.models base class.

The viewing tools and ``record_residuals(model)`` must recognise them by what
they do (a forward that ends in ``F.residual_add``), whatever their names.
"""
from minires import functional as F
from minires import nn


class PortedBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut: the identity, or a projection called ``proj``."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.out_channels = cout
        self.c1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.n1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.n2 = nn.BatchNorm2d(cout)
        self.proj = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else None)

    def branch(self, x):
        return self.n2(self.c2(F.relu(self.n1(self.c1(x)))))

    def forward(self, x):
        return F.residual_add(self.branch(x), x if self.proj is None else self.proj(x))


class PaddedBlock(PortedBlock):
    """The same branch; the shortcut computed by a bare functional call (no module to describe)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__(cin, cout, stride)
        self.proj = None

    def forward(self, x):
        out = self.branch(x)
        return F.residual_add(out, F.pad_channels(x, out.shape[1], x.shape[2] // out.shape[2]))


class PortedNet(nn.Module):
    """A 3x3 entry convolution, the given blocks in ``body``, global average pooling and a classifier."""

    def __init__(self, blocks):
        super().__init__()
        self.entry = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(blocks[-1].out_channels, 10)

    def forward(self, x):
        return self.classifier(F.flatten(self.pool(self.body(self.entry(x)))))
