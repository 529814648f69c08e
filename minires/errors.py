"""The exceptions minires raises for bad input."""


class ShapeError(ValueError):
    """An op or layer got an input of the wrong shape, dtype or device.

    The message names the op (and, once a module re-raises it, the layer),
    what was expected and what came.
    """
