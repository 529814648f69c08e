"""The CIFAR-10 networks of He et al. 2015 (section 4.2) and 2016 (Identity Mappings).

6n+2 weighted layers: a 3x3 convolution with 16 filters, then three stages of
n blocks (2n layers each) on 32x32, 16x16 and 8x8 maps with 16, 32 and 64
filters, global average pooling and a fully connected layer. The shortcuts
are option A (parameter-free), so ResNet and its plain twin have the same
parameter count:

    n      1     3      5      7      9      18      200
    depth  8     20     32     44     56     110     1202

(ResNet-8 is not in the paper's table; it is the smallest member, handy for
quick experiments and tests.)

Option A's form (``pad_pool``, ``pad_channels``; ``minires.models.blocks``)
is the one place where ported CIFAR code differs: He et al. describe
"subsample", "append" (the default); the PyTorch CIFAR code
(akamaster/pytorch_resnet_cifar10) is ``resnet20(pad_channels="centre")``;
TensorFlow's CIFAR ResNet (pre-activation blocks) averages each window and
centres, ``pad_pool="avg", pad_channels="centre"``.
"""
from .. import functional as F
from .. import nn
from .blocks import BasicBlock, PreActBlock, PreActBottleneck, block_options, make_activation, per_block


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; ``residual=False`` builds the plain twin.

    ``pad_pool`` and ``pad_channels`` choose option A's form (see above).
    """

    def __init__(self, n, num_classes=10, in_channels=3, shortcut="A", residual=True,
                 zero_init_residual=False, block=BasicBlock, pad_pool="subsample", pad_channels="append"):
        super().__init__()
        self.in_planes = 16
        self.block_kwargs = {"shortcut": shortcut, "residual": residual,
                             **block_options(pad_pool=pad_pool, pad_channels=pad_channels)}
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(block, 16, n, 1)
        self.layer2 = self._make_layer(block, 32, n, 2)
        self.layer3 = self._make_layer(block, 64, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64 * block.expansion, num_classes)
        if zero_init_residual and residual:
            for m in self.modules():
                if isinstance(m, block):
                    m.zero_init_last_bn()

    def _make_layer(self, block, planes, n, stride):
        stage = []
        for i in range(n):
            stage.append(block(self.in_planes, planes, stride if i == 0 else 1, **self.block_kwargs))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*stage)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.flatten(self.avgpool(x)))


class PreActCifarResNet(nn.Module):
    """Pre-activation ResNet for CIFAR (He et al. 2016): the last block is followed by BN-ReLU.

    Basic blocks give depth 6n+2 (preact_resnet110: n=18); bottlenecks give
    9n+2 (preact_resnet164: n=18, preact_resnet1001: n=111). Where the shape
    changes the shortcut is a 1x1 projection (option B), as in the paper's code.

    Every block gets the pre-activation options (``PreActBottleneck``):
    ``shortcut_input``, ``activation`` (also the final BN-act; each block gets
    its own copy of a Module), ``eps`` and ``momentum`` (also the final BN),
    ``stride_on_1x1`` (bottlenecks only), ``pad_pool`` and ``pad_channels``.
    """

    def __init__(self, block, n, num_classes=10, in_channels=3, shortcut="B", zero_init_residual=False,
                 shortcut_input="preact", activation=None, eps=1e-5, momentum=0.1, stride_on_1x1=False,
                 pad_pool="subsample", pad_channels="append"):
        super().__init__()
        options = block_options(shortcut_input=shortcut_input, eps=eps, momentum=momentum,
                                stride_on_1x1=stride_on_1x1, pad_pool=pad_pool, pad_channels=pad_channels)
        if stride_on_1x1 and block.expansion == 1:
            raise ValueError(f"PreActCifarResNet: stride_on_1x1 needs bottleneck blocks; {block.__name__} "
                             "has no 1x1 convolution")
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        stages = []
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                if activation is not None:
                    options["activation"] = per_block(activation)
                blocks.append(block(self.in_planes, planes, stride, shortcut=shortcut, **options))
                self.in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(self.in_planes, eps=eps, momentum=momentum)
        self.relu = make_activation(per_block(activation), "PreActCifarResNet")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.in_planes, num_classes)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, block):
                    m.zero_init_last_bn()

    def forward(self, x):
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu(self.bn(x))
        return self.fc(F.flatten(self.avgpool(x)))


def _cifar(n, residual):
    def build(**kwargs):
        return CifarResNet(n, residual=residual, **kwargs)
    kind = "ResNet" if residual else "plain network"
    build.__name__ = f"{'resnet' if residual else 'plain'}{6 * n + 2}"
    build.__doc__ = f"CIFAR {kind} with {6 * n + 2} layers (n={n}, option-A shortcuts)."
    return build


resnet8, resnet20, resnet32, resnet44, resnet56, resnet110, resnet1202 = (
    _cifar(n, True) for n in (1, 3, 5, 7, 9, 18, 200))
plain8, plain20, plain32, plain44, plain56, plain110 = (_cifar(n, False) for n in (1, 3, 5, 7, 9, 18))


def preact_resnet110(**kwargs):
    """Pre-activation ResNet-110 (basic blocks, n=18)."""
    return PreActCifarResNet(PreActBlock, 18, **kwargs)


def preact_resnet164(**kwargs):
    """Pre-activation ResNet-164 (bottlenecks, n=18)."""
    return PreActCifarResNet(PreActBottleneck, 18, **kwargs)


def preact_resnet1001(**kwargs):
    """Pre-activation ResNet-1001 (bottlenecks, n=111)."""
    return PreActCifarResNet(PreActBottleneck, 111, **kwargs)
