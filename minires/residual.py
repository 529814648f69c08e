"""The residual add: y = relu(F(x) + S(x)), and where its gradient goes.

A residual block adds its branch F(x) to a shortcut S(x), the identity or a
projection, and usually applies a ReLU after the add. With g = dy * (y > 0):

    dF = g                  into the residual branch
    dS = g                  into the shortcut; for S = identity this reaches x unchanged
    dx = dS + J_F(x)^T g    = g (1 + dF/dx)

The "1" is the whole point of He et al.: however small J_F becomes, g
itself reaches the block input, so a deep stack of blocks passes its
gradient back without it vanishing. ``ResidualAddFunction`` is the op (its
backward is one kernel on every backend); ``residual_add`` checks the
input and records, per call, the two contributions that reach x: through
the shortcut (``via_shortcut``, exactly g for an identity) and through the
branch (``via_residual``, J_F^T g). ``record_residuals()`` collects those
records for every residual add of a forward pass.

``pad_channels`` is the parameter-free option-A shortcut, in the four forms
ported code uses: each stride x stride window kept as its top-left pixel
(``pool="subsample"``, He et al.) or averaged (``"avg"``, TensorFlow's CIFAR
ResNet), the zero channels appended (``channels="append"``) or split around
the input's (``"centre"``, TensorFlow's and the PyTorch CIFAR code).

The records are built on the engine's public hooks (``grad_fn.register_hook``):
the engine itself knows nothing about residual blocks.
"""
import contextlib
import functools
import threading
import weakref

import numpy as np

from . import ops
from .autograd import Function
from .backend import array_module
from .checks import choice, floating, ndim, size
from .errors import ShapeError
from .kernels import for_array


# ---------------------------------------------------------------- the ops

class ResidualAddFunction(Function):
    """y = relu(f + s) with f = F(x) the residual branch and s = S(x) the shortcut.

    df = ds = g = dy * (y > 0). For an identity shortcut the block input
    receives g through s (the "1" of 1 + dF/dx) plus J_F(x)^T g through the
    branch; ``residual_add`` records both (see ``ResidualRecord``).
    """

    keep_after_backward = ("record",)  # y.grad_fn.record stays readable after backward
    saved_inputs, saves_output = (), True  # backward reads only y

    def forward(self, f, s, relu):
        self.kernels, self.relu = for_array(f), relu
        self.y = self.kernels.residual_add_forward(f, s, relu)
        return self.y

    def backward(self, grad):
        return self.kernels.residual_add_backward(grad, self.y, self.relu)


class PadChannelsFunction(Function):
    """y = x subsampled by the stride, then zero channels appended up to out_channels.

    The parameter-free option-A shortcut. dx = dy's first C channels, put back
    at the subsampled positions (zero elsewhere).
    """

    saved_inputs = ()  # backward needs only the input's shape

    def forward(self, x, out_channels, stride):
        xp = array_module(x)
        self.shape, self.stride = x.shape, stride
        # BEGIN EXERCISE residual.pad_forward
        # HINT: keep every stride-th row and column of x, then append zero channels up to out_channels
        # HINT: (xp is numpy or cupy: use xp.zeros so the same code runs on a GPU).
        sub = x[:, :, ::stride, ::stride]
        y = xp.zeros((x.shape[0], out_channels) + sub.shape[2:], dtype=x.dtype)
        y[:, :x.shape[1]] = sub
        return y
        # END EXERCISE

    def backward(self, grad):
        xp = array_module(grad)
        # BEGIN EXERCISE residual.pad_backward
        # HINT: return dx of shape self.shape: which elements of x reached the output, and where?
        dx = xp.zeros(self.shape, dtype=grad.dtype)
        dx[:, :, ::self.stride, ::self.stride] = grad[:, :self.shape[1]]
        return dx
        # END EXERCISE


class WindowMeanFunction(Function):
    """y = the mean of each size x size window of x (a window the edge cuts short averages what it holds).

    dx = dy / (pixels in the window), spread evenly over the window. The
    windows do not overlap: ``pad_channels(pool="avg")``'s pooling.
    """

    saved_inputs = ()  # backward needs the input's shape and the window counts

    def forward(self, x, size):
        xp = array_module(x)
        n, c, h, w = self.shape = x.shape
        self.size, oh, ow = size, -(-h // size), -(-w // size)
        if (oh * size, ow * size) != (h, w):  # zero-fill the short windows; the counts below leave them out
            full = xp.zeros((n, c, oh * size, ow * size), dtype=x.dtype)
            full[:, :, :h, :w] = x
            x = full
        rows = np.minimum(size, h - size * np.arange(oh))  # pixels each window holds, per axis
        cols = np.minimum(size, w - size * np.arange(ow))
        self.count = xp.asarray(np.outer(rows, cols), dtype=x.dtype)
        return x.reshape(n, c, oh, size, ow, size).sum(axis=(3, 5)) / self.count

    def backward(self, grad):
        xp = array_module(grad)
        (n, c, h, w), s = self.shape, self.size
        oh, ow = grad.shape[2:]
        share = (grad / self.count)[:, :, :, None, :, None]
        spread = xp.broadcast_to(share, (n, c, oh, s, ow, s)).reshape(n, c, oh * s, ow * s)
        return xp.ascontiguousarray(spread[:, :, :h, :w])


class RollChannelsFunction(Function):
    """y = x with its channels rolled by k: y[:, (c + k) % C] = x[:, c];  dx = dy rolled back by k.

    ``pad_channels(channels="centre")``: rolling the appended zero channels by
    k moves k of them in front of the input's channels.
    """

    saved_inputs = ()

    def forward(self, x, shift):
        self.shift = shift
        return array_module(x).roll(x, shift, axis=1)

    def backward(self, grad):
        return array_module(grad).roll(grad, -self.shift, axis=1)


def residual_add(f, s, relu=True, name=None):
    """``relu(f + s)`` (or ``f + s``): a block's join, recording the gradient through each side.

    ``s`` is None in a plain network's block (the residual block without its
    shortcut): then y = relu(f), recorded too, with nothing through a
    shortcut, so plain and residual networks are measured alike. The record
    is ``y.grad_fn.record`` (for a shortcut); ``record_residuals()``
    collects the records of every residual add in a forward pass.
    """
    floating("residual_add", residual=f, shortcut=s)
    if s is not None and f.shape != s.shape:
        raise ShapeError(f"the residual branch gives shape {f.shape} but the shortcut gives {s.shape}; "
                         "where the shape changes use a projection (option B) or pad_channels "
                         "(option A)", op="residual_add")
    record = ResidualRecord(name, has_shortcut=s is not None)
    if s is None:
        y = ops.Relu.apply(f) if relu else f
    else:
        y = ResidualAddFunction.apply(f, s, relu=relu)
        if y.grad_fn is not None:
            y.grad_fn.record = record
            _watch(y.grad_fn, f, s, record)
    _recorder.announce(record, y, s)
    return y


POOLS = ("subsample", "avg")          # pad_channels' pool: one pixel per window, or the window's mean
PLACEMENTS = ("append", "centre")     # pad_channels' channels: zeros after the input's, or split around them


def pad_channels(x, out_channels, stride=1, pool="subsample", channels="append"):
    """The option-A shortcut: each ``stride`` x ``stride`` window to one pixel, then zero channels up to ``out_channels``.

    ``pool``: "subsample" keeps each window's top-left pixel (He et al., and
    the PyTorch CIFAR code's strided slice); "avg" averages the window
    (TensorFlow's ``avg_pool(x, s, s, 'VALID')``). Where the stride does not
    divide the size, both give ceil(size / stride) pixels, as the block's
    strided 3x3 convolution does: "avg" averages the short last window over
    the pixels it holds (TensorFlow's 'VALID' would drop them).

    ``channels``: "append" puts the zeros after the input's channels; "centre"
    splits them around: (out - in) // 2 before, the rest after (so an odd
    difference puts its extra channel after). TensorFlow's and the PyTorch
    CIFAR code pad (out - in) // 2 on each side, which fits only an even difference.
    """
    floating("pad_channels", input=x)
    ndim("pad_channels", x, (4,))
    out_channels = size(out_channels, "out_channels", "pad_channels")
    stride = size(stride, "stride", "pad_channels")
    choice(pool, "pool", "pad_channels", POOLS)
    choice(channels, "channels", "pad_channels", PLACEMENTS)
    if out_channels < x.shape[1]:
        raise ShapeError(f"cannot pad {x.shape[1]} channels down to {out_channels} (input shape {x.shape})",
                         op="pad_channels")
    before = (out_channels - x.shape[1]) // 2 if channels == "centre" else 0
    if pool == "avg" and stride > 1:
        x, stride = WindowMeanFunction.apply(x, size=stride), 1
    y = PadChannelsFunction.apply(x, out_channels=out_channels, stride=stride)  # subsample, append
    return RollChannelsFunction.apply(y, shift=before) if before else y


# ---------------------------------------------------------------- the records

class ResidualRecord:
    """What one ``residual_add`` sent back to its block during backward.

    ``grad_residual`` and ``grad_shortcut``: the gradients the add sent into
    F(x) and into S(x). ``via_shortcut`` and ``via_residual``: the two
    contributions that reach the block input x, through the shortcut (for an
    identity shortcut, the "1" of 1 + dF/dx) and through the residual branch
    (J_F(x)^T times the add's gradient). Their sum is the gradient at x from this block.

    ``name`` is the block's path in the model (``record_residuals(model)``)
    or the ``name`` given to ``residual_add``. ``block`` is that path too, set
    only where a module's forward ended in this add (so a named add that ends
    no module's forward is told apart). ``has_shortcut`` is False for
    a plain block; ``identity`` tells whether the shortcut was the block input
    itself, and ``shortcut_module`` names the module that computed it (e.g.
    "layer2.0.downsample"), where ``record_residuals(model)`` could see them.
    """

    def __init__(self, name=None, has_shortcut=True):
        self.name = name
        self.block = None
        self.has_shortcut = has_shortcut
        self.identity = None
        self.shortcut_module = None
        self.input_shape = None
        self.grad_residual = None
        self.grad_shortcut = None
        self.via_shortcut = None
        self.via_residual = None

    @property
    def input_grad(self):
        """The gradient at the block input through this block: via_shortcut + via_residual."""
        parts = [p for p in (self.via_shortcut, self.via_residual) if p is not None]
        return functools.reduce(np.add, parts) if parts else None

    def _add(self, field, g):
        current = getattr(self, field)
        setattr(self, field, g if current is None else current + g)

    def __repr__(self):
        def norm(a):
            return "None" if a is None else f"{float(np.linalg.norm(a)):.4g}"
        return (f"ResidualRecord(name={self.name!r}, |via_shortcut|={norm(self.via_shortcut)}, "
                f"|via_residual|={norm(self.via_residual)})")


class _Tap:
    """A Function hook that adds the gradient sent to input ``index`` into a record field."""

    __slots__ = ("index", "record", "field")

    def __init__(self, index, record, field):
        self.index, self.record, self.field = index, record, field

    def __call__(self, grad_inputs, grad_output):
        g = grad_inputs[self.index]
        if g is not None:
            self.record._add(self.field, g)


_SHORTCUT_DEPTH = 8  # identity, pad, conv + bn, avgpool + conv + bn: all short chains
_BRANCH_DEPTH = 64   # enough for any block's residual branch


def _shortcut_chain(s):
    """s, then the tensor each shortcut op was applied to, back up to _SHORTCUT_DEPTH steps."""
    chain = [s]
    while len(chain) < _SHORTCUT_DEPTH and chain[-1].grad_fn is not None:
        inputs = chain[-1].grad_fn.inputs
        if not inputs or inputs[0] is None:
            break
        chain.append(inputs[0])
    return chain


def _watch(add_fn, f, s, record):
    """Hook the gradients of ``f + s`` and of the block input x into ``record``.

    x is the first tensor of the shortcut's chain that the residual branch
    reaches (breadth first, so x is met before anything upstream of it).
    The edge by which the shortcut consumes x is tapped into ``via_shortcut``
    (for an identity shortcut that edge is the add itself); every edge by
    which the branch consumes x is tapped into ``via_residual``.
    """
    add_fn.register_hook(_Tap(0, record, "grad_residual"))
    add_fn.register_hook(_Tap(1, record, "grad_shortcut"))
    chain = _shortcut_chain(s)
    position = {id(t): k for k, t in enumerate(chain)}
    # breadth-first over the residual branch, stopping at the first chain member
    frontier, seen, x = [f], {id(f)}, None
    for _ in range(_BRANCH_DEPTH):
        nxt = []
        for t in frontier:
            if id(t) in position:
                x = t
                break
            if t.grad_fn is not None:
                for inp in t.grad_fn.inputs:
                    if inp is not None and inp.requires_grad and id(inp) not in seen:
                        seen.add(id(inp))
                        nxt.append(inp)
        if x is not None or not nxt:
            break
        frontier = nxt
    if x is None:
        return
    record.input_shape = x.data.shape
    k = position[id(x)]
    if k == 0:
        add_fn.register_hook(_Tap(1, record, "via_shortcut"))  # identity: the add consumes x itself
    else:
        chain[k - 1].grad_fn.register_hook(_Tap(0, record, "via_shortcut"))
    # every branch op that consumes x directly, found by a walk bounded at x
    frontier, seen = [f], {id(f), id(x)}
    for _ in range(_BRANCH_DEPTH):
        nxt = []
        for t in frontier:
            if t.grad_fn is None:
                continue
            for index, inp in enumerate(t.grad_fn.inputs):
                if inp is x:
                    t.grad_fn.register_hook(_Tap(index, record, "via_residual"))
                elif inp is not None and inp.requires_grad and id(inp) not in seen:
                    seen.add(id(inp))
                    nxt.append(inp)
        if not nxt:
            break
        frontier = nxt


# ---------------------------------------------------------------- collecting the records

class _Collection:
    """The records of one ``record_residuals`` block, and what names them after a model's modules."""

    def __init__(self, model):
        self.records = []
        self.pending = {}   # id(y) -> (y, record, s): an add whose block has not returned yet
        self.made = {}      # id(tensor) -> (weakref, module path): the outermost module that returned it
        self.handles = []
        if model is not None:
            for path, module in model.named_modules():
                self.handles.append(module.register_forward_hook(self._returned(path or type(model).__name__)))

    def add(self, record, y, s):
        self.records.append(record)
        if self.handles:
            self.pending[id(y)] = (y, record, s)

    def _returned(self, path):
        def hook(module, args, out):
            entry = self.pending.pop(id(out), None)
            if entry is not None and entry[0] is out:  # this module's forward ended in that add: a block
                _, record, s = entry
                x = args[0] if args else None
                record.name = record.block = path
                record.input_shape = getattr(x, "shape", record.input_shape)
                if s is not None:
                    record.identity = s is x
                    maker = self.made.get(id(s))
                    if not record.identity and maker is not None and maker[0]() is s:
                        record.shortcut_module = maker[1]
            try:
                self.made[id(out)] = (weakref.ref(out), path)
            except TypeError:  # a tuple or a number: not a tensor a shortcut could be
                pass
        return hook

    def close(self):
        for h in self.handles:
            h.remove()
        self.pending.clear()
        self.made.clear()


class _Recorder(threading.local):
    def __init__(self):
        self.stack = []

    def announce(self, record, y, s):
        for collection in self.stack:
            collection.add(record, y, s)


_recorder = _Recorder()


@contextlib.contextmanager
def record_residuals(model=None):
    """Collect the ``ResidualRecord`` of every ``residual_add`` called inside, in call order.

        with minires.record_residuals(model) as records:
            loss = criterion(model(x), y)
            loss.backward()
        records[0].name, records[0].via_shortcut, records[0].via_residual

    With ``model``, each module whose forward ends in a residual add is that
    add's block: the record is named by the module's path ("layer2.0"), and
    says whether the shortcut was the identity and which module computed it.
    Records are made under ``no_grad`` too (without gradients), so a forward
    pass alone finds a model's blocks.
    """
    collection = _Collection(model)
    _recorder.stack.append(collection)
    try:
        yield collection.records
    finally:
        _recorder.stack.remove(collection)
        collection.close()
