"""Weight initialisation, in place, as torch.nn.init does it.

ResNet's convolutions use ``kaiming_normal_(w, mode="fan_out")`` (He et al.
2015, "Delving deep into rectifiers"): the variance 2/fan keeps the signal's
scale through a stack of ReLU layers.
"""
import math

import numpy as np

from .. import rng as _rng
from ..autograd import increment_version
from ..backend import array_module


def _fans(shape):
    """(fan_in, fan_out) of a Linear (out, in) or a Conv2d (out, in, kh, kw) weight."""
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need at least 2 dimensions, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _gain(nonlinearity, a=0.0):
    if nonlinearity in ("relu",):
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1 + a * a))
    if nonlinearity in ("linear", "sigmoid", "conv2d"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    raise ValueError(f"unknown nonlinearity {nonlinearity!r}")


def _fill(t, values):
    """Write ``values`` into t's array in place; its version goes up (backward checks it)."""
    xp = array_module(t.data)
    t.data[...] = xp.asarray(values, dtype=t.data.dtype)
    increment_version(t)
    return t


def normal_(t, mean=0.0, std=1.0):
    return _fill(t, _rng.generator().normal(mean, std, size=t.shape))


def uniform_(t, a=0.0, b=1.0):
    return _fill(t, _rng.generator().uniform(a, b, size=t.shape))


def constant_(t, value):
    return _fill(t, value)


def zeros_(t):
    return constant_(t, 0)


def ones_(t):
    return constant_(t, 1)


def kaiming_normal_(t, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """Normal with std = gain / sqrt(fan), fan the weight's fan in or fan out."""
    fan_in, fan_out = _fans(t.shape)
    fan = {"fan_in": fan_in, "fan_out": fan_out}[mode]
    return normal_(t, 0.0, _gain(nonlinearity, a) / math.sqrt(fan))


def kaiming_uniform_(t, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """Uniform on [-b, b] with b = gain * sqrt(3 / fan)."""
    fan_in, fan_out = _fans(t.shape)
    fan = {"fan_in": fan_in, "fan_out": fan_out}[mode]
    bound = _gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(t, -bound, bound)


def xavier_uniform_(t, gain=1.0):
    """Uniform on [-b, b] with b = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(t.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(t, -bound, bound)
