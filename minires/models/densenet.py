"""DenseNet for CIFAR (Huang et al. 2017): features are concatenated, not added.

Inside a dense block, layer l sees the concatenation of the block input and
the k new channels of every earlier layer, so a block of L layers on c
channels ends with c + L*k channels. DenseNet-BC adds a 1x1 bottleneck (4k
channels) to every layer and halves the channels in each transition:

    conv1        3x3 conv, 2k channels (16 for the plain DenseNet)
    block1       n layers of BN-ReLU-1x1 conv (4k) - BN-ReLU-3x3 conv (k)    32x32
    trans1       BN-ReLU-1x1 conv (compression 0.5), 2x2 average pool
    block2       n layers                                                     16x16
    trans2
    block3       n layers                                                     8x8
    norm, relu   then global average pooling and fc

with n = (depth - 4) / 6 for BC (two convolutions a layer) and (depth - 4) / 3
otherwise. DenseNet-BC-100 with k = 12 has 769,162 parameters (0.8M, Table 2).
"""
from .. import functional as F
from .. import nn


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bn_size*k) - BN-ReLU-3x3 conv (k): the k new channels one layer adds.

    Without the bottleneck the layer is BN-ReLU-3x3 conv (k) alone.
    """

    def __init__(self, in_channels, growth_rate, bottleneck=True, bn_size=4):
        super().__init__()
        self.in_channels, self.growth_rate, self.bottleneck = in_channels, growth_rate, bottleneck
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        if bottleneck:
            self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
            self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
            self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(self.relu(self.norm1(x)))
        if self.bottleneck:
            out = self.conv2(self.relu(self.norm2(out)))
        return out


class DenseBlock(nn.Module):
    """``num_layers`` DenseLayers, each fed the channel-wise concatenation of everything before it.

    The output is [x, new_1, ..., new_L] joined along the channels:
    ``in_channels + num_layers * growth_rate`` of them.
    """

    def __init__(self, num_layers, in_channels, growth_rate, bottleneck=True):
        super().__init__()
        self.num_layers, self.in_channels, self.growth_rate = num_layers, in_channels, growth_rate
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            DenseLayer(in_channels + i * growth_rate, growth_rate, bottleneck))
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x):
        features = [x]
        for layer in self.children():
            features.append(layer(features[0] if len(features) == 1 else F.concat(features, dim=1)))
        return F.concat(features, dim=1)

    def extra_repr(self):
        return (f"num_layers={self.num_layers}, in_channels={self.in_channels}, "
                f"growth_rate={self.growth_rate}")


class Transition(nn.Module):
    """BN-ReLU-1x1 conv to ``out_channels``, then 2x2 average pooling: halves the map between blocks."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2)

    def forward(self, x):
        return self.pool(self.conv(self.relu(self.norm(x))))


class DenseNet(nn.Module):
    """DenseNet for 32x32 inputs: three dense blocks joined by transitions (DenseNet-BC by default)."""

    def __init__(self, depth=100, growth_rate=12, num_classes=10, in_channels=3, bottleneck=True,
                 compression=0.5):
        super().__init__()
        per_layer = 6 if bottleneck else 3  # 3 blocks x (1 or 2 convs a layer), plus stem, 2 transitions, fc
        if depth < 4 + per_layer or (depth - 4) % per_layer:
            raise ValueError(f"DenseNet{'-BC' if bottleneck else ''}: depth must be 4 + {per_layer}n "
                             f"with n >= 1, got {depth}")
        if not 0 < compression <= 1:
            raise ValueError(f"DenseNet: compression must lie in (0, 1], got {compression}")
        n = (depth - 4) // per_layer
        self.depth, self.growth_rate, self.compression = depth, growth_rate, compression
        channels = 2 * growth_rate if bottleneck else 16
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        for i in (1, 2, 3):
            block = DenseBlock(n, channels, growth_rate, bottleneck)
            self.add_module(f"block{i}", block)
            channels = block.out_channels
            if i < 3:
                squeezed = int(compression * channels)  # floor(theta * m), as in the paper
                self.add_module(f"trans{i}", Transition(channels, squeezed))
                channels = squeezed
        self.norm = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels

    def forward(self, x):
        x = self.conv1(x)
        x = self.trans1(self.block1(x))
        x = self.trans2(self.block2(x))
        x = self.relu(self.norm(self.block3(x)))
        return self.fc(F.flatten(self.avgpool(x)))


def densenet_bc_40(num_classes=10, in_channels=3):
    """DenseNet-BC-40 with growth rate 12: 6 layers a block, 176,122 parameters for 10 classes."""
    return DenseNet(40, 12, num_classes=num_classes, in_channels=in_channels)


def densenet_bc_100(num_classes=10, in_channels=3):
    """DenseNet-BC-100 with growth rate 12: 16 layers a block, 769,162 parameters (0.8M in the paper)."""
    return DenseNet(100, 12, num_classes=num_classes, in_channels=in_channels)
