"""The CuPy backend's host-side logic, without CuPy or a GPU.

``kernels/cupy_kernels.py`` and ``cupy_base.py`` are imported here against a
fake ``cupy`` module: NumPy for arrays and ``matmul``, records for compiled
modules, kernel objects and launches, and the two window kernels carried out
by the NumPy reference with the layout the CUDA C's ``col_offset`` gives them.
That checks what surrounds the kernels: the batched GEMMs of the convolutions
and their 1x1 route (a GEMM, no im2col), argument order and layouts, the kernel
object cache, and how many blocks the batch-norm sums take. The elementwise
kernels' operations (SGD's fused update among them) are compiled by the host's
C++ compiler and run against the NumPy versions. What the CUDA C computes on a
GPU is checked on one (.ci/gpu-check); that it compiles, by test_gpu_compile.py.
"""
import ast
import ctypes
import importlib
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from minires import optim
from minires.course import is_removed
from minires.kernels import numpy_ref as ref

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(is_removed("kernels/cupy_kernels.py"),
                                reason="removed from this student copy: kernels/cupy_kernels.py")


def _emulate(name, args):
    """im2col / col2im as the CUDA C computes them, by the NumPy reference; other kernels do nothing."""
    if name not in ("im2col", "col2im"):
        return
    a, n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow, batch_major, out = args
    rows, pixels = c * kh * kw, oh * ow
    if name == "im2col":
        cols = ref.im2col(a, int(kh), int(kw), (sh, sw), (ph, pw))
        out[...] = cols.reshape(rows, n, pixels).transpose(1, 0, 2) if batch_major else cols
    else:
        cols = a.transpose(1, 0, 2).reshape(rows, n * pixels) if batch_major else a
        out[...] = ref.col2im(np.ascontiguousarray(cols), out.shape, int(kh), int(kw), (sh, sw), (ph, pw))


def _fake_cupy(log):
    cp = types.ModuleType("cupy")
    cp.is_available = lambda: True
    cp.ndarray = np.ndarray
    for name in ("empty", "zeros", "ones", "matmul", "ascontiguousarray", "asarray"):
        setattr(cp, name, getattr(np, name))

    class Function:
        def __init__(self, name):
            self.name = name

        def __call__(self, grid, block, args):
            log["launches"].append((self.name, grid, block, args))
            _emulate(self.name, args)

    class RawModule:
        def __init__(self, code):
            log["modules"].append(code)

        def get_function(self, name):
            log["get_function"].append(name)
            return Function(name)

    class ElementwiseKernel:
        def __init__(self, in_params, out_params, operation, name):
            self.name = name

        def __call__(self, *args):
            log["launches"].append((self.name, None, None, args))

    cp.RawModule, cp.ElementwiseKernel = RawModule, ElementwiseKernel
    cp.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0, deviceSynchronize=lambda: None),
        Device=lambda i=0: types.SimpleNamespace(attributes={"MultiProcessorCount": 132}))
    return cp


@pytest.fixture
def cupy_backend(monkeypatch):
    """(cupy_kernels, cupy_base, log) imported against the fake cupy, and forgotten afterwards."""
    log = {"launches": [], "modules": [], "get_function": []}
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(log))
    names = ("minires.kernels.cupy_base", "minires.kernels.cupy_kernels")
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        yield importlib.import_module(names[1]), importlib.import_module(names[0]), log
    finally:
        for name in names:
            sys.modules.pop(name, None)


CONVS = [((3, 3), (1, 1), (1, 1)), ((2, 2), (2, 2), (0, 0)), ((3, 2), (2, 1), (1, 1)),
         ((1, 1), (1, 1), (0, 0)), ((1, 1), (2, 2), (0, 0)), ((1, 1), (1, 1), (1, 1))]


@pytest.mark.parametrize("kernel, stride, padding", CONVS)
def test_convolutions_match_the_reference(cupy_backend, kernel, stride, padding):
    ck, _, log = cupy_backend
    rng = np.random.default_rng(0)
    x, weight = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, *kernel))
    y = ref.conv2d_forward(x, weight, stride, padding)
    dy = rng.standard_normal(y.shape)
    log["launches"].clear()
    np.testing.assert_allclose(ck.conv2d_forward(x, weight, stride, padding), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ck.conv2d_backward_input(dy, weight, x.shape, stride, padding),
                               ref.conv2d_backward_input(dy, weight, x.shape, stride, padding), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ck.conv2d_backward_weight(dy, x, weight.shape, stride, padding),
                               ref.conv2d_backward_weight(dy, x, weight.shape, stride, padding), rtol=1e-12,
                               atol=1e-12)
    launched = [name for name, *_ in log["launches"]]
    if kernel == (1, 1) and padding == (0, 0):
        assert launched == [], f"a 1x1 convolution is GEMMs alone, but launched {launched}"
    else:  # forward and input gradient on per-image columns (batch_major=1), the weight gradient on one matrix
        assert launched == ["im2col", "col2im", "im2col"]
        assert [int(args[-2]) for _, _, _, args in log["launches"]] == [1, 1, 0]


def test_kernel_objects_are_made_once_per_kernel_and_dtype(cupy_backend):
    ck, base, log = cupy_backend
    x = np.ones((1, 1, 4, 4), np.float32)
    log["get_function"].clear()
    log["modules"].clear()
    for _ in range(3):  # float32's im2col and avg_pool were made by the import's probe
        ck.im2col(x, 3, 3, (1, 1), (1, 1))
        base.avg_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
    assert log["get_function"] == [] and log["modules"] == []
    for _ in range(3):
        ck.im2col(x.astype(np.float64), 3, 3, (1, 1), (1, 1))
    assert log["get_function"] == ["im2col"] and len(log["modules"]) == 1  # once per (source, name, dtype)
    ck.col2im(np.ones((9, 16)), (1, 1, 4, 4), 3, 3, (1, 1), (1, 1))
    assert log["get_function"] == ["im2col", "col2im"] and len(log["modules"]) == 1  # one module per dtype
    assert log["modules"][0].startswith("typedef double T;\n" + base._PRELUDE)  # what test_gpu_compile compiles


def test_batch_norm_sums_fill_the_gpu(cupy_backend):
    ck, _, log = cupy_backend
    parts = ck.reduction_parts
    assert parts(16, 128 * 32 * 32, 132) * 16 >= 4 * 132  # resnet20's first stage: 528 blocks, not 16
    assert parts(64, 128 * 8 * 8, 132) * 64 >= 4 * 132
    assert parts(2048, 64 * 7 * 7, 132) == 1  # enough channels already
    assert parts(16, 300, 132) == 2  # never a block with no work for its 256 threads
    assert parts(3, 0, 132) == 1
    log["launches"].clear()
    x = np.zeros((128, 16, 32, 32), np.float32)
    ck.batch_norm_stats(x)
    (first, grid, block, args), (second, grid2, _, _) = log["launches"]
    assert (first, grid, block, second, grid2) == ("bn_stats_partials", (33, 16), (256,), "bn_stats_finish", (16,))
    assert args[-1].shape == (16 * 33 * 2,) and args[-1].dtype == np.float64


# ---------------------------------------------------------------- the elementwise operations, run on the host

def _elementwise_specs():
    specs = {}
    for name in ("cupy_base.py", "cupy_kernels.py"):
        for node in ast.parse((ROOT / "kernels" / name).read_text()).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_ELEMENTWISE":
                specs.update(ast.literal_eval(node.value))
    return specs


def _host_library(tmp_path_factory, ctype):
    """The elementwise operations as C functions over n elements (every parameter an array), built by g++."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("needs a C++ compiler (g++) to run the elementwise operations on the host")
    types_ = {"T": ctype, "bool": "bool"}
    code = [f"typedef {ctype} T;"]
    for name, (ins, outs, operation) in _elementwise_specs().items():
        ins = [p.split() for p in ins.split(",")]
        outs = [p.split() for p in outs.split(",")]
        args = [f"const {types_[t]}* _raw_{n}" for t, n in ins] + [f"{types_[t]}* _raw_{n}" for t, n in outs]
        binds = [f"const {types_[t]} {n} = _raw_{n}[i];" for t, n in ins] + \
                [f"{types_[t]} &{n} = _raw_{n}[i];" for t, n in outs]
        code.append(f'extern "C" void {name}(long long _n, {", ".join(args)}) {{\n'
                    f'  for (long long i = 0; i < _n; ++i) {{ {" ".join(binds)} {operation} }}\n}}')
    folder = tmp_path_factory.mktemp(f"elementwise-{ctype}")
    (folder / "ops.cpp").write_text("\n".join(code) + "\n")
    subprocess.run([compiler, "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(folder / "ops.so"),
                    str(folder / "ops.cpp")], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(folder / "ops.so"))


def _call(lib, name, n, *arrays):
    arrays = [np.ascontiguousarray(a) for a in arrays]
    getattr(lib, name)(ctypes.c_longlong(n), *[a.ctypes.data_as(ctypes.c_void_p) for a in arrays])
    return arrays


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["float", "double"])
def host_ops(request, tmp_path_factory):
    dtype = np.dtype(request.param)
    return _host_library(tmp_path_factory, "float" if dtype == np.float32 else "double"), dtype


@pytest.mark.parametrize("momentum, dampening, nesterov, wd", [(0.0, 0.0, False, 0.0), (0.0, 0.0, False, 5e-4),
                                                             (0.9, 0.0, False, 1e-4), (0.9, 0.0, True, 1e-4),
                                                             (0.8, 0.3, False, 0.0)])
def test_the_fused_sgd_kernel_computes_optims_update(host_ops, momentum, dampening, nesterov, wd):
    lib, dtype = host_ops
    rng = np.random.default_rng(5)
    n, lr = 1000, 0.05
    p_host = rng.standard_normal(n).astype(dtype)
    p_kernel, buf_host, buf_kernel = p_host.copy(), np.empty(n, dtype), np.empty(n, dtype)
    full = lambda v, kind=dtype: np.full(n, v, dtype=kind)  # noqa: E731  (every parameter an array here)
    for step in range(3):
        g = rng.standard_normal(n).astype(dtype)
        first = step == 0
        optim.sgd_update(p_host, g, buf_host if momentum else None, lr, wd, momentum, 1 - dampening, nesterov, first)
        if momentum:
            _, _, _, _, _, _, _, p_kernel, buf_kernel = _call(
                lib, "minires_sgd_momentum", n, g, full(lr), full(wd), full(momentum), full(1 - dampening),
                full(nesterov, np.bool_), full(first, np.bool_), p_kernel, buf_kernel)
        else:
            _, _, _, p_kernel = _call(lib, "minires_sgd", n, g, full(lr), full(wd), p_kernel)
        np.testing.assert_array_equal(p_kernel, p_host, err_msg=f"step {step}")
        if momentum:
            np.testing.assert_array_equal(buf_kernel, buf_host, err_msg=f"step {step}")


def _old_sgd_update(p, grad, state, group):
    """SGD.update before it was fused (minires 0.1.0), the oracle."""
    d = grad
    if group["weight_decay"]:
        d = d + group["weight_decay"] * p
    momentum = group["momentum"]
    if momentum:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = d.copy()
        else:
            buf *= momentum
            buf += (1 - group["dampening"]) * d
        d = d + momentum * buf if group["nesterov"] else buf
    p -= p.dtype.type(group["lr"]) * d


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_host_sgd_update_is_the_unfused_one(nesterov):
    rng = np.random.default_rng(6)
    group = dict(lr=0.1, weight_decay=1e-4, momentum=0.9, dampening=0.0, nesterov=nesterov)
    p_new = rng.standard_normal(50).astype(np.float32)
    p_old, state, buf = p_new.copy(), {}, np.empty(50, np.float32)
    for step in range(4):
        g = rng.standard_normal(50).astype(np.float32)
        _old_sgd_update(p_old, g, state, group)
        optim.sgd_update(p_new, g, buf, 0.1, 1e-4, 0.9, 1.0, nesterov, step == 0)
        np.testing.assert_array_equal(p_new, p_old)
        np.testing.assert_array_equal(buf, state["momentum_buffer"])


def test_the_other_elementwise_kernels_compute_the_reference(host_ops):
    lib, dtype = host_ops
    rng = np.random.default_rng(7)
    n = 64
    f, s, dy, x = (rng.standard_normal(n).astype(dtype) for _ in range(4))
    for relu in (True, False):
        (*_, y) = _call(lib, "minires_residual_add", n, f, s, np.full(n, relu), np.empty(n, dtype))
        np.testing.assert_array_equal(y, ref.residual_add_forward(f, s, relu))
    (*_, g) = _call(lib, "minires_relu_mask", n, dy, y, np.empty(n, dtype))
    np.testing.assert_array_equal(g, ref.residual_add_backward(dy, y, True)[0])
    scale, shift = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    (*_, out) = _call(lib, "minires_affine", n, x, scale, shift, np.empty(n, dtype))
    np.testing.assert_allclose(out, x * scale + shift, rtol=1e-6)
    # batch norm's input gradient, one channel of 64 values: the kernel against numpy_ref
    x4, dy4 = x.reshape(1, 1, 8, 8), dy.reshape(1, 1, 8, 8)
    mean, var = ref.batch_norm_stats(x4)
    invstd = (1 / np.sqrt(var + 1e-5)).astype(dtype)
    sc = np.array([1.5], dtype)
    dbias, dweight = ref.batch_norm_grad_sums(dy4, x4, mean, invstd)
    want = ref.batch_norm_backward_input(dy4, x4, mean, invstd, sc, dbias, dweight).reshape(n)
    per = lambda v: np.full(n, v[0], dtype)  # noqa: E731
    (*_, dx) = _call(lib, "minires_bn_backward_dx", n, dy, x, per(mean), per(invstd), per(sc), per(dbias),
                     per(dweight), np.full(n, n, dtype), np.empty(n, dtype))
    np.testing.assert_allclose(dx, want, rtol=1e-5, atol=1e-6)
