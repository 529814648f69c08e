"""Optimisers (SGD, Adam, AdamW) and learning-rate schedules, with PyTorch's update rules.

An optimiser holds ``param_groups`` (lists of parameters with their own
hyper-parameters, as in PyTorch) and per-parameter ``state`` (momentum
buffers, Adam's moments). Updates happen in place on ``p.data``, under no
graph, from ``p.grad``. Every hyper-parameter is checked when an optimiser or a
schedule is built, and when a state dict is loaded: a NaN, an infinity or a value
out of range is an error that names it (PyTorch lets a NaN learning rate through).
"""
import copy
import math
import numbers

import numpy as np

from .autograd import increment_version
from .backend import array_module, to_device, to_numpy
from .kernels import for_array
from .tensor import Tensor


def check_number(owner, name, value, low=0.0, high=math.inf, low_open=False, high_open=False):
    """``value`` as a float when it is a finite real number in range, else an error naming ``owner`` and ``name``.

    A NaN or an infinity never passes: one would turn every weight into NaN on the first step.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (math.isfinite(value) and above and below):
        if high == math.inf:
            wanted = f"{'>' if low_open else '>='} {low:g}"
        else:
            wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{owner}: {name} must be a finite number {wanted}, got {value}")
    return value


def check_count(owner, name, value, low=0, why=""):
    """``value`` as an int when it is a whole number >= ``low`` (not a bool, not 2.5), else an error naming it.

    ``why``, when given, ends the message: the reason for the bound.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be a whole number, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{owner}: {name} must be >= {low}, got {value}" + (f": {why}" if why else ""))
    return int(value)


class Optimizer:
    """The parameter groups, the per-parameter state and their (de)serialisation."""

    defaults = {}

    def __init__(self, params, **hyper):
        name = type(self).__name__
        if isinstance(params, (Tensor, dict)):
            raise TypeError(f"{name}: params must be an iterable of Parameters or of parameter-group dicts "
                            f"(e.g. model.parameters()), got a single {type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        kinds = {isinstance(p, dict) for p in params}
        if kinds != {isinstance(params[0], dict)}:
            raise TypeError(f"{name}: params mixes parameters and parameter-group dicts; give one kind")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups, seen = [], set()
        for i, group in enumerate(groups):
            if "params" not in group:
                raise ValueError(f"{name}: parameter group {i} has no 'params' entry")
            full = dict(self.defaults)
            full.update(hyper)
            full.update({k: v for k, v in group.items() if k != "params"})
            full["params"] = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
            full.setdefault("initial_lr", full["lr"])
            for p in full["params"]:
                if not isinstance(p, Tensor):
                    raise TypeError(f"{name}: expected Parameters (tensors), got a {type(p).__name__} "
                                    f"in parameter group {i}")
                if not p.requires_grad:
                    raise ValueError(f"{name}: a parameter of shape {p.shape} does not require grad")
                if id(p) in seen:
                    raise ValueError(f"{name}: a parameter of shape {p.shape} is given twice; each parameter "
                                     "may appear in one group only")
                seen.add(id(p))
            self.param_groups.append(self.check_group(full))
        self.state = {}  # id(param) -> dict of arrays and counters

    def check_group(self, group):
        """The group with its hyper-parameters checked (finite, in range); subclasses add their own."""
        owner = type(self).__name__
        group["lr"] = check_number(owner, "lr (learning rate)", group["lr"])
        group["initial_lr"] = check_number(owner, "initial_lr", group["initial_lr"])
        if "weight_decay" in group:
            group["weight_decay"] = check_number(owner, "weight_decay", group["weight_decay"])
        return group

    @property
    def lr(self):
        """The first group's learning rate (the only one, usually)."""
        return self.param_groups[0]["lr"]

    def params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self):
        """Forget every parameter's gradient (backward accumulates into ``.grad``)."""
        for p in self.params():
            p.grad = None

    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, p.grad.data, self.state.setdefault(id(p), {}), group)

    def update(self, p, grad, state, group):
        raise NotImplementedError

    # ------------------------------------------------------------ checkpoints

    def state_dict(self):
        """{"state": {index: {name: array or number}}, "param_groups": [hyper-parameters]}, by position."""
        index = {id(p): i for i, p in enumerate(self.params())}
        state = {index[k]: {n: (to_numpy(v).copy() if hasattr(v, "shape") else v) for n, v in s.items()}
                 for k, s in self.state.items() if k in index}
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        for g, full in zip(groups, self.param_groups):
            g["params"] = [index[id(p)] for p in full["params"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and buffers saved by ``state_dict`` (checked before anything changes)."""
        where = f"{type(self).__name__}.load_state_dict"
        params = self.params()
        try:
            groups, saved = list(state_dict["param_groups"]), dict(state_dict["state"])
            counts = [len(g["params"]) for g in groups]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: expected {{'state': {{...}}, 'param_groups': [...]}} as state_dict() "
                             f"returns, got {state_dict!r:.200}") from None
        if counts != [len(full["params"]) for full in self.param_groups]:
            raise ValueError(f"{where}: the saved parameter groups do not match this optimiser's")
        checked = []
        for g, full in zip(groups, self.param_groups):
            merged = dict(full, **{k: copy.deepcopy(v) for k, v in g.items() if k != "params"})
            try:
                checked.append(self.check_group(merged))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}: saved hyper-parameters refused: {exc}") from None
        new_state = {}
        for i, s in saved.items():
            i = int(i)
            if not 0 <= i < len(params):
                raise ValueError(f"{where}: state for parameter {i}, but there are {len(params)}")
            p = params[i]
            entry = {}
            for name, v in s.items():
                if hasattr(v, "shape") and np.ndim(v) > 0:
                    if tuple(v.shape) != p.shape:
                        raise ValueError(f"{where}: {name} of parameter {i} has "
                                         f"shape {tuple(v.shape)}, the parameter has {p.shape}")
                    v = np.array(to_numpy(v), dtype=p.dtype)
                    if not np.isfinite(v).all():
                        raise ValueError(f"{where}: {name} of parameter {i} holds NaN or infinite values")
                    v = to_device(v, p.device)
                elif hasattr(v, "shape"):
                    v = v.item()
                entry[name] = v
            new_state[id(p)] = entry
        for merged, full in zip(checked, self.param_groups):
            full.update(merged)
        self.state = new_state


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as torch.optim.SGD.

    d = g + weight_decay * p;  b = momentum * b + (1 - dampening) * d (b = d at first);
    d = d + momentum * b (Nesterov) or d = b;  p = p - lr * d
    """

    defaults = dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False)

    def __init__(self, params, lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def check_group(self, group):
        group = super().check_group(group)
        group["momentum"] = check_number("SGD", "momentum", group["momentum"], 0, 1, high_open=True)
        group["dampening"] = check_number("SGD", "dampening", group["dampening"], 0, 1)
        if not isinstance(group["nesterov"], (bool, np.bool_)):
            raise TypeError(f"SGD: nesterov must be True or False, got {group['nesterov']!r}")
        group["nesterov"] = bool(group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening 0")
        return group

    def update(self, p, grad, state, group):
        """One fused kernel per parameter where the backend has one (``sgd_update``: the GPU), else ``sgd_update``."""
        buf, first = None, False
        if group["momentum"]:
            buf = state.get("momentum_buffer")
            if buf is None:
                first, buf = True, array_module(p.data).empty_like(p.data)
                state["momentum_buffer"] = buf
        fused = getattr(for_array(p.data), "sgd_update", sgd_update)
        fused(p.data, grad, buf, group["lr"], group["weight_decay"], group["momentum"], 1 - group["dampening"],
              group["nesterov"], first)
        increment_version(p)  # changed in place: a graph that saved p now refuses to backward through it


def sgd_update(p, g, buf, lr, weight_decay, momentum, one_minus_dampening, nesterov, first):
    """SGD's update of parameter array ``p`` (and momentum buffer ``buf``, None without momentum), in place.

    d = g + wd p;  buf = d at ``first``, else momentum buf + (1 - dampening) d;  d = d + momentum buf
    (Nesterov) or buf;  p = p - lr d. On the host, and the fallback for any array module; a GPU backend's
    ``sgd_update`` does the same arithmetic in one kernel (about nine array operations apart).
    """
    d = g + weight_decay * p if weight_decay else g
    if momentum:
        if first:
            buf[...] = d
        else:
            buf *= momentum
            buf += one_minus_dampening * d
        d = d + momentum * buf if nesterov else buf
    p -= p.dtype.type(lr) * d


class Adam(Optimizer):
    """Adam (Kingma and Ba 2015), as torch.optim.Adam; weight decay is added to the gradient.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def check_group(self, group):
        group = super().check_group(group)
        owner, betas = type(self).__name__, group["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise TypeError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        group["betas"] = tuple(check_number(owner, f"betas[{i}]", b, 0, 1, high_open=True)
                               for i, b in enumerate(betas))
        group["eps"] = check_number(owner, "eps", group["eps"])
        return group

    def update(self, p, grad, state, group):
        xp = array_module(p.data)
        b1, b2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        if wd and self.decoupled:
            p.data *= p.data.dtype.type(1 - lr * wd)
        elif wd:
            grad = grad + wd * p.data
        if "step" not in state:
            state.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * grad
        v *= b2
        v += (1 - b2) * grad * grad
        denom = xp.sqrt(v) / math.sqrt(1 - b2 ** t) + group["eps"]
        p.data -= (m / denom * (lr / (1 - b1 ** t))).astype(p.data.dtype)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter 2019): p = p (1 - lr wd) first."""

    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# ---------------------------------------------------------------- schedules

class LRScheduler:
    """Sets every group's lr from its ``initial_lr`` and the step count; call ``step()`` per epoch (or iteration)."""

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.last_epoch = 0
        self._apply()

    def lr_at(self, base_lr, epoch):
        """The learning rate after ``epoch`` steps for a group that started at ``base_lr``."""
        raise NotImplementedError

    def _apply(self):
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(g["initial_lr"], self.last_epoch)

    def step(self):
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        """Continue after ``state["last_epoch"]`` steps (a whole number >= 0; anything else changes nothing)."""
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict) or "last_epoch" not in state:
            raise ValueError(f"{owner}: expected {{'last_epoch': int}}, got {state!r:.200}")
        self.last_epoch = check_count(owner, "last_epoch", state["last_epoch"])
        self._apply()


class MultiStepLR(LRScheduler):
    """Multiply the lr by ``gamma`` at each milestone: the paper's CIFAR recipe (/10 at 32k and 48k)."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
            raise TypeError(f"MultiStepLR: milestones must be a list of step counts, got {milestones!r}")
        self.milestones = sorted(check_count("MultiStepLR", "a milestone", m) for m in milestones)
        self.gamma = check_number("MultiStepLR", "gamma", gamma, low_open=True)
        super().__init__(optimizer)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (lr0 - eta_min) (1 + cos(pi t / T_max)) / 2, the closed form."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = check_count("CosineAnnealingLR", "T_max", T_max, low=1)
        self.eta_min = check_number("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer)

    def lr_at(self, base_lr, epoch):
        t = min(epoch, self.T_max)
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class LinearWarmup(LRScheduler):
    """Warm up for ``warmup`` steps, then hand over to ``after`` (or hold the base lr).

    ``mode="linear"``: the factor rises from ``start_factor`` to 1. ``mode="constant"``:
    it stays at ``start_factor`` and then jumps, as He et al. trained ResNet-110
    (lr 0.01 for the first ~400 iterations, then 0.1).
    """

    def __init__(self, optimizer, warmup, start_factor=0.1, mode="linear", after=None):
        if mode not in ("linear", "constant"):
            raise ValueError(f"LinearWarmup: mode must be 'linear' or 'constant', got {mode!r}")
        if after is not None and not isinstance(after, LRScheduler):
            raise TypeError(f"LinearWarmup: after must be a schedule (an LRScheduler) or None, "
                            f"got {type(after).__name__}")
        self.warmup = check_count("LinearWarmup", "warmup (steps)", warmup)
        self.start_factor = check_number("LinearWarmup", "start_factor", start_factor, 0, 1, low_open=True)
        self.mode, self.after = mode, after
        super().__init__(optimizer)

    def lr_at(self, base_lr, epoch):
        if epoch >= self.warmup:
            return base_lr if self.after is None else self.after.lr_at(base_lr, epoch - self.warmup)
        if self.mode == "constant":
            return base_lr * self.start_factor
        return base_lr * (self.start_factor + (1 - self.start_factor) * epoch / self.warmup)
