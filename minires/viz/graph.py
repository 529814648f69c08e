"""``draw_graph(tensor)``: the graph autograd built, from the leaves to ``tensor`` (as micrograd's ``draw_dot``).

One node per Function: its op, and the shape, dtype and (after backward) gradient norm of the
tensor it made; one per leaf tensor: a parameter by its path in the model ("layer1.0.conv1.weight"),
the model's input as "x". A residual add stands out: its shortcut edge is drawn apart, and it
shows the two gradients its ``ResidualRecord`` says reached the block input, through the shortcut
(``via_shortcut``) and through the branch (``via_residual``), read from the record, not re-derived.

Backward frees the graph as it goes, so drawing it after an ordinary backward needs it watched
while it was built:

    with minires.viz.watch_graph(model):          # every Function, gradient norm and module call
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    minires.viz.draw_graph(loss, "resnet20.png", depth=2)    # one box per block: layer1.0, ...

``watch_graph`` sees each Function as it is made (the engine's ``function_hook``), keeps each
tensor's gradient norm (a tensor hook) and each module call (forward hooks), so a large model can
be drawn collapsed per module: ``depth=k`` draws every module whose path has k parts as one box.
Without a watch, ``draw_graph`` draws a graph that still stands (before backward, or after
``backward(retain_graph=True)``); a non-leaf tensor then shows a gradient norm only where it kept
its ``.grad``. Leaves show the norm of their ``.grad``.
"""
import collections
import contextlib
import weakref

from .. import nn
from ..autograd import function_hook
from ..backend import array_module
from ..residual import ResidualAddFunction, record_residuals
from . import graph_render
from .graph_render import AutogradGraph, GraphEdge, GraphNode  # noqa: F401 (the drawing's data)
from .render import check_backend

MAX_NODES = 60                                  # depth=None collapses a graph bigger than this
_WATCHES = collections.deque(maxlen=4)          # the latest watches, where draw_graph looks first


def _norm(a):
    xp = array_module(a)
    return float(xp.linalg.norm(a.ravel().astype(xp.float64)))


def _tensors(obj):
    """The tensors in a module's arguments or output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return [obj] if hasattr(obj, "grad_fn") and hasattr(obj, "data") else []


# ------------------------------------------------------------------ what a watch keeps

class _Op:
    """One Function as it was made: its inputs (node keys, None where apply got None) and its output."""

    __slots__ = ("key", "name", "fn", "inputs", "shape", "dtype", "grad", "record", "call", "relu")

    def __init__(self, key, fn, inputs, out):
        self.key, self.fn, self.inputs = key, weakref.ref(fn), inputs
        self.name = type(fn).__name__.removesuffix("Function") or type(fn).__name__
        self.shape, self.dtype = tuple(out.shape), str(out.dtype)
        self.grad, self.record, self.call = None, None, None
        self.relu = getattr(fn, "relu", None) if isinstance(fn, ResidualAddFunction) else None

    @property
    def is_add(self):
        return self.name == "ResidualAdd"

    def residual_record(self):
        """The add's ``ResidualRecord`` (kept by the Function after backward; also taken when the gradient passed)."""
        fn = self.fn()
        if self.record is None and fn is not None:
            self.record = getattr(fn, "record", None)
        return self.record


class _Leaf:
    __slots__ = ("key", "tensor")

    def __init__(self, key, tensor):
        self.key, self.tensor = key, tensor


class _Call:
    """One call of a module: its path, the calls inside it (by their ``parent``), its argument and output keys."""

    __slots__ = ("index", "path", "name", "cls", "parent", "args", "out")

    def __init__(self, index, path, name, cls, args, out):
        self.index, self.path, self.name, self.cls, self.args, self.out = index, path, name, cls, args, out
        self.parent = None

    @property
    def depth(self):
        return 0 if not self.path else self.path.count(".") + 1


class _GradTap:
    """A tensor hook: keeps the norm of the gradient that reached an op's output (and the add's record)."""

    __slots__ = ("op",)

    def __init__(self, op):
        self.op = op

    def __call__(self, grad):
        self.op.grad = _norm(grad.data)
        self.op.residual_record()


class GraphWatch:
    """What ``watch_graph`` saw: every Function made inside, the norms of their gradients, every module call."""

    def __init__(self, model=None, names=None):
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"watch_graph: model must be a minires.nn.Module, got {type(model).__name__}")
        self.model, self.ops, self.leaves, self.calls, self.records = model, {}, {}, [], []
        self._fns, self._tensors, self.names = {}, {}, {}
        self.name_leaves(model, names)

    def name_leaves(self, model=None, names=None):
        """Name leaf tensors: a model's parameters by their paths, ``names`` ({name: tensor}) as given."""
        items = list(model.named_parameters()) if model is not None else []
        items += list((names or {}).items())
        for name, t in items:
            if not hasattr(t, "grad_fn"):
                raise TypeError(f"draw_graph: names[{name!r}] must be a tensor, got {type(t).__name__}")
            self.names[id(t)] = (t, name)

    def key(self, t, make=True):
        """The node of tensor ``t``: the op that made it, else its leaf (made on first sight)."""
        fn = t.grad_fn
        if fn is not None:
            k = self._fns.get(id(fn))
            if k is not None and self.ops[k].fn() is fn:
                return k
        k = self._tensors.get(id(t))
        if k is not None and self.leaves[k].tensor is t:
            return k
        if not make:
            return None
        k = f"L{len(self.leaves)}"
        self.leaves[k], self._tensors[id(t)] = _Leaf(k, t), k
        return k

    def saw(self, fn, out, tap=True):
        """The ``function_hook``: note ``fn`` and hook its output's gradient."""
        op = _Op(len(self.ops), fn, [None if t is None else self.key(t) for t in fn.inputs], out)
        self.ops[op.key], self._fns[id(fn)] = op, op.key
        if tap:
            out.register_hook(_GradTap(op))
        return op

    def returned(self, path, root):
        """A forward hook: the ops made by this call are those its output reaches without passing its arguments."""
        def hook(module, args, out):
            arg_keys = {k for k in (self.key(t, make=False) for t in _tensors(args)) if k is not None}
            if not path:                                # the model's own call: its inputs are x (x1, ...)
                for i, t in enumerate(_tensors(args)):
                    if self.key(t, make=False) in self.leaves and id(t) not in self.names:
                        self.names[id(t)] = (t, f"x{i or ''}")
            outs = [k for k in (self.key(t, make=False) for t in _tensors(out)) if k in self.ops]
            call = _Call(len(self.calls), path, path or root, type(module).__name__, arg_keys,
                         outs[0] if outs else None)
            bound = max((k for k in arg_keys if k in self.ops), default=-1)   # made before the call began
            stack = [k for k in outs if k not in arg_keys]
            seen, inside = set(stack), False
            while stack:
                op = self.ops[stack.pop()]
                if op.key <= bound:
                    continue
                inside = True
                if op.call is None:
                    op.call = call
                else:                                   # a call inside this one: this one is its parent
                    top = op.call
                    while top.parent is not None and top.parent is not call:
                        top = top.parent
                    if top is not call:
                        top.parent = call
                for k in op.inputs:
                    if k in self.ops and k not in arg_keys and k not in seen:
                        seen.add(k)
                        stack.append(k)
            if inside:
                self.calls.append(call)
        return hook


@contextlib.contextmanager
def watch_graph(model=None, names=None):
    """Watch the graph built inside, so ``draw_graph`` can draw it after backward has freed it.

        with minires.viz.watch_graph(model) as watch:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        minires.viz.draw_graph(loss, depth=2)

    Keeps each Function's op, output shape and dtype, the norm of the gradient that reached its
    output, and, with ``model``, each module call (to collapse per module) and the residual
    records named by block. ``names`` ({name: tensor}) names leaves; the model's parameters are
    named by their paths and its input "x". ``draw_graph`` finds the latest few watches by itself.
    """
    watch = GraphWatch(model, names)
    handles = []
    if model is not None:
        root = type(model).__name__
        handles = [m.register_forward_hook(watch.returned(p, root)) for p, m in model.named_modules()]
    _WATCHES.append(watch)
    try:
        with record_residuals(model) as records, function_hook(watch.saw):
            watch.records = records
            yield watch
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------ from a watch (or a standing graph) to nodes

def _standing(tensor, model, names):
    """A watch filled from a graph that still stands (before backward or with retain_graph), inputs first."""
    watch = GraphWatch(model, names)
    order, seen, stack = [], set(), [(tensor, False)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in seen or t.grad_fn is None:
            continue
        seen.add(id(t))
        if t.grad_fn.inputs is None:
            raise RuntimeError(
                f"draw_graph: backward() has freed the graph that made this tensor ({type(t.grad_fn).__name__}'s "
                "inputs are gone). Draw it before backward, call backward(retain_graph=True), or run the forward "
                "and backward inside `with minires.viz.watch_graph(model):`")
        stack.append((t, True))
        stack.extend((i, False) for i in reversed(t.grad_fn.inputs) if i is not None and id(i) not in seen)
    for t in order:
        op = watch.saw(t.grad_fn, t, tap=False)
        op.grad = None if t.grad is None else _norm(t.grad.data)
        op.residual_record()
    return watch


def _find(tensor, watch):
    """The watch that saw ``tensor`` made (the given one, else the newest that did), or None."""
    for w in ([watch] if watch is not None else reversed(_WATCHES)):
        if w.key(tensor, make=False) is not None:
            return w
    if watch is not None:
        raise ValueError("draw_graph: this watch did not see the tensor made; draw the tensor computed inside it")
    return None


def _boxes(watch, keys, depth):
    """op key -> the call drawn as one box around it: the outermost at ``depth`` or deeper ("blocks": the outermost block)."""
    if depth is None:
        return {}
    blocks = {r.block for r in watch.records if r.block is not None}
    boxes = {}
    for k in keys:
        c, box = watch.ops[k].call, None
        while c is not None:
            if (c.name in blocks) if depth == "blocks" else c.depth >= depth:
                box = c
            c = c.parent
        if box is not None:
            boxes[k] = box
    sizes = collections.Counter(b.index for b in boxes.values())
    return {k: b for k, b in boxes.items() if sizes[b.index] > 1}   # a box around one op: draw the op


def _leaf_node(watch, leaf, node_id):
    t = leaf.tensor
    entry = watch.names.get(id(t))
    named = entry is not None and entry[0] is t
    grad = getattr(t, "grad", None)
    if t.requires_grad:
        kind, name = "leaf", entry[1] if named else ("parameter" if isinstance(t, nn.Parameter) else "leaf")
    else:
        kind, name = "constant", entry[1] if named else "tensor (no grad)"
    return GraphNode(node_id, kind, name, shape=tuple(t.shape), dtype=str(t.dtype),
                     grad_norm=None if grad is None else _norm(grad.data))


def _via(node, record):
    if record is not None:
        node.via_shortcut = None if record.via_shortcut is None else _norm(record.via_shortcut)
        node.via_residual = None if record.via_residual is None else _norm(record.via_residual)
    return node


def _build(watch, root, depth):
    """Nodes and edges of the graph that reaches node ``root``, modules collapsed at ``depth``."""
    keys, stack = {root}, [root]
    while stack:
        op = watch.ops.get(stack.pop())
        for k in (op.inputs if op is not None else ()):
            if k is not None and k not in keys:
                keys.add(k)
                stack.append(k)
    if root in watch.leaves:
        return [_leaf_node(watch, watch.leaves[root], "t0")], []
    ops = sorted(k for k in keys if k in watch.ops)
    boxes = _boxes(watch, ops, depth)
    by_id = {f"m{b.index}": b for b in boxes.values()}
    ids = {k: f"m{boxes[k].index}" if k in boxes else f"n{k}" for k in ops}
    consumers = collections.defaultdict(set)
    for k in ops:
        for i in watch.ops[k].inputs:
            if i is not None:
                consumers[i].add(ids[k])
    for k in keys - set(ops):           # a leaf used only inside one box, not as its argument, is drawn in it
        (only,) = consumers[k] if len(consumers[k]) == 1 else (None,)
        ids[k] = only if only in by_id and k not in by_id[only].args else f"t{k[1:]}"
    members = collections.defaultdict(list)         # a box's ops and the leaves drawn inside it
    for k in sorted(keys, key=str):
        if ids[k] in by_id:
            members[ids[k]].append(k)
    nodes, placed, edges = [], set(), {}
    for k in ops:
        op, me = watch.ops[k], ids[k]
        for i in op.inputs:             # leaves just before their first consumer
            if i in watch.leaves and ids[i] not in placed and ids[i][0] == "t":
                placed.add(ids[i])
                nodes.append(_leaf_node(watch, watch.leaves[i], ids[i]))
        if me not in placed:
            placed.add(me)
            if k in boxes:
                inner = [j for j in members[me] if j in watch.ops]
                nodes.append(_box_node(watch, boxes[k], inner, len(members[me]) - len(inner)))
            else:
                nodes.append(_op_node(op, me))
        for pos, i in enumerate(op.inputs):
            if i is None or ids[i] == me:
                continue
            kind = ("branch", "shortcut")[pos] if op.is_add and me[0] == "n" and ids[i][0] != "m" else "data"
            edges.setdefault((ids[i], me), GraphEdge(ids[i], me, kind))
    return nodes, list(edges.values())


def _op_node(op, me):
    where = op.call.name if op.call is not None and op.call.path else None
    if not op.is_add:
        return GraphNode(me, "op", op.name, where, op.shape, op.dtype, op.grad)
    record = op.residual_record()                    # outside a model, the name given to residual_add
    where = where or (record.name if record is not None else None)
    node = GraphNode(me, "add", "ResidualAdd" + (" + ReLU" if op.relu else ""), where, op.shape, op.dtype, op.grad)
    return _via(node, record)


def _box_node(watch, call, keys, inside):
    op = watch.ops[call.out if call.out in keys else max(keys)]
    node = GraphNode(f"m{call.index}", "module", call.name, call.cls, op.shape, op.dtype, op.grad, ops=len(keys),
                     params=inside)
    adds = [watch.ops[k] for k in keys if watch.ops[k].is_add]
    if len(adds) == 1:                  # a block: its add's two gradients
        _via(node, adds[0].residual_record())
    return node


def draw_graph(tensor, path=None, *, model=None, names=None, depth=None, watch=None, backend="auto", dpi=80,
               title=None):
    """Draw the autograd graph from the leaves to ``tensor``; returns an ``AutogradGraph`` (shown inline in a notebook).

    ``path`` ending in .png or .svg writes the image too, drawn by Graphviz's ``dot`` where it is
    installed, else by Matplotlib (``backend`` forces one). The graph comes from the newest
    ``watch_graph`` that saw ``tensor`` made (or ``watch``), else from the graph as it still stands.
    ``model`` and ``names`` ({name: tensor}) name the leaves. ``depth``: k draws each module whose
    path has k parts as one box (0: the whole model; "blocks": each residual block); None draws
    every op, or collapses at the deepest depth that keeps the drawing under ``MAX_NODES`` nodes.
    Collapsing needs the module calls a ``watch_graph(model)`` saw.
    """
    if path is not None:
        graph_render.image_format(path)
    check_backend(backend, "draw_graph")
    if not (depth is None or depth == "blocks" or (isinstance(depth, int) and depth >= 0)):
        raise ValueError(f"draw_graph: depth must be None, 'blocks' or an int >= 0, got {depth!r}")
    if not hasattr(tensor, "grad_fn"):
        raise TypeError(f"draw_graph: expected a minires tensor, got {type(tensor).__name__}")
    found = _find(tensor, watch)
    if found is None:
        if depth is not None:
            raise ValueError("draw_graph: collapsing per module (depth=...) needs the module calls; run the "
                             "forward pass inside `with minires.viz.watch_graph(model):`")
        found = _standing(tensor, model, names)
    else:
        found.name_leaves(model, names)
    root = found.key(tensor)
    if depth is None and found.calls and len(_build(found, root, None)[0]) > MAX_NODES:
        for depth in range(max(c.depth for c in found.calls), -1, -1):
            if len(_build(found, root, depth)[0]) <= MAX_NODES:
                break
    nodes, edges = _build(found, root, depth)
    ops, boxes = sum(n.kind in ("op", "add") for n in nodes), sum(n.kind == "module" for n in nodes)
    if title is None:
        title = f"autograd graph: {ops} ops" + (f", {boxes} modules (depth {depth}) as boxes" if boxes else "")
    graph = AutogradGraph(nodes, edges, title, depth, dpi=dpi)
    if path is not None:
        graph.save(path, backend)
    return graph
