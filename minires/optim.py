"""Optimisers (SGD, Adam, AdamW) and learning-rate schedules, with PyTorch's update rules.

An optimiser holds ``param_groups`` (lists of parameters with their own
hyper-parameters, as in PyTorch) and per-parameter ``state`` (momentum
buffers, Adam's moments). Updates happen in place on ``p.data``, under no
graph, from ``p.grad``.
"""
import copy
import math

import numpy as np

from .backend import array_module, to_device, to_numpy


class Optimizer:
    """The parameter groups, the per-parameter state and their (de)serialisation."""

    defaults = {}

    def __init__(self, params, **hyper):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for group in groups:
            full = dict(self.defaults)
            full.update(hyper)
            full.update({k: v for k, v in group.items() if k != "params"})
            full["params"] = list(group["params"])
            full.setdefault("initial_lr", full["lr"])
            for p in full["params"]:
                if not p.requires_grad:
                    raise ValueError(f"{type(self).__name__}: a parameter of shape {p.shape} does not require grad")
            self.param_groups.append(full)
        self._check(self.param_groups)
        self.state = {}  # id(param) -> dict of arrays and counters

    def _check(self, groups):
        for g in groups:
            if g["lr"] < 0:
                raise ValueError(f"{type(self).__name__}: invalid learning rate {g['lr']}")

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
        params = self.params()
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(full["params"]) for g, full in zip(groups, self.param_groups)):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved parameter groups do not "
                             "match this optimiser's")
        new_state = {}
        for i, s in state_dict["state"].items():
            i = int(i)
            if i >= len(params):
                raise ValueError(f"{type(self).__name__}.load_state_dict: state for parameter {i}, "
                                 f"but there are {len(params)}")
            p = params[i]
            entry = {}
            for name, v in s.items():
                if hasattr(v, "shape") and np.ndim(v) > 0:
                    if tuple(v.shape) != p.shape:
                        raise ValueError(f"{type(self).__name__}.load_state_dict: {name} of parameter {i} has "
                                         f"shape {tuple(v.shape)}, the parameter has {p.shape}")
                    v = to_device(np.array(v, dtype=p.dtype), p.device)
                elif hasattr(v, "shape"):
                    v = v.item()
                entry[name] = v
            new_state[id(p)] = entry
        for g, full in zip(groups, self.param_groups):
            full.update({k: copy.deepcopy(v) for k, v in g.items() if k != "params"})
        self.state = new_state


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as torch.optim.SGD.

    d = g + weight_decay * p;  b = momentum * b + (1 - dampening) * d (b = d at first);
    d = d + momentum * b (Nesterov) or d = b;  p = p - lr * d
    """

    defaults = dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False)

    def __init__(self, params, lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening 0")
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def update(self, p, grad, state, group):
        d = grad
        if group["weight_decay"]:
            d = d + group["weight_decay"] * p.data
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = d.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * d
            d = d + momentum * buf if group["nesterov"] else buf
        p.data -= p.data.dtype.type(group["lr"]) * d


class Adam(Optimizer):
    """Adam (Kingma and Ba 2015), as torch.optim.Adam; weight decay is added to the gradient.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

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
        self.last_epoch = int(state["last_epoch"])
        self._apply()


class MultiStepLR(LRScheduler):
    """Multiply the lr by ``gamma`` at each milestone: the paper's CIFAR recipe (/10 at 32k and 48k)."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        self.milestones, self.gamma = sorted(int(m) for m in milestones), gamma
        super().__init__(optimizer)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (lr0 - eta_min) (1 + cos(pi t / T_max)) / 2, the closed form."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max, self.eta_min = T_max, eta_min
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
        self.warmup, self.start_factor, self.mode, self.after = int(warmup), start_factor, mode, after
        super().__init__(optimizer)

    def lr_at(self, base_lr, epoch):
        if epoch >= self.warmup:
            return base_lr if self.after is None else self.after.lr_at(base_lr, epoch - self.warmup)
        if self.mode == "constant":
            return base_lr * self.start_factor
        return base_lr * (self.start_factor + (1 - self.start_factor) * epoch / self.warmup)
