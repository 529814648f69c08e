"""Errors for bad input: they name the op (or the layer) and the shapes involved."""


def _own_op(layer, op):
    """True when ``op`` is the layer's own (Conv2d's conv2d, BatchNorm2d's batch_norm): not worth saying twice."""
    a, b = layer.lower(), op.replace("_", "").lower()
    return a.startswith(b) or b.startswith(a)


class _LayerError:
    """An op's complaint that a module, on the way out, labels with its type and name.

    The op raises ``ShapeError("expected 3 input channels, got 1 (...)", op="conv2d")``
    and reads ``conv2d: expected ...``. The innermost module the error passes
    through sets ``layer`` ("Conv2d") and every module on the way out names
    the one inside it in ``path`` (innermost first), so a model reports
    ``Conv2d(layer1.0.conv1): expected ...``. An op that is not the layer's own
    is named after the path: ``Block(layer1.0): add: shapes ... do not broadcast``.
    """

    def _setup(self, message, op):
        self.message, self.op, self.layer, self.path = message, op, None, []
        self.module = None          # the outermost module the error has left so far (Module.__call__ sets it)
        self.provisional = False    # path[-1] is that module's own attribute name, until its parent says

    def __reduce__(self):  # pickles (to another process) without the module it passed through
        return type(self), self.args, dict(vars(self), module=None)

    def __str__(self):
        if self.layer is None:
            return f"{self.op}: {self.message}" if self.op else self.message
        name = ".".join(reversed(self.path))
        where = f"{self.layer}({name})" if name else self.layer
        if self.op and not _own_op(self.layer, self.op):
            return f"{where}: {self.op}: {self.message}"
        return f"{where}: {self.message}"


class ShapeError(_LayerError, ValueError):
    """An input has the wrong shape for an op or a layer."""

    def __init__(self, message, op=None):
        ValueError.__init__(self, message)
        self._setup(message, op)


class DTypeError(_LayerError, TypeError):
    """An input has the wrong dtype, e.g. an integer tensor where floats are needed."""

    def __init__(self, message, op=None):
        TypeError.__init__(self, message)
        self._setup(message, op)


class IndexShapeError(ShapeError, IndexError):
    """An index that does not fit the tensor (out of bounds, too many, index arrays that do not broadcast):
    the IndexError NumPy and PyTorch raise, and a ShapeError, so a layer labels it."""


class DimError(IndexShapeError):
    """A dim out of range: the IndexError PyTorch raises, and a ShapeError (so a layer labels it)."""
