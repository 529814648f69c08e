"""Gradient flow: how much gradient reaches each block's input, and by which path.

For a residual block y = relu(F(x) + x) the gradient at x is the sum of what
arrives through the identity (g, the "1" of 1 + dF/dx) and through the
residual branch (J_F(x)^T g). ``gradient_flow`` reads both from the engine's
records and measures, for every block (plain ones too), the total gradient at
its input; the plots put a plain network beside its residual twin.
"""
import dataclasses

import numpy as np

from .. import functional as F
from ..residual import record_residuals
from ..backend import to_numpy
from ..models.blocks import ResidualBlock
from ..nn import BatchNorm2d, Conv2d, Linear
from .figure import colors, subplots


def _norm(a):
    return 0.0 if a is None else float(np.linalg.norm(to_numpy(a).ravel().astype(np.float64)))


@dataclasses.dataclass
class BlockFlow:
    """One block: gradient norms at its input through the identity, the residual branch, and in total."""

    name: str
    depth: int
    identity: float
    residual: float
    total: float


@dataclasses.dataclass
class LayerFlow:
    """One parameterised layer: the norm of its weight's gradient and that over the weight's norm."""

    name: str
    kind: str
    grad_norm: float
    weight_norm: float

    @property
    def ratio(self):
        return self.grad_norm / self.weight_norm if self.weight_norm else float("nan")


@dataclasses.dataclass
class GradientFlow:
    """The result of ``gradient_flow``: blocks and layers in depth order (input first), and the loss."""

    blocks: list
    layers: list
    loss: float

    def block_totals(self):
        return np.array([b.total for b in self.blocks])


def gradient_flow(model, x, y, loss_fn=F.cross_entropy):
    """One forward and backward pass of ``model`` on (x, y); the gradient norms per block and per layer.

    The model's gradients are cleared before and left in place after, so they
    can be inspected further. Works in train or eval mode (whichever the
    model is in) and for plain networks, where the identity path is absent.
    """
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, ResidualBlock)]
    inputs = {}

    def keep_input(name):
        def hook(module, args, out):
            if args and getattr(args[0], "requires_grad", False):
                args[0].retain_grad()
                inputs[name] = args[0]
        return hook

    handles = [m.register_forward_hook(keep_input(name)) for name, m in blocks]
    model.zero_grad()
    try:
        with record_residuals() as records:
            loss = loss_fn(model(x), y)
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    by_name = {r.name: r for r in records}
    block_rows = []
    for depth, (name, m) in enumerate(blocks):
        record = by_name.get(getattr(m, "record_name", name))
        x_in = inputs.get(name)
        total = _norm(x_in.grad.data) if x_in is not None and x_in.grad is not None else float("nan")
        block_rows.append(BlockFlow(
            name=name, depth=depth,
            identity=_norm(record.via_shortcut) if record is not None else 0.0,
            residual=_norm(record.via_residual) if record is not None else total,
            total=total))
    layer_rows = []
    for name, m in model.named_modules():
        if isinstance(m, (Conv2d, Linear, BatchNorm2d)) and getattr(m, "weight", None) is not None:
            grad = m.weight.grad
            layer_rows.append(LayerFlow(name=name, kind=type(m).__name__,
                                        grad_norm=_norm(None if grad is None else grad.data),
                                        weight_norm=_norm(m.weight.data)))
    return GradientFlow(blocks=block_rows, layers=layer_rows, loss=float(loss.item()))


# ---------------------------------------------------------------- plots

def plot_gradient_norms(flows, title="gradient norm at each block's input"):
    """Gradient norm against block depth for several models (e.g. {"plain56": f1, "resnet56": f2})."""
    fig, ax = subplots(figsize=(7, 4))
    for label, flow in flows.items():
        totals = flow.block_totals()
        ax.plot(np.arange(1, len(totals) + 1), totals, marker="o", markersize=3, label=label)
    ax.set(xlabel="block (1 = nearest the input)", ylabel="||dL/dx|| at the block input", title=title)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_block_contributions(flow, title="where each block's input gradient comes from"):
    """Side-by-side bars per block: the norm through the identity and through the residual branch."""
    names = [b.name for b in flow.blocks]
    ident = [b.identity for b in flow.blocks]
    resid = [b.residual for b in flow.blocks]
    positions = np.arange(len(names))
    fig, ax = subplots(figsize=(max(6, 0.45 * len(names) + 2), 4))
    ax.bar(positions - 0.2, ident, width=0.4, label="through the identity (the 1)")
    ax.bar(positions + 0.2, resid, width=0.4, label="through the residual branch (dF/dx)")
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel="gradient norm", title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_training_curves(runs, title="training curves"):
    """Loss and error (%) per epoch, train solid and test dashed, for several runs ({label: history})."""
    fig, (ax_loss, ax_err) = subplots(1, 2, figsize=(11, 4))
    for (label, history), color in zip(runs.items(), colors() * 10):
        epochs = [r["epoch"] for r in history]
        for split, style in (("train", "-"), ("test", "--")):
            if f"{split}_loss" not in history[0]:
                continue
            ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], style, color=color,
                         label=f"{label} {split}")
            ax_err.plot(epochs, [100 * (1 - r[f"{split}_acc"]) for r in history], style, color=color,
                        label=f"{label} {split}")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
