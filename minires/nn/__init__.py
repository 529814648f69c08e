"""Layers and containers, named as in torch.nn."""
from . import init, parallel
from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, CrossEntropyLoss, Flatten,
                     Identity, Linear, MaxPool2d, ModuleList, ReLU, Sequential, SyncBatchNorm)
from .module import IncompatibleKeys, Module, Parameter, StateDictError
from .parallel import DistributedDataParallel

__all__ = ["init", "Module", "Parameter", "StateDictError", "IncompatibleKeys", "Sequential", "ModuleList",
           "Identity", "Conv2d", "BatchNorm2d", "SyncBatchNorm", "DistributedDataParallel", "parallel", "ReLU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
           "Linear", "Flatten", "CrossEntropyLoss"]
