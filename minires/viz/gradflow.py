"""Gradient flow: how much gradient reaches each block's input, and by which path.

For a residual block y = relu(F(x) + x) the gradient at x is the sum of what
arrives through the identity (g, the "1" of 1 + dF/dx) and through the
residual branch (J_F(x)^T g). A block is any module whose forward ends in
``F.residual_add`` (plain blocks, ``F.residual_add(out, None)``, too):
``gradient_flow`` finds them with ``record_residuals(model)``, reads both
contributions from their records and measures the total gradient at each
block's input; the plots put a plain network beside its residual twin.
"""
import dataclasses
import warnings

import numpy as np

from .. import functional as F
from ..backend import to_numpy
from ..nn import BatchNorm2d, Conv2d, Linear
from ..residual import record_residuals
from .figure import colors, subplots
from .summary import _no_blocks_note


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
    """The result of ``gradient_flow``: blocks and layers in depth order (input first), and the loss.

    ``note`` says why ``blocks`` is empty (no module of the model ends in ``F.residual_add``); "" otherwise.
    """

    blocks: list
    layers: list
    loss: float
    note: str = ""

    def block_totals(self):
        return np.array([b.total for b in self.blocks])


def _block_row(depth, record, x_in):
    """A block's norms: identity and branch from its record, the total from the gradient kept at its input."""
    total = _norm(x_in.grad.data) if x_in is not None and x_in.grad is not None else float("nan")
    if not record.has_shortcut:                    # a plain block: everything goes through the layers
        return BlockFlow(record.block, depth, 0.0, total, total)
    if record.via_shortcut is None and record.via_residual is None:
        return BlockFlow(record.block, depth, float("nan"), float("nan"), total)   # the add saw no gradient
    return BlockFlow(record.block, depth, _norm(record.via_shortcut), _norm(record.via_residual), total)


def gradient_flow(model, x, y, loss_fn=F.cross_entropy):
    """One forward and backward pass of ``model`` on (x, y); the gradient norms per block and per layer.

    The blocks are the modules whose forward ends in ``F.residual_add``, named by their path
    ("layer2.0"), in call order. A model without any gets an empty ``blocks``, a ``note`` and a
    warning (its layers are still measured). The model's gradients are cleared before and left in
    place after, so they can be inspected further. Works in train or eval mode (whichever the model
    is in) and for plain networks, where the identity path is absent.
    """
    root = type(model).__name__
    calls = {}                                     # module path -> its input, one per call

    def keep_input(path):
        def hook(module, args, out):
            calls.setdefault(path, []).append(args[0] if args else None)
        return hook

    handles = [m.register_forward_hook(keep_input(name or root)) for name, m in model.named_modules()]
    model.zero_grad()
    try:
        with record_residuals(model) as records:
            out = model(x)
            for h in handles:
                h.remove()
            blocks, inputs, seen = [r for r in records if r.block is not None], [], {}
            for r in blocks:                       # a block called twice has one record per call
                k = seen[r.block] = seen.get(r.block, -1) + 1
                x_in = calls[r.block][k]
                inputs.append(x_in.retain_grad() if getattr(x_in, "requires_grad", False) else None)
            calls.clear()                          # keep only the block inputs alive through backward
            loss = loss_fn(out, y)
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    note = _no_blocks_note(model, records)
    if note:
        note += ": no blocks to measure; the layers are measured"
        warnings.warn(f"gradient_flow: {note}", stacklevel=2)
    block_rows = [_block_row(depth, r, x_in) for depth, (r, x_in) in enumerate(zip(blocks, inputs))]
    layer_rows = []
    for name, m in model.named_modules():
        if isinstance(m, (Conv2d, Linear, BatchNorm2d)) and getattr(m, "weight", None) is not None:
            grad = m.weight.grad
            layer_rows.append(LayerFlow(name=name, kind=type(m).__name__,
                                        grad_norm=_norm(None if grad is None else grad.data),
                                        weight_norm=_norm(m.weight.data)))
    return GradientFlow(blocks=block_rows, layers=layer_rows, loss=float(loss.item()), note=note)


def _require_blocks(flows, plot):
    """A clear error instead of empty axes for a flow without blocks."""
    empty = {label: flow for label, flow in flows.items() if not flow.blocks}
    if empty:
        which = "; ".join(f"{label!r}: {flow.note or 'no blocks'}" for label, flow in empty.items())
        raise ValueError(f"{plot}: nothing to draw per block for {which}. "
                         "Plot its layers' gradients (flow.layers) instead")


# ---------------------------------------------------------------- plots

def plot_gradient_norms(flows, title="gradient norm at each block's input"):
    """Gradient norm against block depth for several models (e.g. {"plain56": f1, "resnet56": f2})."""
    _require_blocks(flows, "plot_gradient_norms")
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
    _require_blocks({"flow": flow}, "plot_block_contributions")
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
