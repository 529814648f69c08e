"""The ImageNet ResNets of He et al. 2015, Table 1, with torchvision's layer names.

    layer name   18-layer          34-layer          50-layer            101 / 152
    conv1        7x7, 64, stride 2, then 3x3 max pool, stride 2
    layer1       [3x3, 64] x2 x2   [3x3, 64] x2 x3   [1x1,64 3x3,64 1x1,256] x3
    layer2       ... 128, stride 2 on the first block of the stage
    layer3       ... 256
    layer4       ... 512
                 average pool, fc (num_classes)

The state dict's keys and shapes are torchvision's, so its checkpoints
(exported to .npz) load with no renaming.

``stem="cifar"`` swaps conv1 and the max pool for the stem of the common
PyTorch CIFAR ResNet-18 code (kuangliu/pytorch-cifar): a 3x3 convolution,
stride 1, and no max pool, so a 32x32 image reaches layer4 at 4x4:

    stem        conv1                               max pool        32x32 input at layer1
    "imagenet"  7x7, 64, stride 2, padding 3        3x3, stride 2   8x8
    "cifar"     3x3, 64, stride 1, padding 1        none            32x32

resnet18(stem="cifar", num_classes=10) has 11,173,962 parameters, that code's count.
"""
from .. import functional as F
from .. import nn
from ..checks import choice
from .blocks import BasicBlock, Bottleneck, block_options

STEMS = ("imagenet", "cifar")


class ResNet(nn.Module):
    """A four-stage ResNet for 224x224 images (other sizes work: the head pools globally).

    ``stem``: "imagenet" (the paper's) or "cifar" (see above); ``shortcut``:
    "A", "B" (torchvision's) or "C", with ``pad_pool`` and ``pad_channels``
    choosing option A's form (``minires.models.blocks``); ``stride_on_1x1``:
    the bottleneck's stride on its first 1x1 (the paper) instead of the 3x3
    (torchvision's v1.5); ``width``: layer1's channels (64).
    """

    def __init__(self, block, layers, num_classes=1000, in_channels=3, shortcut="B",
                 zero_init_residual=False, stride_on_1x1=False, width=64, stem="imagenet",
                 pad_pool="subsample", pad_channels="append"):
        super().__init__()
        self.stem_type = choice(stem, "stem", "ResNet", STEMS)
        self.block_kwargs = block_options(pad_pool=pad_pool, pad_channels=pad_channels)
        if block is Bottleneck:
            self.block_kwargs["stride_on_1x1"] = stride_on_1x1
        self.shortcut_option = shortcut
        self.in_planes = width
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last_bn()

    def _make_layer(self, block, planes, blocks, stride):
        stage = [block(self.in_planes, planes, stride, shortcut=self.shortcut_option, **self.block_kwargs)]
        self.in_planes = planes * block.expansion
        for _ in range(1, blocks):
            stage.append(block(self.in_planes, planes, 1, shortcut=self.shortcut_option, **self.block_kwargs))
        return nn.Sequential(*stage)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(F.flatten(self.avgpool(x)))


def resnet18(**kwargs):
    """ResNet-18: BasicBlock x [2, 2, 2, 2]; 11,689,512 parameters with 1000 classes."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs):
    """ResNet-34: BasicBlock x [3, 4, 6, 3]; 21,797,672 parameters."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs):
    """ResNet-50: Bottleneck x [3, 4, 6, 3]; 25,557,032 parameters."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnet101(**kwargs):
    """ResNet-101: Bottleneck x [3, 4, 23, 3]; 44,549,160 parameters."""
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


def resnet152(**kwargs):
    """ResNet-152: Bottleneck x [3, 8, 36, 3]; 60,192,808 parameters."""
    return ResNet(Bottleneck, [3, 8, 36, 3], **kwargs)
