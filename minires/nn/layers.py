"""The layers: thin Modules over ``minires.functional``, named and initialised as in PyTorch."""
import math
import warnings
from collections import OrderedDict

import numpy as np

from .. import distributed
from .. import functional as F
from ..autograd import increment_version
from ..checks import floating, pair, padding as padding_arg, size
from ..errors import ShapeError
from ..tensor import Tensor
from . import init
from .module import Module, Parameter


class Identity(Module):
    """y = x (the identity shortcut, as a module)."""

    def forward(self, x):
        return x


class Conv2d(Module):
    """2-D convolution; the weight starts Kaiming-normal with fan_out, as torchvision's ResNet does.

    ``padding`` is an int, a pair, 'valid' (0) or 'same': the output is H x W at stride 1 and
    ceil(H / s) x ceil(W / s) at stride s, padded as TensorFlow does (PyTorch refuses 'same' at a stride over 1).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.in_channels = size(in_channels, "in_channels", "Conv2d")
        self.out_channels = size(out_channels, "out_channels", "Conv2d")
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2d", 1)
        self.stride, self.padding = pair(stride, "stride", "Conv2d", 1), padding_arg(padding, "Conv2d")
        self.weight = Parameter(np.empty((out_channels, in_channels) + self.kernel_size, dtype=np.float32))
        if bias:
            self.bias = Parameter(np.zeros(out_channels, dtype=np.float32))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        """Kaiming-normal weight (fan_out, as torchvision's ResNet), zero bias."""
        init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            init.zeros_(self.bias)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}" + (", bias=False" if self.bias is None else ""))


class BatchNorm2d(Module):
    """Batch normalisation per channel with running statistics (buffers) for eval mode."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        num_features = size(num_features, "num_features", "BatchNorm2d")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=np.float32))
            self.bias = Parameter(np.zeros(num_features, dtype=np.float32))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(num_features, dtype=np.float32)))
            self.register_buffer("running_var", Tensor(np.ones(num_features, dtype=np.float32)))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0, dtype=np.int64)))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def forward(self, x):
        momentum = self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if momentum is None:  # a cumulative average over all batches so far
                momentum = 1.0 / float(self.num_batches_tracked.data)
        use_batch_stats = self.training or not self.track_running_stats
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=use_batch_stats, momentum=momentum, eps=self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class SyncBatchNorm(BatchNorm2d):
    """Batch norm whose training statistics are those of the global batch of all ranks (``mpiexec``).

    Forward gathers every rank's per-channel count, mean and variance; backward
    sums the per-channel gradient sums over the ranks, so N ranks with
    B/N images each normalise, and differentiate, as one process with B.
    In one process, or in eval, it is ``BatchNorm2d``.
    """

    def forward(self, x):
        if not self.training or distributed.world_size() == 1:
            return super().forward(x)
        floating("SyncBatchNorm", input=x)
        if x.ndim not in (2, 4) or x.shape[1] != self.num_features:
            raise ShapeError(f"expected (N, {self.num_features}) or (N, {self.num_features}, H, W), got input "
                             f"shape {x.shape}", op="SyncBatchNorm")
        momentum = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.data += 1
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked.data)
        shape = x.shape
        x4 = x.reshape(shape[0], shape[1], 1, 1) if x.ndim == 2 else x
        running = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        y = distributed.SyncBatchNormFunction.apply(
            x4, self.weight, self.bias, running_mean=None if running[0] is None else running[0].data,
            running_var=None if running[1] is None else running[1].data, momentum=momentum, eps=self.eps)
        for t in running:
            if t is not None:
                increment_version(t)
        return y.reshape(*shape) if x.ndim == 2 else y

    @classmethod
    def convert_sync_batchnorm(cls, module):
        """``module`` with every BatchNorm2d replaced by a SyncBatchNorm holding the same parameters and buffers."""
        if isinstance(module, BatchNorm2d) and not isinstance(module, SyncBatchNorm):
            sync = cls(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                       track_running_stats=module.track_running_stats)
            for name in ("weight", "bias"):
                if getattr(module, name) is not None:
                    setattr(sync, name, getattr(module, name))
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                if getattr(module, name) is not None:
                    sync.register_buffer(name, getattr(module, name))
            sync.train(module.training)
            object.__setattr__(sync, "_name", module._name)
            return sync
        for name, child in list(module.named_children()):
            converted = cls.convert_sync_batchnorm(child)
            if converted is not child:
                module._modules[name] = converted  # in place: a Sequential keeps its order
        return module


class ReLU(Module):
    """y = max(x, 0)."""

    def forward(self, x):
        return F.relu(x)


class LeakyReLU(Module):
    """y = x for x > 0, else negative_slope * x (PyTorch's default slope 0.01; Keras' LeakyReLU uses 0.3)."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float, np.integer, np.floating)):
            raise TypeError(f"LeakyReLU: negative_slope must be a number, got {negative_slope!r}")
        self.negative_slope, self.inplace = float(negative_slope), inplace

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Softmax(Module):
    """exp(x) / sum(exp(x)) along ``dim`` (give it: dim=None picks PyTorch's legacy default, with a warning)."""

    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def _dim(self, x):
        if self.dim is not None:
            return self.dim
        warnings.warn(f"{type(self).__name__}: implicit dimension choice is deprecated (as in PyTorch); "
                      "pass dim=, e.g. dim=1 for (N, K) scores", UserWarning, stacklevel=3)
        return 0 if x.ndim in (0, 1, 3) else 1

    def forward(self, x):
        return F.softmax(x, self._dim(x))

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """log(softmax(x)) along ``dim``, without overflow; ``NLLLoss`` after it is ``CrossEntropyLoss``."""

    def forward(self, x):
        return F.log_softmax(x, self._dim(x))


class ConstantPad2d(Module):
    """Pad the last two axes with ``value``: padding is an int or (left, right, top, bottom); negative crops."""

    mode = "constant"

    def __init__(self, padding, value=0.0):
        super().__init__()
        name = type(self).__name__
        given = (padding,) * 4 if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool) else padding
        if not isinstance(given, (tuple, list)) or len(given) != 4:
            raise ValueError(f"{name}: padding must be an int or a 4-tuple (left, right, top, bottom), got {padding!r}")
        if any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) for p in given):
            raise TypeError(f"{name}: padding must hold ints, got {padding!r}")
        if self.mode != "constant" and min(given) < 0:
            raise ValueError(f"{name}: padding must be non-negative, got {padding!r}")
        self.padding, self.value = tuple(int(p) for p in given), value

    def forward(self, x):
        if self.mode == "constant":
            return F.pad(x, self.padding, value=self.value)
        return F.pad(x, self.padding, mode=self.mode)

    def extra_repr(self):
        return f"padding={self.padding}" + (f", value={self.value}" if self.mode == "constant" else "")


class ZeroPad2d(ConstantPad2d):
    """Pad the last two axes with zeros (Keras' ZeroPadding2D((top, bottom), (left, right)) reordered)."""

    def __init__(self, padding):
        super().__init__(padding, 0.0)


class ReflectionPad2d(ConstantPad2d):
    """Pad the last two axes with their reflection (the edge not repeated); each side below the axis' size."""

    mode = "reflect"

    def __init__(self, padding):
        super().__init__(padding)


class ReplicationPad2d(ReflectionPad2d):
    """Pad the last two axes by repeating their edge pixels."""

    mode = "replicate"


class MaxPool2d(Module):
    """Max pooling; ``padding='same'`` pads with -inf as TensorFlow does (any stride), 'valid' is 0."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name, stride = type(self).__name__, kernel_size if stride is None else stride
        kernel, pad = pair(kernel_size, "kernel_size", name, 1), padding_arg(padding, name)
        pair(stride, "stride", name, 1)
        if not isinstance(pad, str) and (2 * pad[0] > kernel[0] or 2 * pad[1] > kernel[1]):
            raise ValueError(f"{name}: padding {padding!r} must be at most half of the kernel size "
                             f"{kernel_size!r}")
        self.kernel_size, self.stride = kernel_size, stride
        self.padding = pad if isinstance(pad, str) else padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"


class AvgPool2d(MaxPool2d):
    """Average pooling; ``padding='same'`` divides by the real pixels of each window, as TensorFlow does."""

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size; ``AdaptiveAvgPool2d(1)`` is global average pooling."""

    def __init__(self, output_size):
        super().__init__()
        pair(output_size, "output_size", "AdaptiveAvgPool2d", 1)
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class Linear(Module):
    """y = x W^T + b, initialised uniformly on +-1/sqrt(in_features) as PyTorch does."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = size(in_features, "in_features", "Linear")
        self.out_features = size(out_features, "out_features", "Linear")
        self.weight = Parameter(np.empty((out_features, in_features), dtype=np.float32))
        if bias:
            self.bias = Parameter(np.empty(out_features, dtype=np.float32))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        """Weight, then bias, uniform on +-1/sqrt(in_features)."""
        bound = 1.0 / math.sqrt(self.in_features)
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """Merge the axes from ``start_dim`` to ``end_dim`` into one: (N, C, H, W) -> (N, C*H*W)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)


class CrossEntropyLoss(Module):
    """Softmax cross-entropy against integer labels, averaged over the batch."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits, target):
        return F.cross_entropy(logits, target, self.reduction)


class NLLLoss(CrossEntropyLoss):
    """Negative log-likelihood of log-probabilities (after ``LogSoftmax(dim=1)``) at integer labels."""

    def forward(self, log_probs, target):
        return F.nll_loss(log_probs, target, self.reduction)


class Sequential(Module):
    """Modules applied one after another; children are named "0", "1", ... (or by an OrderedDict)."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, index):
        items = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        return items[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self


class ModuleList(Module):
    """A list of modules that registers them (so their parameters are found)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
