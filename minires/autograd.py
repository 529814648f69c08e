"""Reverse-mode automatic differentiation: Function, the backward pass, no_grad.

Every op is a ``Function`` subclass whose ``forward`` takes arrays and whose
``backward`` maps the gradient of the output to gradients of the inputs.
``Function.apply`` runs forward and, when a gradient is wanted, links the
output tensor to the Function that made it. ``backward`` walks that graph
from the output to the leaves, in reverse topological order, without
recursion.
"""
import contextlib
import functools
import threading

import numpy as np

from .backend import array_module, device_of
from .errors import ShapeError

Tensor = None  # set by minires.tensor once the class exists (it imports this module)

_state = threading.local()


def is_grad_enabled():
    """True unless inside ``with no_grad():``."""
    return getattr(_state, "grad_enabled", True)


class _GradMode(contextlib.ContextDecorator):
    def __init__(self, enabled):
        self.enabled = enabled

    def __enter__(self):
        self.previous = is_grad_enabled()
        _state.grad_enabled = self.enabled

    def __exit__(self, *exc):
        _state.grad_enabled = self.previous
        return False


def no_grad():
    """Context manager (or decorator) inside which ops build no graph."""
    return _GradMode(False)


def enable_grad():
    """Context manager (or decorator) that turns graph building back on."""
    return _GradMode(True)


class Function:
    """One differentiable op: ``forward`` and ``backward`` side by side.

    Subclasses implement
      ``forward(self, *arrays, **params) -> array`` and
      ``backward(self, grad) -> one gradient per tensor input`` (a tuple, or a
      single array when there is one input; ``None`` where no gradient flows).
    Anything ``backward`` needs is saved on ``self`` during ``forward``.
    """

    # attributes a Function keeps when the graph is freed after backward
    keep_after_backward = ()
    # one flag per input of apply(): does that input need a gradient? (set by apply)
    needs_input_grad = ()

    def forward(self, *args, **params):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params):
        """Run the op on tensors (or ``None`` for absent optional inputs)."""
        fn = cls()
        arrays = [None if t is None else t.data for t in inputs]
        kinds = {type(a) for a in arrays if a is not None}
        if len(kinds) > 1 and len({device_of(a) for a in arrays if a is not None}) > 1:
            shapes = ", ".join(f"{device_of(a)} {a.shape}" for a in arrays if a is not None)
            raise RuntimeError(f"{cls.__name__}: inputs live on different devices ({shapes}); "
                               "move them with .to(device) first")
        out = fn.forward(*arrays, **params)
        needs_grad = is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
        if not needs_grad:
            return Tensor(out)
        fn.inputs = inputs
        fn.needs_input_grad = tuple(t is not None and t.requires_grad for t in inputs)
        result = Tensor(out, requires_grad=True)
        result.grad_fn = fn
        return result

    def release(self):
        """Drop what forward saved and the links to the inputs (the graph is freed)."""
        kept = {k: v for k, v in vars(self).items() if k in self.keep_after_backward}
        vars(self).clear()
        vars(self).update(kept)
        self.inputs = None

    def __repr__(self):
        return f"<{type(self).__name__}>"


# ---------------------------------------------------------------- the backward pass

def _parents(t):
    """The inputs of the Function that made ``t`` that need a gradient (none for a leaf)."""
    fn = t.grad_fn
    if fn is None:
        return ()
    if fn.inputs is None:
        raise RuntimeError(
            f"backward through {type(fn).__name__} a second time: its graph was freed "
            "by the first backward; pass retain_graph=True to the first call to keep it")
    return [inp for inp in fn.inputs if inp is not None and inp.requires_grad]


def _topological_order(root):
    """Tensors reachable from ``root`` that need a gradient, inputs before outputs.

    An explicit stack instead of recursion, so a graph of any depth (a
    5,000-op chain, ResNet-1202) stays within Python's limits.
    """
    # BEGIN EXERCISE autograd.topo_order
    # HINT: walk depth-first from root over _parents(t) with a stack of your own (no recursion);
    # HINT: list each tensor once, after every tensor it was computed from.
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        for inp in _parents(t):
            if id(inp) not in seen:
                stack.append((inp, False))
    return order
    # END EXERCISE


def _accumulate(grads, t, g):
    """Add gradient ``g`` for tensor ``t`` into ``grads`` (t may feed several ops: fan-out).

    ``grads`` maps id(tensor) to [gradient array, owned]. Owned means the
    engine made the array itself and may add into it in place; an array that
    a backward returned is not owned (the op may keep it, or return the same
    array for two inputs), so it must never be changed.
    """
    # BEGIN EXERCISE autograd.accumulate
    # HINT: the first gradient to reach t is stored as it is (not owned); when another arrives, add
    # HINT: the two, in place only into an owned array, else into a new array that is then owned.
    slot = grads.get(id(t))
    if slot is None:
        grads[id(t)] = [g, False]
    elif slot[1]:
        slot[0] += g
    else:
        grads[id(t)] = [slot[0] + g, True]
    # END EXERCISE


def _check_grad_shape(t, g):
    if g.shape != t.data.shape or g.dtype != t.data.dtype:
        raise ShapeError(f"a hook returned a gradient of shape {g.shape} and dtype {g.dtype} "
                         f"for a tensor of shape {t.data.shape} and dtype {t.data.dtype}")


def _check_grad(fn, inp, g):
    if g.shape != inp.data.shape or g.dtype != inp.data.dtype:
        raise ShapeError(
            f"{type(fn).__name__}.backward returned a gradient of shape {g.shape} and dtype {g.dtype} "
            f"for an input of shape {inp.data.shape} and dtype {inp.data.dtype}")


def backward(root, grad=None, retain_graph=False):
    """Accumulate d(root)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

    ``grad`` is the gradient of some scalar with respect to ``root``; it may
    be omitted only when ``root`` holds a single element (it is then 1).
    """
    if not root.requires_grad:
        raise RuntimeError("backward: this tensor does not require grad and has no grad_fn")
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(
                f"backward: grad can be implicitly created only for a single-element output, "
                f"got shape {root.data.shape}; pass grad= with that shape")
        grad = array_module(root.data).ones_like(root.data)
    else:
        grad = grad.data if isinstance(grad, Tensor) else grad
        grad = array_module(root.data).array(grad, dtype=root.data.dtype)  # a copy: ours to keep
        if grad.shape != root.data.shape:
            raise ShapeError(f"backward: grad has shape {grad.shape}, output has shape {root.data.shape}")

    order = _topological_order(root)
    # id(tensor) -> [gradient array, whether the engine owns it (may add into it in place)]
    grads = {id(root): [grad, True]}
    for t in reversed(order):
        entry = grads.pop(id(t), None)
        if entry is None:  # nothing reached this tensor (e.g. only through None gradients)
            continue
        g = entry[0]
        for hook in t._hooks:
            replaced = hook(Tensor(g))
            if replaced is not None:
                g = replaced.data if isinstance(replaced, Tensor) else replaced
                _check_grad_shape(t, g)
                entry[1] = False
        fn = t.grad_fn
        if fn is None:  # a leaf: accumulate (never alias an array another tensor may hold)
            if t.grad is not None:
                t.grad = Tensor(t.grad.data + g)
            else:
                t.grad = Tensor(g if entry[1] else g.copy())
            continue
        if t._retains_grad:
            t.grad = Tensor(g.copy())
        in_grads = fn.backward(g)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        for tap in fn.__dict__.get("taps", ()):
            tap(in_grads)
        for inp, gi in zip(fn.inputs, in_grads):
            if inp is None or gi is None or not inp.requires_grad:
                continue
            _check_grad(fn, inp, gi)
            _accumulate(grads, inp, gi)
        if not retain_graph:
            fn.release()


# ---------------------------------------------------------------- residual records

class ResidualRecord:
    """What one ``residual_add`` sent back to its block during backward.

    ``grad_residual`` and ``grad_shortcut``: the gradient into F(x) and into
    S(x), both g = dy * relu'(y). ``via_shortcut`` and ``via_residual``: the
    two contributions that reach the block input x, through the shortcut
    (for an identity shortcut exactly g, the "1" of 1 + dF/dx) and through the
    residual branch (J_F(x)^T g). Their sum is the gradient at x from this block.
    """

    def __init__(self, name=None):
        self.name = name
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
    """Copies the gradient one Function sends to input ``index`` into a record field."""

    __slots__ = ("index", "record", "field")

    def __init__(self, index, record, field):
        self.index, self.record, self.field = index, record, field

    def __call__(self, in_grads):
        g = in_grads[self.index]
        if g is not None:
            self.record._add(self.field, g)


def _add_tap(fn, index, record, field):
    fn.__dict__.setdefault("taps", []).append(_Tap(index, record, field))


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


def tap_block_input(add_fn, f, s, record):
    """Find the block input x of ``f + s`` and tap the gradient it gets from each side.

    x is the first tensor of the shortcut's chain that the residual branch
    reaches (breadth first, so x is met before anything upstream of it).
    The edge by which the shortcut consumes x is tapped into ``via_shortcut``
    (for an identity shortcut that edge is the add itself); every edge by
    which the branch consumes x is tapped into ``via_residual``.
    """
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
        _add_tap(add_fn, 1, record, "via_shortcut")  # identity: the add consumes x itself
    else:
        consumer = chain[k - 1].grad_fn
        _add_tap(consumer, 0, record, "via_shortcut")
    # every branch op that consumes x directly, found by a walk bounded at x
    frontier, seen = [f], {id(f), id(x)}
    for _ in range(_BRANCH_DEPTH):
        nxt = []
        for t in frontier:
            if t.grad_fn is None:
                continue
            for index, inp in enumerate(t.grad_fn.inputs):
                if inp is x:
                    _add_tap(t.grad_fn, index, record, "via_residual")
                elif inp is not None and inp.requires_grad and id(inp) not in seen:
                    seen.add(id(inp))
                    nxt.append(inp)
        if not nxt:
            break
        frontier = nxt


class _Recorder(threading.local):
    def __init__(self):
        self.stack = []


_recorder = _Recorder()


@contextlib.contextmanager
def record_residuals():
    """Collect the ``ResidualRecord`` of every ``residual_add`` called inside, in call order.

        with minires.record_residuals() as records:
            loss = criterion(model(x), y)
            loss.backward()
        records[0].via_shortcut, records[0].via_residual
    """
    records = []
    _recorder.stack.append(records)
    try:
        yield records
    finally:  # remove this very list (an enclosing one may hold equal contents)
        _recorder.stack[:] = [r for r in _recorder.stack if r is not records]


def _announce(record):
    for records in _recorder.stack:
        records.append(record)
