"""The BLAS bridge of the Numba CPU kernels: a GEMM that compiled code can call.

``gemm(blas, a, b, c, accumulate)``, called inside ``@njit`` code, computes
c = a @ b (or c += a @ b) for 2-D operands whose rows or columns are
contiguous. np.dot inside @njit calls SciPy's BLAS. When NumPy's own
OpenBLAS (the scipy-openblas that NumPy's wheels ship) is loaded, ``gemm``
calls its CBLAS gemm directly instead: it is a newer build that runs these
skinny products up to 40% faster here, and it can add into its output
(beta = 1), which saves a temporary per sample. The call goes through the
function's address, which the kernels receive as an argument
(``blas = CBLAS[dtype]``), so they stay cacheable.

``blas_threads(1)`` keeps the BLAS libraries single-threaded while each of
the kernels' prange threads runs a GEMM of its own.
"""
import contextlib

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _cblas_gemm(typingctx, address, ilp64, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """cblas_?gemm(RowMajor, ta, tb, m, n, k, 1, a, lda, b, ldb, beta, c, ldc) through the function at ``address``.

    ``ilp64`` (a literal bool) says whether the library's integers are 64-bit.
    """
    if not isinstance(ilp64, types.BooleanLiteral):
        return None

    def codegen(context, builder, signature, args):
        address, _, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc = args
        aty, bty, cty = signature.args[7], signature.args[9], signature.args[12]
        blas_int, i32 = ir.IntType(64 if ilp64.literal_value else 32), ir.IntType(32)
        real = context.get_value_type(cty.dtype)
        ptr = real.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, blas_int, blas_int, blas_int, real, ptr, blas_int,
                                               ptr, blas_int, real, ptr, blas_int])

        def integer(v, width=blas_int):
            return builder.trunc(v, width) if width.width < 64 else v

        def data(ty, value):
            return builder.bitcast(context.make_array(ty)(context, builder, value).data, ptr)

        beta = builder.fptrunc(beta, real) if real != ir.DoubleType() else beta
        row_major = ir.Constant(i32, 101)
        builder.call(builder.inttoptr(address, fnty.as_pointer()),
                     [row_major, integer(ta, i32), integer(tb, i32), integer(m), integer(n), integer(k),
                      ir.Constant(real, 1.0), data(aty, a), integer(lda), data(bty, b), integer(ldb), beta,
                      data(cty, c), integer(ldc)])
        return context.get_dummy_value()

    sig = types.void(types.intp, ilp64, types.intp, types.intp, types.intp, types.intp, types.intp,
                     a, types.intp, b, types.intp, types.float64, c, types.intp)
    return sig, codegen


@njit(cache=True)
def _operand(a):
    """(CBLAS transpose flag, leading dimension) of a 2-D operand whose rows or columns are contiguous.

    The stride of an axis of length 1 means nothing (a (1, n) view may say 1),
    so such an axis never decides the layout and the leading dimension is at
    least what BLAS requires.
    """
    m, n = a.shape
    s0, s1 = a.strides[0] // a.itemsize, a.strides[1] // a.itemsize
    if (n == 1 or s1 == 1) and (m == 1 or s0 >= n):
        return 111, max(s0, n, 1) if m > 1 else max(n, 1)  # CblasNoTrans: row-major
    return 112, max(s1, m, 1) if n > 1 else max(m, 1)      # CblasTrans: the transpose of a row-major matrix


@njit(cache=True)
def gemm(blas, a, b, c, accumulate):
    """c = a @ b, or c += a @ b when ``accumulate``; blas = (address of NumPy's cblas gemm or 0, ilp64)."""
    address, ilp64 = blas
    if address == 0:
        a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)  # np.dot's own gemm wants contiguous operands
        if accumulate:
            c += np.dot(a, b)
        else:
            np.dot(a, b, c)
        return
    ta, lda = _operand(a)
    tb, ldb = _operand(b)
    m, n, k = c.shape[0], c.shape[1], a.shape[1]
    ldc = max(c.strides[0] // c.itemsize, n, 1) if m > 1 else max(n, 1)  # c: row-major (rows contiguous)
    beta = 1.0 if accumulate else 0.0
    if ilp64:
        _cblas_gemm(address, True, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc)
    else:
        _cblas_gemm(address, False, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc)


# NumPy's wheels ship OpenBLAS built as "scipy-openblas" with prefixed names: 64-bit integers
# in NumPy's (suffix 64_), 32-bit in SciPy's. Other BLAS builds are left to np.dot.
_NAMES = (("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", True),
          ("scipy_cblas_sgemm", "scipy_cblas_dgemm", False))


def _find_cblas():
    """{dtype: (address of the cblas gemm for it, ilp64)} from the BLAS NumPy loaded; address 0 when none is known."""
    found = {np.dtype(np.float32): (0, False), np.dtype(np.float64): (0, False)}
    try:
        import ctypes
        from threadpoolctl import threadpool_info
        paths = [i["filepath"] for i in threadpool_info() if i.get("user_api") == "blas"]
    except Exception:  # no threadpoolctl, or it could not inspect the process
        return found
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for single, double, ilp64 in _NAMES:
            if hasattr(lib, single) and hasattr(lib, double):
                found[np.dtype(np.float32)] = (ctypes.cast(getattr(lib, single), ctypes.c_void_p).value, ilp64)
                found[np.dtype(np.float64)] = (ctypes.cast(getattr(lib, double), ctypes.c_void_p).value, ilp64)
                return found
    return found


CBLAS = _find_cblas()  # what the kernels pass as ``blas``, by dtype

_blas_controller = None


def blas_threads(count):
    """A context in which the BLAS libraries use ``count`` threads (1 inside our prange loops).

    Every prange thread runs its own small GEMM; if the BLAS also started
    threads of its own, the two thread pools would fight over the cores.
    Needs threadpoolctl (installed with scikit-learn); without it this does nothing.
    """
    global _blas_controller
    if _blas_controller is None:
        try:
            import scipy.linalg.cython_blas  # noqa: F401  (the BLAS that np.dot inside @njit calls)
            from threadpoolctl import ThreadpoolController
            _blas_controller = ThreadpoolController().select(user_api="blas")
        except ImportError:
            _blas_controller = False
    return _blas_controller.limit(limits=count) if _blas_controller else contextlib.nullcontext()
