"""Residual blocks and their shortcuts, as in He et al. 2015 and 2016.

Every block's forward ends in ``F.residual_add(out, self.shortcut(x))``:
y = relu(F(x) + S(x)), whose backward hands the block input the "1" of
1 + dF/dx (see ``minires.residual``). The plain twin of a block
(``residual=False``) has the same layers and no shortcut: ``shortcut``
returns None and the add is y = relu(F(x)).

Shortcut options (He et al. 2015, section 4.1):
  "A"  identity; where the shape changes, subsample and zero-pad channels (no parameters)
  "B"  identity; where the shape changes, a 1x1 convolution + BN projection
  "C"  a 1x1 convolution + BN projection on every block
The shortcut module is called ``downsample`` as in torchvision, so the state
dict keys (``layer2.0.downsample.0.weight``) match torchvision's.
"""
from .. import functional as F
from .. import nn

SHORTCUTS = ("A", "B", "C")


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class PadChannels(nn.Module):
    """The option-A shortcut as a module: subsample by ``stride`` and zero-pad to ``out_channels``."""

    def __init__(self, out_channels, stride):
        super().__init__()
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x):
        return F.pad_channels(x, self.out_channels, self.stride)

    def extra_repr(self):
        return f"out_channels={self.out_channels}, stride={self.stride}"


def make_shortcut(option, in_planes, out_planes, stride, norm=True):
    """The ``downsample`` module of a block: None for identity, else a pad or a projection."""
    if option not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {option!r}")
    same_shape = stride == 1 and in_planes == out_planes
    if option == "A":
        return None if same_shape else PadChannels(out_planes, stride)
    if option == "B" and same_shape:
        return None
    if not norm:  # pre-activation blocks: the projection sees an already normalised input
        return conv1x1(in_planes, out_planes, stride)
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class ResidualBlock(nn.Module):
    """What the blocks below share: their shortcut S(x) and a zero start for the residual branch."""

    expansion = 1
    residual = True

    def shortcut(self, x):
        """S(x): the identity, or ``downsample(x)`` where the shape changes; None in the plain twin."""
        if not self.residual:
            return None
        return x if self.downsample is None else self.downsample(x)

    def zero_init_last_bn(self):
        """Start the residual branch at zero, so the block starts as its shortcut (torchvision)."""
        raise NotImplementedError


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions: relu(bn2(conv2(relu(bn1(conv1(x))))) + S(x)).

    ``residual=False`` makes the plain twin: the same layers without the shortcut.
    """

    expansion = 1

    def __init__(self, in_planes, planes, stride=1, shortcut="B", residual=True):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.residual = residual
        self.downsample = make_shortcut(shortcut, in_planes, planes, stride) if residual else None
        self.stride = stride

    def forward(self, x):
        # BEGIN EXERCISE residual.basic_block
        # HINT: the residual branch F(x) from the layers made in __init__, then F.residual_add(F(x),
        # HINT: self.shortcut(x)), which adds the shortcut and applies the ReLU after the add.
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.residual_add(out, self.shortcut(x))
        # END EXERCISE

    def zero_init_last_bn(self):
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand by 4: relu(bn3(conv3(...)) + S(x)).

    The stride sits on the 3x3 (torchvision's "v1.5") unless
    ``stride_on_1x1=True``, which puts it on the first 1x1 as in the paper.
    """

    expansion = 4

    def __init__(self, in_planes, planes, stride=1, shortcut="B", residual=True, stride_on_1x1=False):
        super().__init__()
        s1, s3 = (stride, 1) if stride_on_1x1 else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, s1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.residual = residual
        self.downsample = (make_shortcut(shortcut, in_planes, planes * self.expansion, stride)
                           if residual else None)
        self.stride = stride

    def forward(self, x):
        # BEGIN EXERCISE residual.bottleneck
        # HINT: 1x1 reduce, 3x3, 1x1 expand, each followed by its batch norm, ReLU between them; then
        # HINT: F.residual_add(F(x), self.shortcut(x)) as in BasicBlock.
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.residual_add(out, self.shortcut(x))
        # END EXERCISE

    def zero_init_last_bn(self):
        nn.init.zeros_(self.bn3.weight)


class PreActBlock(ResidualBlock):
    """Pre-activation basic block (He et al. 2016): x + conv2(relu(bn2(conv1(relu(bn1(x)))))).

    Nothing follows the addition, so the identity path from block to block is
    clean. A projection shortcut, where there is one, takes the
    pre-activated input relu(bn1(x)).
    """

    expansion = 1

    def __init__(self, in_planes, planes, stride=1, shortcut="B", residual=True):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.residual = residual
        self.downsample = (make_shortcut(shortcut, in_planes, planes, stride, norm=False)
                           if residual else None)
        self.stride = stride

    def shortcut(self, x, pre):
        """S: the identity takes x itself, a projection the pre-activated input relu(bn1(x))."""
        if not self.residual:
            return None
        return x if self.downsample is None else self.downsample(pre)

    def forward(self, x):
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return F.residual_add(out, self.shortcut(x, pre), relu=False)  # nothing after the add

    def zero_init_last_bn(self):
        nn.init.zeros_(self.conv2.weight)  # no BN ends the branch: start its last conv at zero


class PreActBottleneck(ResidualBlock):
    """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1 (x4), then the add."""

    expansion = 4

    def __init__(self, in_planes, planes, stride=1, shortcut="B", residual=True):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.conv1 = conv1x1(in_planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.residual = residual
        self.downsample = (make_shortcut(shortcut, in_planes, planes * self.expansion, stride, norm=False)
                           if residual else None)
        self.stride = stride

    shortcut = PreActBlock.shortcut

    def forward(self, x):
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return F.residual_add(out, self.shortcut(x, pre), relu=False)

    def zero_init_last_bn(self):
        nn.init.zeros_(self.conv3.weight)
