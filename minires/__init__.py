"""minires: a from-scratch educational deep-learning framework for residual networks.

    import minires
    import minires.functional as F
    x = minires.randn(2, 3, 8, 8, requires_grad=True)

Only NumPy, Matplotlib and tqdm are needed; Numba, CuPy and PyTorch are
optional and are looked for when asked for.
"""
import numpy as _np

from . import cuda, kernels
from .autograd import Function, ResidualRecord, enable_grad, is_grad_enabled, no_grad, record_residuals
from .errors import DTypeError, ShapeError
from .tensor import Tensor, arange, full, ones, ones_like, rand, randn, tensor, zeros, zeros_like
from . import functional
from . import nn
from .gradcheck import GradcheckError, gradcheck
from .rng import manual_seed
from .serialization import load, save
from .viz import plot_model, summary

float16, float32, float64 = _np.float16, _np.float32, _np.float64
int32, int64 = _np.int32, _np.int64

__version__ = "0.1.0"


def use_kernels(name):
    """Force a kernel backend for its device: "numpy" or "numba" (CPU), "cupy" or "numba-cuda" (GPU)."""
    return kernels.use(name)
