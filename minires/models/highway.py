"""Highway-style gated blocks (Srivastava et al. 2015; He et al. 2016, section 3.1 "exclusive gating").

A gated block scales its two paths by a learned gate instead of adding them:

    y = relu(T(x) * F(x) + C(x) * S(x)),   T(x) = sigmoid(W_g x + b_g),   C(x) = 1 - T(x)

F is the basic block's conv-BN-ReLU-conv-BN branch, S the option-A shortcut
(identity, or subsample and zero-pad where the shape changes) and T a 1x1
convolution with a bias, one gate value per output channel and position. A
negative ``gate_bias`` starts the block mostly carrying its input.

``hold_gate(t, carry=c)`` replaces T and C by constants, which makes the
block's relation to its relatives exact:

    hold_gate(1.0, carry=1.0)   both paths fully open: relu(F(x) + S(x)), the residual
                                block (BasicBlock, option A)
    hold_gate(1.0)              exclusive gating with T = 1: relu(F(x)), the plain block
    hold_gate(0.0)              exclusive gating with T = 0: relu(S(x)), the branch is switched off
    release_gate()              back to the learned T(x) and C = 1 - T(x)

Note that exclusive gating alone never gives the residual block: T = C = 1
is outside it, which is He et al.'s point about gated shortcuts.

The block still ends in ``F.residual_add``, of the gated branch T * F(x) and
the gated shortcut C * S(x), so its record shows what the gate does to the
"1": the block input receives C * g through the shortcut, not g.
"""
from .. import functional as F
from .. import nn
from .blocks import ResidualBlock, conv3x3, make_shortcut


class HighwayBlock(ResidualBlock):
    """y = relu(T(x) * F(x) + (1 - T(x)) * S(x)) with a learned 1x1-conv sigmoid gate T.

    The branch (conv1, bn1, conv2, bn2) and the shortcut (``downsample``) are
    named as in ``BasicBlock``, so a BasicBlock's state dict loads into it
    with only the gate (``gate.weight``, ``gate.bias``) missing.
    """

    expansion = 1

    def __init__(self, in_planes, planes, stride=1, gate_bias=-2.0):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = make_shortcut("A", in_planes, planes, stride)
        self.gate = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True)
        nn.init.constant_(self.gate.bias, gate_bias)
        self.stride, self.gate_bias = stride, gate_bias
        self.held = None  # None: the learned gate; else the constants (T, C)

    @property
    def residual(self):
        """True while both paths are held open: the block then computes exactly the residual block."""
        return self.held == (1.0, 1.0)

    def shortcut(self, x):
        """S(x): the option-A shortcut (identity, or subsample and zero-pad), whatever the gate."""
        return x if self.downsample is None else self.downsample(x)

    def hold_gate(self, value, carry=None):
        """Fix T to ``value`` and C to ``carry`` (default ``1 - value``, exclusive gating)."""
        value = float(value)
        carry = 1.0 - value if carry is None else float(carry)
        self.held = (value, carry)
        return self

    def release_gate(self):
        """Use the learned gate again: T = sigmoid(gate(x)), C = 1 - T."""
        self.held = None
        return self

    def transform_gate(self, x):
        """T(x) = sigmoid(W_g x + b_g), shaped like the block's output."""
        return F.sigmoid(self.gate(x))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.held is None:
            t = self.transform_gate(x)
            return F.residual_add(out * t, self.shortcut(x) * (1.0 - t))
        t, c = self.held
        return F.residual_add(out * t, self.shortcut(x) * c)

    def zero_init_last_bn(self):
        nn.init.zeros_(self.bn2.weight)

    def extra_repr(self):
        gate = "learned" if self.held is None else f"held T={self.held[0]:g}, C={self.held[1]:g}"
        return f"stride={self.stride}, gate={gate}"


class HighwayNet(nn.Module):
    """The CIFAR ResNet-(6n+2) layout (16/32/64 filters, option-A shortcuts) built from HighwayBlocks.

    The names are CifarResNet's, so a resnet20 state dict loads with
    ``strict=False`` (only the gates missing); with every gate held open
    the network then computes exactly what resnet20 does.
    """

    def __init__(self, n, num_classes=10, in_channels=3, gate_bias=-2.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(HighwayBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1, gate_bias))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.flatten(self.avgpool(x)))

    def hold_gates(self, value, carry=None):
        """``hold_gate(value, carry)`` on every block."""
        for m in self.modules():
            if isinstance(m, HighwayBlock):
                m.hold_gate(value, carry)
        return self

    def release_gates(self):
        """``release_gate()`` on every block."""
        for m in self.modules():
            if isinstance(m, HighwayBlock):
                m.release_gate()
        return self


def highway20(num_classes=10, in_channels=3):
    """Highway network with resnet20's layout (n=3): 283,626 parameters for 10 classes."""
    return HighwayNet(3, num_classes=num_classes, in_channels=in_channels)
