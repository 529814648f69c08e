"""The ResNet family and its relatives, buildable by name: ``minires.models.get("resnet20")``."""
from .blocks import (BasicBlock, Bottleneck, PadChannels, PreActBlock, PreActBottleneck, ResidualBlock,
                     make_shortcut)
from .cifar import (CifarResNet, PreActCifarResNet, plain8, plain20, plain32, plain44, plain56, plain110,
                    preact_resnet110, preact_resnet164, preact_resnet1001, resnet8, resnet20, resnet32, resnet44,
                    resnet56, resnet110, resnet1202)
from .densenet import DenseBlock, DenseLayer, DenseNet, Transition, densenet_bc_40, densenet_bc_100
from .highway import HighwayBlock, HighwayNet, highway20
from .resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152

_REGISTRY = {f.__name__: f for f in (
    resnet18, resnet34, resnet50, resnet101, resnet152,
    resnet8, resnet20, resnet32, resnet44, resnet56, resnet110, resnet1202,
    plain8, plain20, plain32, plain44, plain56, plain110,
    preact_resnet110, preact_resnet164, preact_resnet1001,
    densenet_bc_40, densenet_bc_100, highway20)}


def register(fn, name=None):
    """Make a model constructor available to ``get`` and the command line under ``name``."""
    _REGISTRY[name or fn.__name__] = fn
    return fn


def list():  # noqa: A001 - the name the issue and the CLI use
    """The names ``get`` accepts, sorted."""
    return sorted(_REGISTRY)


def get(name, **kwargs):
    """Build the model called ``name`` (e.g. "resnet20", "resnet50") with constructor ``kwargs``."""
    try:
        build = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}") from None
    return build(**kwargs)
