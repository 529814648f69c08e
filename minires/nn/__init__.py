"""Layers and containers, named as in torch.nn."""
from . import init, parallel
from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, ConstantPad2d, Conv2d, CrossEntropyLoss, Flatten,
                     Identity, LeakyReLU, Linear, LogSoftmax, MaxPool2d, ModuleList, NLLLoss, ReflectionPad2d, ReLU,
                     ReplicationPad2d, Sequential, Softmax, SyncBatchNorm, ZeroPad2d)
from .lazy import LazyConv2d, LazyLinear, UninitializedParameter
from .module import IncompatibleKeys, Module, Parameter, StateDictError
from .parallel import DistributedDataParallel

__all__ = ["init", "Module", "Parameter", "StateDictError", "IncompatibleKeys", "Sequential", "ModuleList",
           "Identity", "Conv2d", "BatchNorm2d", "SyncBatchNorm", "DistributedDataParallel", "parallel", "ReLU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
           "Linear", "Flatten", "CrossEntropyLoss",
           "LeakyReLU", "Softmax", "LogSoftmax", "NLLLoss", "ZeroPad2d", "ConstantPad2d", "ReflectionPad2d",
           "ReplicationPad2d", "LazyConv2d", "LazyLinear", "UninitializedParameter"]
