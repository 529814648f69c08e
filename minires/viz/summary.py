"""``summary(model, input_shape)``: a table of a model's layers, output shapes, parameters and multiply-adds.

One forward pass on zeros, in eval mode and under ``no_grad``, with a forward
hook on every module; ``record_residuals(model)`` in the same pass finds the
residual blocks (the modules whose forward ends in ``F.residual_add``), whose
rows are marked "+". Multiply-adds are counted per image, for ``Conv2d``
(output elements x in_channels x kh x kw) and ``Linear`` (output elements x
in_features) only: the convention of the ResNet paper's Table 1 and of
torchvision's published GFLOPS, where batch norm, ReLU, pooling and the
residual additions are not counted.

Parameters and buffers are counted apart, per row and in total: trainable
parameters, non-trainable ones (``requires_grad=False``, e.g. a frozen stem) and
buffers (batch norm's running_mean and running_var). The totals read as
Keras's ``model.summary()``, which keeps batch norm's moving mean and variance
as non-trainable weights: "Total params" is parameters plus floating-point
buffers, "Non-trainable params" frozen parameters plus those buffers. Integer
buffers (``num_batches_tracked``, a counter Keras has no equivalent of) are
in neither, and are listed on a line of their own. ``SummaryResult.total_params``
stays PyTorch's count (``model.num_parameters()``, no buffers; torchvision's
published figures).

minires's ``resnet50`` is torchvision's, whose convolutions have no bias (the
batch norm after each has a beta). ``keras.applications.ResNet50``'s 53
convolutions have a bias each: one value per output channel, 26,560 in all,
as many as the batch-norm channels. So Keras prints Total 25,636,712,
Trainable 25,583,592, Non-trainable 53,120 (2 x 26,560 moving statistics),
and minires Total 25,610,152, Trainable 25,557,032, Non-trainable 53,120:
the same numbers once every convolution is given a bias.
"""
import sys
from dataclasses import dataclass, field

import numpy as np

from .. import nn
from ..autograd import no_grad
from ..backend import to_device
from ..residual import record_residuals
from ..tensor import Tensor

BLOCK_MARK = " +"   # after the type of a row whose forward ends in F.residual_add


@dataclass
class LayerRow:
    """One module of the model: its qualified name, type, output shape, parameters and multiply-adds.

    ``params`` (= ``trainable`` + ``non_trainable``), ``buffers``, ``counters`` and ``macs``
    include everything under the module (a block's row sums its layers); ``output_shape`` is that of the
    module's first call (None if the forward pass never called it). ``block`` is True where the
    module's forward ended in ``F.residual_add``: a residual block (or a plain one).
    """

    name: str
    type: str
    depth: int
    output_shape: object
    params: int                    # parameters, trainable or not (PyTorch's count)
    macs: int
    calls: int = 0
    block: bool = False
    trainable: int = 0             # parameters with requires_grad
    non_trainable: int = 0         # parameters without (frozen)
    buffers: int = 0               # floating-point buffer values: running statistics
    counters: int = 0              # integer buffer values (num_batches_tracked)


@dataclass(repr=False)
class SummaryResult:
    """What ``summary`` measured: the printed rows, every row, and the totals over every layer.

    ``total_params`` and ``trainable_params`` count parameters only, as PyTorch does;
    ``keras_total_params`` and ``non_trainable_params`` are the printed "Total params" and
    "Non-trainable params", which count floating-point buffers as Keras does.
    """

    model: str
    input_shape: tuple
    depth: object
    rows: list                     # the rows the table shows (depth <= ``depth``)
    all_rows: list                 # every module under the model, in definition order
    total_params: int              # parameters, trainable or not: model.num_parameters()
    trainable_params: int
    total_macs: int                # multiply-adds per image, Conv2d and Linear only
    text: str = field(default="")
    blocks: list = field(default_factory=list)   # paths of the modules whose forward ends in F.residual_add
    note: str = ""                 # why ``blocks`` is empty, if it is
    frozen_params: int = 0         # parameters with requires_grad False
    buffer_values: int = 0         # floating-point buffer values (batch norm's running_mean, running_var)
    counter_values: int = 0        # integer buffer values (num_batches_tracked): in neither count
    non_trainable_params: int = 0  # Keras's: frozen_params + buffer_values
    keras_total_params: int = 0    # Keras's "Total params": trainable_params + non_trainable_params

    def row(self, name):
        """The row of the module called ``name`` (e.g. "layer1.0.conv1"), whatever the depth."""
        for r in self.all_rows:
            if r.name == name:
                return r
        raise KeyError(f"summary of {self.model}: no layer called {name!r}")

    def __str__(self):
        return self.text

    def __repr__(self):
        return (f"SummaryResult(model={self.model!r}, input_shape={self.input_shape}, "
                f"total_params={self.total_params:,}, trainable_params={self.trainable_params:,}, "
                f"non_trainable_params={self.non_trainable_params:,}, total_macs={self.total_macs:,})")


def format_count(n):
    """A count in the papers' style: 4089184256 -> "4.09 G", 40551040 -> "40.55 M", 640 -> "640"."""
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def _counts(module):
    """(trainable, frozen, buffer values, counter values) of everything under ``module``, each tensor once."""
    params, buffers = list(module.parameters()), list(module.buffers())
    trainable = sum(p.size for p in params if p.requires_grad)
    floating = sum(b.size for b in buffers if b.data.dtype.kind == "f")
    return (trainable, sum(p.size for p in params) - trainable, floating, sum(b.size for b in buffers) - floating)


def _layer_macs(module, output, batch):
    """Multiply-adds of one call of a Conv2d or Linear per image; 0 for every other module."""
    if not isinstance(output, Tensor) or not isinstance(module, (nn.Conv2d, nn.Linear)):
        return 0
    per_image = int(np.prod(output.shape)) // batch
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_image * module.in_channels * kh * kw
    return per_image * module.in_features


def _shape_of(output):
    if isinstance(output, Tensor):
        return tuple(int(s) for s in output.shape)
    if isinstance(output, (tuple, list)):
        return tuple(_shape_of(o) for o in output)
    return None


def _format_shape(shape):
    if shape is None:
        return "--"
    if shape and isinstance(shape[0], tuple):
        return ", ".join(_format_shape(s) for s in shape)
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _no_blocks_note(model, records):
    """Why ``model`` has no blocks (per its ``record_residuals(model)`` records), or "" when it has some."""
    if any(r.block is not None for r in records):
        return ""
    note = f"no module of {type(model).__name__} ends in F.residual_add"
    if records:
        note += (f" (it calls F.residual_add {len(records)} times, but no module's forward returns the result; "
                 "a block is a module whose forward ends in F.residual_add)")
    return note


def _blocks_line(blocks, records, note):
    """The line under the totals: how many modules are residual blocks (how many of them plain), and which."""
    if note:
        return f"{'Residual blocks:':<22}none: {note}"
    shown = ", ".join(blocks) if len(blocks) <= 4 else f"{blocks[0]}, {blocks[1]} ... {blocks[-1]}"
    plain = len({r.block for r in records if r.block is not None and not r.has_shortcut})
    kind = "" if not plain else f", {'all' if plain == len(blocks) else plain} plain (no shortcut)"
    return f"{'Residual blocks (+):':<22}{len(blocks)}{kind}: {shown}"


def _check_input_shape(input_shape):
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if not shape or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                            for s in shape):
        raise ValueError(f"summary: input_shape must be a tuple of positive ints including the batch "
                         f"dimension, e.g. (1, 3, 224, 224); got {input_shape!r}")
    return tuple(int(s) for s in shape)


def _example_input(model, shape):
    """Zeros of ``shape`` with the dtype and on the device of the model's first floating parameter."""
    dtype, device = np.float32, "cpu"
    for p in model.parameters():
        if p.data.dtype.kind == "f":
            dtype, device = p.data.dtype, p.device
            break
    data = np.zeros(shape, dtype=dtype)
    return Tensor(data if device == "cpu" else to_device(data, device))


def _table(title, rows, totals):
    headers = ("Layer", "Type", "Output shape", "Trainable", "Non-trainable", "Buffers", "Mult-adds")
    cells = [(("  " * (r.depth - 1)) + r.name, r.type + (BLOCK_MARK if r.block else ""), _format_shape(r.output_shape),
              *(f"{n:,}" if n else "--" for n in (r.trainable, r.non_trainable, r.buffers)),
              format_count(r.macs) if r.macs else "--") for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    width = sum(widths) + 2 * (len(widths) - 1)
    align = ("<", "<", "<", ">", ">", ">", ">")

    def line(values):
        return "  ".join(f"{v:{a}{w}}" for v, a, w in zip(values, align, widths)).rstrip()

    out = [title, "=" * width, line(headers), "-" * width]
    out += [line(c) for c in cells]
    out += ["=" * width] + totals
    return "\n".join(out)


def summary(model, input_shape, depth=2, file=None):
    """Print a table of ``model``'s layers (name, type, output shape, trainable and non-trainable parameters,
    buffers, multiply-adds per image) and totals comparable to Keras's ``model.summary()``.

    ``input_shape`` includes the batch dimension, e.g. (1, 3, 224, 224); ``depth`` chooses the rows shown
    (1: the model's children, 2: their children too, None: all) while the totals always cover every layer.
    Rows of residual blocks (modules whose forward ends in ``F.residual_add``) are marked "+" and listed
    under the totals. Prints to ``file`` (default stdout) and returns a ``SummaryResult``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary: expected a minires.nn.Module, got {type(model).__name__}")
    if depth is not None and (not isinstance(depth, (int, np.integer)) or isinstance(depth, bool) or depth < 0):
        raise ValueError(f"summary: depth must be a non-negative int or None, got {depth!r}")
    shape = _check_input_shape(input_shape)
    batch = shape[0]

    named = list(model.named_modules())
    stats = {id(m): {"shape": None, "macs": 0, "calls": 0} for _, m in named}

    def hook(module, inputs, output):
        s = stats[id(module)]
        if s["calls"] == 0:
            s["shape"] = _shape_of(output)
        s["calls"] += 1
        s["macs"] += _layer_macs(module, output, batch)

    modes = [(m, m.training) for _, m in named]
    handles = [m.register_forward_hook(hook) for _, m in named]
    try:
        model.eval()
        with no_grad(), record_residuals(model) as records:
            model(_example_input(model, shape))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            object.__setattr__(m, "training", mode)

    # a module's row covers everything under it (each shared module or parameter once)
    blocks = list(dict.fromkeys(r.block for r in records if r.block is not None))
    all_rows = []
    for name, m in named[1:]:
        subtree = list(m.modules())
        trainable, frozen, buffers, counters = _counts(m)
        all_rows.append(LayerRow(
            name=name, type=type(m).__name__, depth=name.count(".") + 1,
            output_shape=stats[id(m)]["shape"], params=trainable + frozen,
            macs=sum(stats[id(s)]["macs"] for s in subtree),
            calls=stats[id(m)]["calls"], block=name in blocks,
            trainable=trainable, non_trainable=frozen, buffers=buffers, counters=counters))
    rows = [r for r in all_rows if depth is None or r.depth <= depth]

    trainable, frozen, buffers, counters = _counts(model)
    total_params, non_trainable = trainable + frozen, frozen + buffers
    total_macs = sum(s["macs"] for s in stats.values())
    title = (f"{type(model).__name__} summary: input {_format_shape(shape)}, "
             f"multiply-adds per image (Conv2d and Linear)")
    counts = [("Total params:", trainable + non_trainable, "parameters and buffers, as Keras counts"),
              ("Trainable params:", trainable, ""),
              ("Non-trainable params:", non_trainable, f"frozen parameters {frozen:,}, buffers {buffers:,}"),
              ("Parameters:", total_params, "as PyTorch counts: num_parameters(), no buffers")]
    if counters:
        counts.append(("Counters:", counters, "integer buffers such as num_batches_tracked, in neither"))
    w = max(len(f"{n:,}") for _, n, _ in counts)
    totals = [f"{label:<22}{n:<{w},}  ({why})" if why else f"{label:<22}{n:,}" for label, n, why in counts]
    totals.append(f"{'Total multiply-adds:':<22}{format_count(total_macs)} ({total_macs:,}) per image")
    note = _no_blocks_note(model, records)
    totals.append(_blocks_line(blocks, records, note))
    text = _table(title, rows, totals)
    print(text, file=sys.stdout if file is None else file)
    return SummaryResult(model=type(model).__name__, input_shape=shape, depth=depth, rows=rows,
                         all_rows=all_rows, total_params=total_params, trainable_params=trainable,
                         total_macs=total_macs, text=text, blocks=blocks, note=note, frozen_params=frozen,
                         buffer_values=buffers, counter_values=counters, non_trainable_params=non_trainable,
                         keras_total_params=trainable + non_trainable)
