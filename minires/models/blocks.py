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

Option A comes in four forms (``pad_pool`` x ``pad_channels`` on every block,
``pool`` x ``channels`` on ``PadChannels`` and ``F.pad_channels``):

    pad_pool    pad_channels   who uses it
    subsample   append         the plainest reading of He et al.; minires' default
    subsample   centre         the PyTorch CIFAR code (akamaster/pytorch_resnet_cifar10)
    avg         centre         TensorFlow's CIFAR ResNet (tensorflow/models, research/resnet)
    avg         append         the fourth combination, for comparison

None has parameters, so all four give a model the same parameter count and
state dict: a checkpoint loads into any of them (its accuracy need not carry over).
"""
import copy

from .. import functional as F
from .. import nn
from ..checks import choice
from ..residual import PLACEMENTS, POOLS

SHORTCUTS = ("A", "B", "C")
SHORTCUT_INPUTS = ("preact", "raw")  # what a pre-activation block's projection (or pad) reads


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class PadChannels(nn.Module):
    """The option-A shortcut as a module: one pixel per ``stride`` x ``stride`` window, zero channels added.

    ``pool``: "subsample" (keep the window's top-left pixel) or "avg" (its
    mean); ``channels``: "append" (zeros after the input's channels) or
    "centre" (split around them, the odd one after). See ``F.pad_channels``.
    """

    def __init__(self, out_channels, stride, pool="subsample", channels="append"):
        super().__init__()
        self.out_channels, self.stride = out_channels, stride
        self.pool = choice(pool, "pool", "PadChannels", POOLS)
        self.channels = choice(channels, "channels", "PadChannels", PLACEMENTS)

    def forward(self, x):
        return F.pad_channels(x, self.out_channels, self.stride, pool=self.pool, channels=self.channels)

    def extra_repr(self):
        variant = "" if (self.pool, self.channels) == (POOLS[0], PLACEMENTS[0]) else \
            f", pool={self.pool!r}, channels={self.channels!r}"
        return f"out_channels={self.out_channels}, stride={self.stride}{variant}"


def make_shortcut(option, in_planes, out_planes, stride, norm=True, pool="subsample", channels="append"):
    """The ``downsample`` module of a block: None for identity, else a pad or a projection.

    ``pool`` and ``channels`` choose option A's form (see ``PadChannels``).
    """
    choice(option, "shortcut", "make_shortcut", SHORTCUTS)
    same_shape = stride == 1 and in_planes == out_planes
    if option == "A":
        return None if same_shape else PadChannels(out_planes, stride, pool, channels)
    if option == "B" and same_shape:
        return None
    if not norm:  # pre-activation blocks: the projection sees an already normalised input
        return conv1x1(in_planes, out_planes, stride)
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


def check_shortcut(owner, shortcut, pad_pool, pad_channels):
    """A block's shortcut choices, checked before anything is built: the error names the block."""
    choice(shortcut, "shortcut", owner, SHORTCUTS)
    choice(pad_pool, "pad_pool", owner, POOLS)
    choice(pad_channels, "pad_channels", owner, PLACEMENTS)
    return {"pool": pad_pool, "channels": pad_channels}


class Activation(nn.Module):
    """A plain function (``lambda x: F.leaky_relu(x, 0.1)``) as a module, so summaries list it."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self):
        return getattr(self.fn, "__name__", repr(self.fn))


def make_activation(activation, owner):
    """None: ReLU; a Module: itself; a Module class: a new one; any other callable: wrapped in ``Activation``."""
    if activation is None:
        return nn.ReLU()
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation()
    if isinstance(activation, nn.Module):
        return activation
    if callable(activation):
        return Activation(activation)
    raise TypeError(f"{owner}: activation must be None (ReLU), a Module, a Module class or a callable; "
                    f"got {type(activation).__name__} {activation!r}")


def per_block(activation):
    """What a model hands each block: its own copy of a Module activation (named in each block), else as given."""
    return copy.deepcopy(activation) if isinstance(activation, nn.Module) else activation


BLOCK_DEFAULTS = {"pad_pool": "subsample", "pad_channels": "append", "shortcut_input": "preact",
                  "activation": None, "eps": 1e-5, "momentum": 0.1, "stride_on_1x1": False}


def block_options(**options):
    """The options a model hands its blocks: those set away from their defaults (a block of one's own
    that knows none of them still fits a model built with the defaults)."""
    return {k: v for k, v in options.items() if v is not BLOCK_DEFAULTS[k] and v != BLOCK_DEFAULTS[k]}


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

    ``residual=False`` makes the plain twin: the same layers without the
    shortcut. ``pad_pool`` and ``pad_channels`` choose option A's form (see
    the table at the top of this file); they do nothing for options B and C.
    """

    expansion = 1

    def __init__(self, in_planes, planes, stride=1, shortcut="B", residual=True,
                 pad_pool="subsample", pad_channels="append"):
        super().__init__()
        pad = check_shortcut("BasicBlock", shortcut, pad_pool, pad_channels)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.residual = residual
        self.downsample = make_shortcut(shortcut, in_planes, planes, stride, **pad) if residual else None
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
    ``pad_pool`` and ``pad_channels``: option A's form, as in ``BasicBlock``.
    """

    expansion = 4

    def __init__(self, in_planes, planes, stride=1, shortcut="B", residual=True, stride_on_1x1=False,
                 pad_pool="subsample", pad_channels="append"):
        super().__init__()
        pad = check_shortcut("Bottleneck", shortcut, pad_pool, pad_channels)
        s1, s3 = (stride, 1) if stride_on_1x1 else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, s1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.residual = residual
        self.downsample = (make_shortcut(shortcut, in_planes, planes * self.expansion, stride, **pad)
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
    """Pre-activation basic block (He et al. 2016): x + conv2(act(bn2(conv1(act(bn1(x)))))).

    Nothing follows the addition, so the identity path from block to block is
    clean. The options, for code ported from elsewhere:

    option           default       meaning
    shortcut_input   "preact"      what a projection or option-A pad reads: "preact" = act(bn1(x))
                                   (He et al.'s code, TensorFlow's official v2); "raw" = x itself
                                   (TensorFlow's CIFAR ResNet after its first block). The identity
                                   always takes x.
    activation       None (ReLU)   a Module (``nn.LeakyReLU(0.1)``, TensorFlow's CIFAR ResNet), a
                                   Module class, or any function of a tensor; ``self.relu`` holds it
    eps, momentum    1e-5, 0.1     every batch norm's (PyTorch's meaning: TensorFlow's decay 0.9 is
                                   momentum 0.1; its CIFAR ResNet's eps is 1e-3, Keras' 1.001e-5)
    pad_pool, pad_channels         option A's form (the table at the top of this file)
    """

    expansion = 1

    def __init__(self, in_planes, planes, stride=1, shortcut="B", residual=True, shortcut_input="preact",
                 activation=None, eps=1e-5, momentum=0.1, pad_pool="subsample", pad_channels="append"):
        super().__init__()
        owner = type(self).__name__
        pad = check_shortcut(owner, shortcut, pad_pool, pad_channels)
        self.shortcut_input = choice(shortcut_input, "shortcut_input", owner, SHORTCUT_INPUTS)
        self.bn1 = nn.BatchNorm2d(in_planes, eps=eps, momentum=momentum)
        self.relu = make_activation(activation, owner)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps, momentum=momentum)
        self.conv2 = conv3x3(planes, planes)
        self.residual = residual
        self.downsample = (make_shortcut(shortcut, in_planes, planes, stride, norm=False, **pad)
                           if residual else None)
        self.stride = stride

    def shortcut(self, x, pre):
        """S: the identity takes x itself, a projection (or pad) ``pre`` = act(bn1(x)) or x, as chosen."""
        if not self.residual:
            return None
        if self.downsample is None:
            return x
        return self.downsample(pre if self.shortcut_input == "preact" else x)

    def forward(self, x):
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return F.residual_add(out, self.shortcut(x, pre), relu=False)  # nothing after the add

    def zero_init_last_bn(self):
        nn.init.zeros_(self.conv2.weight)  # no BN ends the branch: start its last conv at zero


class PreActBottleneck(ResidualBlock):
    """Pre-activation bottleneck: BN-act-1x1, BN-act-3x3, BN-act-1x1 (x4), then the add.

    The options of ``PreActBlock`` (``shortcut_input``, ``activation``,
    ``eps``, ``momentum``, ``pad_pool``, ``pad_channels``), and where the stride sits:

    stride_on_1x1=False   on the 3x3 (torchvision's "v1.5", TensorFlow's official v2, Keras' ResNetV2)
    stride_on_1x1=True    on the first 1x1 (the original Caffe ResNet, He et al.'s Torch code for the
                          2016 paper, TensorFlow's CIFAR ResNet)

    TensorFlow's CIFAR bottleneck (tensorflow/models, research/resnet) is
    ``PreActBottleneck(..., stride_on_1x1=True, shortcut_input="raw",
    activation=nn.LeakyReLU(0.1), eps=1e-3)`` (its first block reads the
    pre-activated input: ``shortcut_input="preact"`` there).
    """

    expansion = 4

    def __init__(self, in_planes, planes, stride=1, shortcut="B", residual=True, stride_on_1x1=False,
                 shortcut_input="preact", activation=None, eps=1e-5, momentum=0.1,
                 pad_pool="subsample", pad_channels="append"):
        super().__init__()
        owner = type(self).__name__
        pad = check_shortcut(owner, shortcut, pad_pool, pad_channels)
        self.shortcut_input = choice(shortcut_input, "shortcut_input", owner, SHORTCUT_INPUTS)
        s1, s3 = (stride, 1) if stride_on_1x1 else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_planes, eps=eps, momentum=momentum)
        self.relu = make_activation(activation, owner)
        self.conv1 = conv1x1(in_planes, planes, s1)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps, momentum=momentum)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn3 = nn.BatchNorm2d(planes, eps=eps, momentum=momentum)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.residual = residual
        self.downsample = (make_shortcut(shortcut, in_planes, planes * self.expansion, stride, norm=False, **pad)
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
