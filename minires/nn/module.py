"""Module and Parameter: the containers that hold a network's weights and buffers.

As in PyTorch, assigning a ``Parameter`` or a ``Module`` to an attribute of
a Module registers it, so ``parameters()``, ``state_dict()`` and ``repr``
find it without being told.
"""
from collections import OrderedDict, namedtuple

import numpy as np

from ..backend import normalize_device, to_device, to_numpy
from ..errors import DTypeError, ShapeError
from ..tensor import Tensor


class Parameter(Tensor):
    """A tensor that is a weight of a Module: it requires grad and is found by ``parameters()``."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class StateDictError(KeyError):
    """``load_state_dict`` found missing or unexpected keys or wrong shapes; nothing was changed."""

    def __str__(self):
        return self.args[0]


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _name_under(parent, module):
    """The qualified name of ``module`` inside ``parent`` ("layer1.0"), or None if it is not registered there."""
    for name, child in parent._modules.items():
        if child is module:
            return name
    for name, child in parent.named_modules():
        if child is module and name:
            return name
    return None


def _label(exc, module):
    """Label a ShapeError or DTypeError leaving ``module``: the innermost layer's type, then the path out.

    Each module on the way out replaces the name the module inside it gave itself (its attribute name)
    with where that module sits inside it, so ``self.layer1[0](x)`` called from a model's forward still
    reads ``layer1.0`` although Sequential's ``__call__`` was skipped. Only the error's way out pays.
    """
    inner = exc.module
    if exc.layer is None:
        exc.layer = type(module).__name__
    elif inner is not None:
        name = _name_under(module, inner)
        if name is not None:
            if exc.provisional:
                exc.path.pop()
            exc.path.append(name)
    exc.module, exc.provisional = module, module._name is not None
    if module._name is not None:
        exc.path.append(module._name)


class Module:
    """Base class of every layer and network: override ``forward``, call the module itself."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", [])
        object.__setattr__(self, "_name", None)
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------ registration

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning {name!r}")
        if isinstance(value, Parameter):
            self._discard(name)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._discard(name)
            self._modules[name] = value
            if value._name is None:
                object.__setattr__(value, "_name", name)
        elif name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"buffer {name!r} must be a Tensor, got {type(value).__name__}")
            self._buffers[name] = value
        elif name in self._parameters or name in self._modules:
            if value is not None:
                kind = "Parameter" if name in self._parameters else "Module"
                raise TypeError(f"cannot assign {type(value).__name__} to {name!r}: expected a {kind} or None")
            (self._parameters if name in self._parameters else self._modules)[name] = None
        else:
            object.__setattr__(self, name, value)

    def _discard(self, name):
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        # only called when normal lookup fails: look in the registries
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name, tensor):
        """Register state that is saved in ``state_dict`` but not trained (e.g. running_mean)."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"buffer {name!r} must be a Tensor, got {type(tensor).__name__}")
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"parameter {name!r} must be a Parameter, got {type(param).__name__}")
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    def add_module(self, name, module):
        setattr(self, name, module)

    # ------------------------------------------------------------ calling

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        try:
            out = self.forward(*args, **kwargs)
        except (ShapeError, DTypeError) as exc:
            _label(exc, self)
            raise
        for hook in self._forward_hooks:
            replaced = hook(self, args, out)
            if replaced is not None:
                out = replaced
        return out

    def register_forward_hook(self, fn):
        """Call ``fn(module, inputs, output)`` after every forward; it may return a new output."""
        self._forward_hooks.append(fn)
        hooks = self._forward_hooks

        class Handle:
            def remove(self):
                if fn in hooks:
                    hooks.remove(fn)
        return Handle()

    # ------------------------------------------------------------ traversal

    def named_children(self):
        return iter((n, m) for n, m in self._modules.items() if m is not None)

    def children(self):
        return (m for _, m in self.named_children())

    def named_modules(self, prefix=""):
        """(qualified name, module) for this module and everything under it, each once, depth first."""
        seen, stack = set(), [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            kids = [(f"{name}.{n}" if name else n, m) for n, m in module.named_children()]
            stack.extend(reversed(kids))

    def modules(self):
        return (m for _, m in self.named_modules())

    def get_submodule(self, target):
        """The module at dotted path ``target`` ("layer1.0.conv1"; "" is this module), as in PyTorch."""
        module = self
        for depth, name in enumerate(target.split(".") if target else []):
            if name not in module._modules:
                where = ".".join(target.split(".")[:depth]) or "the model"
                raise AttributeError(f"{type(self).__name__}.get_submodule({target!r}): {where} "
                                     f"({type(module).__name__}) has no submodule {name!r}; it has "
                                     f"{', '.join(module._modules) or 'none'}")
            module = module._modules[name]
        return module

    def _named(self, registry, recurse):
        seen = set()
        modules = self.named_modules() if recurse else [("", self)]
        for prefix, module in modules:
            for name, t in getattr(module, registry).items():
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                yield (f"{prefix}.{name}" if prefix else name), t

    def named_parameters(self, recurse=True):
        return self._named("_parameters", recurse)

    def parameters(self, recurse=True):
        return (p for _, p in self.named_parameters(recurse))

    def named_buffers(self, recurse=True):
        return self._named("_buffers", recurse)

    def buffers(self, recurse=True):
        return (b for _, b in self.named_buffers(recurse))

    def num_parameters(self, trainable_only=False):
        """The number of scalar weights (what the papers' tables count)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------ modes and gradients

    def train(self, mode=True):
        """Training mode: batch norm uses batch statistics and updates its running ones."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode: batch norm uses its running statistics."""
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def apply(self, fn):
        """Call ``fn(module)`` on every submodule and then on this one (as PyTorch does)."""
        for m in reversed(list(self.modules())):
            fn(m)
        return self

    def to(self, device=None, dtype=None):
        """Move every parameter and buffer to ``device`` and/or cast floating ones to ``dtype``."""
        device = None if device is None else normalize_device(device)
        for t in list(self.parameters()) + list(self.buffers()):
            data = t.data if device is None else to_device(t.data, device)
            if dtype is not None and data.dtype.kind == "f" and data.dtype != dtype:
                data = data.astype(dtype)
            if data is not t.data:  # moved or cast: a new value (its version goes up), and no grad
                t.data, t.grad = data, None
        return self

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def double(self):
        return self.to(dtype=np.float64)

    def float(self):
        return self.to(dtype=np.float32)

    # ------------------------------------------------------------ state

    def _state_items(self):
        """Every parameter and buffer under its qualified name (shared tensors under each name)."""
        for prefix, module in self.named_modules():
            for registry in ("_parameters", "_buffers"):
                for name, t in getattr(module, registry).items():
                    if t is not None:
                        yield (f"{prefix}.{name}" if prefix else name), t

    def state_dict(self):
        """An ordered mapping from qualified names to the parameters' and buffers' tensors (detached)."""
        return OrderedDict((name, t.detach()) for name, t in self._state_items())

    def load_state_dict(self, state_dict, strict=True):
        """Copy values from ``state_dict`` (tensors or arrays, e.g. an ``np.load``-ed .npz).

        Every value is checked and converted before any is assigned: a missing
        key or an unexpected one (with ``strict``) or a wrong shape raises
        ``StateDictError`` listing all of them, and the module is left unchanged.
        A submodule that takes its shapes from the checkpoint (a lazy layer) does
        so first, through its ``_prepare_load(state_dict, prefix)``, which returns
        how to undo it if the load then fails.
        """
        undo = [m._prepare_load(state_dict, f"{name}." if name else "")
                for name, m in self.named_modules() if hasattr(m, "_prepare_load")]
        try:
            return self._load_checked(state_dict, strict)
        except BaseException:
            for restore in reversed(undo):
                if restore is not None:
                    restore()
            raise

    def _load_checked(self, state_dict, strict):
        targets = OrderedDict(self._state_items())
        given = {k: state_dict[k] for k in state_dict.keys()}
        missing = [k for k in targets if k not in given]
        unexpected = [k for k in given if k not in targets]
        wrong, converted = [], {}
        for key, value in given.items():
            if key not in targets:
                continue
            target = targets[key]
            data = value.data if isinstance(value, Tensor) else value
            try:
                array = np.array(to_numpy(data) if not isinstance(data, np.ndarray) else data,
                                 dtype=target.data.dtype, copy=True)
            except (TypeError, ValueError) as exc:
                wrong.append(f"{key}: cannot convert to {target.data.dtype} ({exc})")
                continue
            if array.shape != target.data.shape:
                wrong.append(f"{key}: checkpoint has shape {array.shape}, the model has {target.data.shape}")
                continue
            converted[key] = array
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if wrong:
            problems.append("wrong shapes or types:\n    " + "\n    ".join(wrong))
        if problems:
            raise StateDictError(f"load_state_dict into {type(self).__name__} failed; the model is "
                                 "unchanged.\n  " + "\n  ".join(problems))
        for key, array in converted.items():
            target = targets[key]
            target.data = to_device(array, target.device)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ printing

    def extra_repr(self):
        """The arguments shown between the parentheses of this module's repr."""
        return ""

    def __repr__(self):
        lines = []
        for name, module in self._modules.items():
            body = repr(module).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"
