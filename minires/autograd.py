"""Reverse-mode automatic differentiation: Function, the backward pass, hooks, no_grad.

Every op is a ``Function`` subclass whose ``forward`` takes arrays and whose
``backward`` maps the gradient of the output to gradients of the inputs.
``Function.apply`` runs forward and, when a gradient is wanted, links the
output tensor to the Function that made it. ``backward`` walks that graph
from the output to the leaves, in reverse topological order, without
recursion.

Two kinds of hook let other code watch the gradients go by without the
engine knowing what they are for (as in PyTorch): ``tensor.register_hook(fn)``
sees the gradient of a tensor, ``tensor.grad_fn.register_hook(fn)`` sees what
one Function's backward returned. ``minires.residual`` builds its records
on the second. A third, ``with function_hook(fn):``, sees each Function as
``apply`` links it into the graph (what a drawing of the graph needs to know
before backward frees it).

In-place changes are caught as PyTorch catches them: every tensor has a
version, bumped by each in-place change (``t.data -= lr * g`` in
``optimizer.step()``, ``increment_version``) and shared with its views.
``apply`` notes the versions of a Function's inputs and output, and
``backward`` raises before any Function's backward runs if one that it reads
(``saved_inputs``, ``saves_output``) has changed since: its gradient would be wrong.

The engine knows tensors only by their attributes (``data``,
``requires_grad``, ``grad_fn``, ``grad``, ``_version``, and the ``_hooks``,
``_retains_grad`` and ``_version_counter`` that ``Tensor`` keeps for it); the tensors it makes are of
the class of those it was given, so this module never imports ``tensor``.
"""
import contextlib
import threading

from .backend import array_module, device_of
from .errors import ShapeError

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


def increment_version(tensor):
    """Note that ``tensor``'s array was changed in place by other means (``t.data[...] = v``, a kernel)."""
    tensor._version_counter[0] += 1


def no_grad():
    """Context manager (or decorator) inside which ops build no graph."""
    return _GradMode(False)


def enable_grad():
    """Context manager (or decorator) that turns graph building back on."""
    return _GradMode(True)


@contextlib.contextmanager
def function_hook(hook):
    """Inside, call ``hook(fn, output)`` each time ``Function.apply`` links an output into the graph.

    Watches a forward pass op by op without the ops knowing (an op counter, a
    drawing of the graph); what the hook returns is ignored. Per thread; nests.
    """
    if "function_hooks" not in vars(_state):
        _state.function_hooks = []
    _state.function_hooks.append(hook)
    try:
        yield
    finally:
        _state.function_hooks.remove(hook)


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
    # the tensors apply() was called with (None once backward has freed the graph)
    inputs = ()
    # what register_hook added (a list of this instance's own once there is one)
    _hooks = ()
    # the positions of the inputs that backward reads (None: all of them, the safe default for a new
    # op): an in-place change to one of them between forward and backward makes backward raise
    saved_inputs = None
    # whether backward reads the output forward returned (Exp's y, Relu's y): then changing it raises too
    saves_output = False

    def forward(self, *args, **params):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params):
        """Run the op on tensors (or ``None`` for absent optional inputs); the result is a tensor too."""
        fn = cls()
        tensor_class = type(next(t for t in inputs if t is not None))
        arrays = [None if t is None else t.data for t in inputs]
        kinds = {type(a) for a in arrays if a is not None}
        if len(kinds) > 1 and len({device_of(a) for a in arrays if a is not None}) > 1:
            shapes = ", ".join(f"{device_of(a)} {a.shape}" for a in arrays if a is not None)
            raise RuntimeError(f"{cls.__name__}: inputs live on different devices ({shapes}); "
                               "move them with .to(device) first")
        out = fn.forward(*arrays, **params)
        needs_grad = is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
        result = tensor_class(out, requires_grad=needs_grad)
        base = getattr(out, "base", None)
        if base is not None:  # a view of an input (reshape, permute, a slice) shares its version counter
            for t, a in zip(inputs, arrays):
                if a is not None and (base is a or base is a.base):
                    result._version_counter = t._version_counter
                    break
        if not needs_grad:
            return result
        fn.inputs = inputs
        fn.needs_input_grad = tuple(t is not None and t.requires_grad for t in inputs)
        fn.saved_versions = [None if t is None else t._version for t in inputs]
        fn.output_version = result._version
        result.grad_fn = fn
        for hook in getattr(_state, "function_hooks", ()):
            hook(fn, result)
        return result

    def register_hook(self, hook):
        """Call ``hook(grad_inputs, grad_output)`` each time backward runs through this Function.

        ``grad_inputs`` is the tuple ``backward`` returned (one array or None
        per input of ``apply``), ``grad_output`` the gradient it was given.
        The hook watches: what it returns is ignored. Returns a handle with ``remove()``.
        """
        if "_hooks" not in vars(self):
            self._hooks = []
        self._hooks.append(hook)
        return RemovableHandle(self._hooks, hook)

    def release(self):
        """Drop what forward saved and the links to the inputs (the graph is freed)."""
        kept = {k: v for k, v in vars(self).items() if k in self.keep_after_backward}
        vars(self).clear()
        vars(self).update(kept)
        self.inputs = None

    def __repr__(self):
        return f"<{type(self).__name__}>"


class RemovableHandle:
    """What ``register_hook`` returns: ``handle.remove()`` unregisters the hook."""

    def __init__(self, hooks, hook):
        self.hooks, self.hook = hooks, hook

    def remove(self):
        if self.hook in self.hooks:
            self.hooks.remove(self.hook)


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


def _check_versions(fn, output):
    """Raise, as PyTorch does, if a tensor that ``fn``'s backward reads was changed in place since its forward."""
    saved = range(len(fn.inputs)) if fn.saved_inputs is None else fn.saved_inputs
    for i in saved:
        t = fn.inputs[i]
        if t is not None and t._version != fn.saved_versions[i]:
            _modified(fn, f"input {i}", t, fn.saved_versions[i])
    if fn.saves_output and output._version != fn.output_version:
        _modified(fn, "the output", output, fn.output_version)


def _modified(fn, which, t, expected):
    name = type(fn).__name__
    raise RuntimeError(
        f"{name}: one of the variables needed for gradient computation has been modified by an inplace "
        f"operation: {which} of {name} (shape {t.data.shape}, dtype {t.data.dtype}) is at version "
        f"{t._version}; expected version {expected} instead. Hint: change it after backward (e.g. call "
        "optimizer.step() after loss.backward()), or change a copy")


def queue_callback(fn):
    """Run ``fn()`` when the backward pass under way has finished (as PyTorch's engine ``queue_callback``).

    Tensor hooks see each gradient as it is made; a callback sees them all, e.g.
    to wait for the gradient all-reduces that data parallelism started.
    """
    queue = getattr(_state, "callbacks", None)
    if queue is None:
        raise RuntimeError("queue_callback: no backward pass is under way (call it from a hook)")
    queue.append(fn)


def backward(root, grad=None, retain_graph=False):
    """Accumulate d(root)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

    ``grad`` is the gradient of some scalar with respect to ``root``; it may
    be omitted only when ``root`` holds a single element (it is then 1).
    """
    if getattr(_state, "callbacks", None) is not None:
        raise RuntimeError("backward: a backward pass is already under way in this thread (from a hook?)")
    _state.callbacks = []
    try:
        _backward(root, grad, retain_graph)
        while _state.callbacks:
            _state.callbacks.pop(0)()
    finally:
        _state.callbacks = None


def _backward(root, grad, retain_graph):
    if not root.requires_grad:
        raise RuntimeError("backward: this tensor does not require grad and has no grad_fn")
    Tensor = type(root)
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
    for t in reversed(order):  # before any gradient moves: a refused backward leaves every .grad as it was
        if t.grad_fn is not None:
            _check_versions(t.grad_fn, t)
    # id(tensor) -> [gradient array, whether the engine owns it (may add into it in place)]
    grads = {id(root): [grad, True]}
    for i in range(len(order) - 1, -1, -1):
        t = order[i]
        if not retain_graph:  # the graph's tensors go as their gradients move on: memory peaks lower
            order[i] = None
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
        for hook in fn._hooks:
            hook(in_grads, g)
        for inp, gi in zip(fn.inputs, in_grads):
            if inp is None or gi is None or not inp.requires_grad:
                continue
            _check_grad(fn, inp, gi)
            _accumulate(grads, inp, gi)
        if not retain_graph:
            fn.release()
