"""minires: a from-scratch educational deep-learning framework for residual networks.

    import minires
    import minires.functional as F
    x = minires.randn(2, 3, 8, 8, requires_grad=True)

Only NumPy, Matplotlib and tqdm are needed; Numba, CuPy and PyTorch are
optional and are looked for when asked for.

The path through the code, one file (or folder) a step:

    tensor.py, autograd.py   Tensor, Function, the backward pass and its hooks
    ops.py                   the elementwise, reduction and shape ops behind Tensor's operators
    functional.py            conv2d, batch_norm, relu, pooling, linear, cross_entropy, concat
    kernels/numpy_ref.py     the readable kernels those ops call: im2col GEMM, batch norm, pooling
    residual.py              the residual add, its 1 + dF/dx, and the records of what flows back
    nn/                      Module, Parameter, the layers over functional, initialisation
    models/                  the blocks (each ends in F.residual_add) and the ResNet family
    viz/                     summary, plot_model and gradient_flow: looking at models

Beside that path: optim, data, train (the training loop), serialization,
gradcheck, and the tooling that uses the library but is never used by it
(course/ for instructors, bench/ for speed, cli.py for the ``minires`` command).
"""
import numpy as _np

from . import cuda, kernels
from .autograd import Function, enable_grad, is_grad_enabled, no_grad
from .errors import DimError, DTypeError, ShapeError
from .tensor import Tensor, arange, full, ones, ones_like, rand, randn, tensor, zeros, zeros_like
from .residual import ResidualRecord, record_residuals
from . import functional
from . import distributed, nn
from .gradcheck import GradcheckError, gradcheck
from .rng import manual_seed
from .serialization import SerializationError, load, save
from .viz import plot_model, summary

float16, float32, float64 = _np.float16, _np.float32, _np.float64
int32, int64 = _np.int32, _np.int64

__version__ = "0.1.0"


def use_kernels(name):
    """Force a kernel backend for its device: "numpy" or "numba" (CPU), "cupy" or "numba-cuda" (GPU).

    "auto" gives the CPU back its automatic choice: "numba" when it is installed
    and loads, "numpy" without it or in a student copy. ``MINIRES_KERNELS`` sets
    a process's default; ``minires.kernels.why()`` says which choice ran and why.
    """
    return kernels.use(name)
