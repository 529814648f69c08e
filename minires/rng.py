"""The framework's random number generator, so one ``manual_seed`` makes a run repeatable."""
import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed):
    """Reseed the generator behind randn, rand, weight initialisation and data shuffling."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def generator():
    """The current ``numpy.random.Generator``."""
    return _generator
