"""Errors for bad input: they name the op (or the layer) and the shapes involved."""


class _LayerError:
    """An op's complaint that a module, on the way out, labels with its type and name.

    The op raises ``ShapeError("expected 3 input channels, got 1 (...)", op="conv2d")``
    and reads ``conv2d: expected ...``. The innermost module the error passes
    through sets ``layer`` ("Conv2d") and every module on the way out adds
    its attribute name to ``path``, so a model reports
    ``Conv2d(layer1.0.conv1): expected ...``.
    """

    def _setup(self, message, op):
        self.message, self.op, self.layer, self.path = message, op, None, []

    def __str__(self):
        if self.layer is None:
            return f"{self.op}: {self.message}" if self.op else self.message
        name = ".".join(reversed(self.path))
        return f"{self.layer}({name}): {self.message}" if name else f"{self.layer}: {self.message}"


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


class DimError(ShapeError, IndexError):
    """A dim out of range: the IndexError PyTorch raises, and a ShapeError (so a layer labels it)."""
