"""Lazy layers: ``LazyConv2d`` and ``LazyLinear`` take their input size from their first input, as in PyTorch.

A Keras layer names only what it makes (``Conv2D(64, 3)``, ``Dense(10)``);
these do too. Until the first forward, weight and bias are
``UninitializedParameter``s: empty arrays that still carry a dtype and a
device (``model.double()`` or ``.to("cuda")`` before the first call apply to
the real weights). The first forward gives them their shapes *in place*, draws
them exactly as ``Conv2d``/``Linear`` would (the same random numbers for the
same seed), and turns the layer into a ``Conv2d``/``Linear`` (its class
changes, as PyTorch's does). An optimizer built from ``parameters()`` before
that call holds the same objects, so it trains them.

Anything that needs the values before then is an error that says what to
do: ``state_dict()``, saving, ``.numpy()``. ``load_state_dict``, into the lazy
layer or into a model that holds it, takes the shapes from the checkpoint (as
PyTorch's does); a load that fails leaves the layer lazy.
"""
import numpy as np

from ..backend import array_module
from ..checks import floating, ndim, pair, padding as padding_arg, size
from ..errors import ShapeError
from .layers import Conv2d, Linear
from .module import Module, Parameter


class UninitializedParameter(Parameter):
    """A lazy layer's parameter before its first forward: empty, with the sizes the input will give as 0."""

    def __init__(self, shape, owner):
        super().__init__(np.empty(shape, dtype=np.float32))
        self._owner = owner  # "LazyLinear(out_features=10).weight": for the error message

    def _refuse(self, *args, **kwargs):
        raise RuntimeError(f"{self._owner} is not materialised yet: its shape comes from the layer's first "
                           "input. Run one batch through the model first (a dry run, e.g. model(x[:1])), or "
                           "load_state_dict into the lazy layer itself")

    detach = numpy = item = tolist = _refuse

    def __repr__(self):
        return f"<UninitializedParameter of {self._owner}>"

    def materialize(self, shape):
        """Become a Parameter of ``shape`` (uninitialised values) on the same device, with the same dtype."""
        self.data = array_module(self._data).empty(shape, dtype=self._data.dtype)
        self.__class__ = Parameter
        del self._owner


def _unmaterialize(param, shape, owner):
    """Undo ``materialize`` (a failed load_state_dict leaves the layer as it was)."""
    param.__class__ = UninitializedParameter
    param._owner = owner
    param.data = array_module(param.data).empty(shape, dtype=param.data.dtype)


class _Lazy:
    """What LazyConv2d and LazyLinear share: materialising at the first forward or from a state_dict."""

    cls_to_become = None
    _in_name = None  # "in_channels" or "in_features"

    def has_uninitialized_params(self):
        return any(isinstance(p, UninitializedParameter) for p in self._parameters.values())

    def _materialize(self, fan_in):
        """Give the parameters their shapes, draw them as Conv2d/Linear would; the caller changes the class."""
        setattr(self, self._in_name, fan_in)
        self.weight.materialize(self._weight_shape(fan_in))
        if self.bias is not None:
            self.bias.materialize((self.weight.shape[0],))
        self.reset_parameters()  # Conv2d's or Linear's: the same draws as an eager layer

    def _prepare_load(self, state_dict, prefix):
        """Before a load_state_dict of this layer or a model holding it: take the input size from the checkpoint.

        Returns how to undo it (the load may still fail), or None when there is nothing to do.
        """
        weight = state_dict[prefix + "weight"] if prefix + "weight" in state_dict.keys() else None
        shape = getattr(weight, "shape", None)
        if not self.has_uninitialized_params() or shape is None or len(shape) != len(self.weight.shape):
            return None
        owners = {n: p._owner for n, p in self._parameters.items() if p is not None}
        placeholders = {n: p.shape for n, p in self._parameters.items() if p is not None}
        lazy_class = type(self)
        self._materialize(int(shape[1]))  # drawn first: a key strict=False lets go missing is still initialised
        self.__class__ = self.cls_to_become

        def undo():
            self.__class__ = lazy_class
            setattr(self, self._in_name, 0)
            for name, p in self._parameters.items():
                if p is not None:
                    _unmaterialize(p, placeholders[name], owners[name])
        return undo


class LazyConv2d(_Lazy, Conv2d):
    """Conv2d whose in_channels (0 until then) comes from its first input; then it is a Conv2d."""

    cls_to_become, _in_name = Conv2d, "in_channels"

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, bias=True):
        Module.__init__(self)
        self.in_channels = 0
        self.out_channels = size(out_channels, "out_channels", "LazyConv2d")
        self.kernel_size = pair(kernel_size, "kernel_size", "LazyConv2d", 1)
        self.stride, self.padding = pair(stride, "stride", "LazyConv2d", 1), padding_arg(padding, "LazyConv2d")
        owner = f"LazyConv2d(out_channels={self.out_channels}, kernel_size={self.kernel_size})"
        self.weight = UninitializedParameter(self._weight_shape(0), owner + ".weight")
        if bias:
            self.bias = UninitializedParameter((0,), owner + ".bias")
        else:
            self.register_parameter("bias", None)

    def _weight_shape(self, in_channels):
        return (self.out_channels, in_channels) + self.kernel_size

    def forward(self, x):
        if self.has_uninitialized_params():
            floating("LazyConv2d", input=x)
            ndim("LazyConv2d", x, (4,))
            if x.shape[1] < 1:
                raise ShapeError(f"expected an input with at least one channel, got shape {x.shape}",
                                 op="LazyConv2d")
            self._materialize(int(x.shape[1]))
            self.__class__ = Conv2d
        return Conv2d.forward(self, x)


class LazyLinear(_Lazy, Linear):
    """Linear whose in_features (0 until then) is its first input's last size; then it is a Linear."""

    cls_to_become, _in_name = Linear, "in_features"

    def __init__(self, out_features, bias=True):
        Module.__init__(self)
        self.in_features = 0
        self.out_features = size(out_features, "out_features", "LazyLinear")
        owner = f"LazyLinear(out_features={self.out_features})"
        self.weight = UninitializedParameter(self._weight_shape(0), owner + ".weight")
        if bias:
            self.bias = UninitializedParameter((0,), owner + ".bias")
        else:
            self.register_parameter("bias", None)

    def _weight_shape(self, in_features):
        return (self.out_features, in_features)

    def forward(self, x):
        if self.has_uninitialized_params():
            floating("LazyLinear", input=x)
            if x.ndim < 1 or x.shape[-1] < 1:
                raise ShapeError(f"expected an input whose last axis holds the features, got shape {x.shape}",
                                 op="LazyLinear")
            self._materialize(int(x.shape[-1]))
            self.__class__ = Linear
        return Linear.forward(self, x)
