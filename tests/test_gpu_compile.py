"""Every GPU kernel compiled without a GPU: the CUDA C with NVRTC, the Numba CUDA kernels to PTX.

The GPU tests (test_gpu.py, the CuPy and Numba CUDA variants of test_kernels.py)
run only where there is a GPU; CI has none. So that a syntax or type error in a
kernel is still caught the day it is written, this file compiles them all here:

- the CUDA C of ``kernels/cupy_kernels.py`` and ``kernels/cupy_base.py`` with
  NVRTC (from the ``nvidia-cuda-nvrtc-cu12`` wheel, through ctypes), for two
  architectures (sm_75, sm_90) and both dtypes (T = float, double). The RawModule
  sources are compiled exactly as ``cupy_base.module`` puts them together; they
  are read from the files (``ast``), since those modules need CuPy and a GPU to import.
  The ``ElementwiseKernel`` operations are compiled inside a wrapper written
  here: one thread per element, each input ``const TYPE name = _raw_name[i];``,
  each output ``TYPE &name = _raw_name[i];``, as CuPy binds them. CuPy's own
  generated code around them (its CArray and indexer headers) is not compiled.
- every ``@cuda.jit`` kernel of ``kernels/numba_cuda.py`` and
  ``kernels/numba_cuda_base.py`` with ``numba.cuda.compile_ptx`` (NVVM from the
  ``nvidia-cuda-nvcc-cu12`` wheel), for float32 and float64 arrays, with the
  argument types the host functions pass.

Compiling is not running: what the kernels compute is tested on a GPU
(.ci/gpu-check), under Numba's simulator (test_kernels_cudasim.py), and for
the host-side logic of the CuPy backend in test_cupy_host_logic.py.
The last tests plant an error in a copy of a kernel and check that it fails,
naming the kernel and the compiler's message.

    pip install -e '.[cudacheck]'     # the NVRTC and NVVM wheels (about 300 MB)

Without them the tests skip, saying so; with MINIRES_REQUIRE_COMPILE_CHECK=1 (as .ci/run sets) they fail.
"""
import ast
import ctypes
import inspect
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

from minires.course import is_removed

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "pip install -e '.[cudacheck]'"
ARCHS = ("sm_75", "sm_90")  # Turing (T4) and Hopper (H100, H200)
C_TYPES = ("float", "double")
NUMBA_CCS = ((7, 5), (9, 0))




def _missing(reason):
    """Skip for want of a compiler, or fail where the check must run (MINIRES_REQUIRE_COMPILE_CHECK=1, CI)."""
    if os.environ.get("MINIRES_REQUIRE_COMPILE_CHECK") == "1":
        pytest.fail(f"{reason} (MINIRES_REQUIRE_COMPILE_CHECK=1: this check must run here)")
    pytest.skip(reason)


# ---------------------------------------------------------------- the sources, read from the files

def _literals(path):
    """{name: value} of the module-level assignments of ``path`` whose value is a literal."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return found


def cuda_sources():
    """[(label, RawModule source without the typedef)] and [(label, elementwise spec)], from the kernel files."""
    base = _literals(ROOT / "kernels" / "cupy_base.py")
    modules, elementwise = [], []
    for path in (ROOT / "kernels" / "cupy_base.py", ROOT / "kernels" / "cupy_kernels.py"):
        if is_removed(f"kernels/{path.name}"):
            continue  # a student copy: this module would show an exercise's solution
        for name, value in _literals(path).items():
            if name.endswith("_SOURCE"):
                modules.append((f"{path.name}:{name}", base["_PRELUDE"] + value))
            elif name == "_ELEMENTWISE":
                elementwise += [(f"{path.name}:{kernel}", (kernel, *spec)) for kernel, spec in value.items()]
    return modules, elementwise


_PARAM_TYPES = {"T": "T", "bool": "bool", "float32": "float", "float64": "double", "int32": "int",
                "int64": "long long"}


def elementwise_wrapper(name, in_params, out_params, operation):
    """A CUDA C kernel that runs ``operation`` on every element, the parameters bound as CuPy binds them."""
    def params(text):
        return [p.split() for p in text.split(",") if p.strip()]
    ins, outs = params(in_params), params(out_params)
    arguments = [f"const {_PARAM_TYPES[t]}* _raw_{n}" for t, n in ins] + \
                [f"{_PARAM_TYPES[t]}* _raw_{n}" for t, n in outs]
    binds = [f"const {_PARAM_TYPES[t]} {n} = _raw_{n}[i];" for t, n in ins] + \
            [f"{_PARAM_TYPES[t]} &{n} = _raw_{n}[i];" for t, n in outs]
    return (f'extern "C" __global__ void {name}({", ".join(arguments)}, long long _n) {{\n'
            "    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < _n;\n"
            "         i += (long long)blockDim.x * gridDim.x) {\n"
            + "".join(f"        {b}\n" for b in binds) +
            f"        {operation}\n    }}\n}}\n")


# ---------------------------------------------------------------- NVRTC through ctypes

def _load_nvrtc():
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
        return ctypes.CDLL(load_nvidia_dynamic_lib("nvrtc").abs_path)
    except Exception:
        pass
    for name in ("libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


@pytest.fixture(scope="module")
def nvrtc():
    lib = _load_nvrtc()
    if lib is None:
        _missing(f"needs NVRTC (libnvrtc.so.12) to compile the CUDA C kernels: {INSTALL}")
    return lib


def nvrtc_compile(lib, source, label, arch):
    """None when ``source`` compiles for ``arch``, else what failed: the kernel at the first error, and the log."""
    program = ctypes.c_void_p()
    strings = lambda items: (ctypes.c_char_p * len(items))(*[s.encode() for s in items])  # noqa: E731
    status = lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), f"{label}.cu".encode(), 0, None, None)
    assert status == 0, f"nvrtcCreateProgram failed ({status})"
    try:
        options = [f"--gpu-architecture={arch}"]
        status = lib.nvrtcCompileProgram(program, len(options), strings(options))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, log)
        log = log.value.decode(errors="replace").strip()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))
    if status == 0:
        return None
    line = re.search(r"\((\d+)\): (?:catastrophic )?error", log)
    where = _kernel_at(source, int(line.group(1))) if line else "?"
    return f"{label}, kernel {where}, {arch}: NVRTC error {status}:\n{log}"


def _kernel_at(source, line):
    """The name of the kernel or device function that holds ``line`` (1-based) of ``source``."""
    name = "(before any function)"
    for text in source.splitlines()[:line]:
        found = re.search(r"__(?:global|device)__\s+\w[\w\s\*&]*?\b(\w+)\s*\(", text)
        if found:
            name = found.group(1)
    return name


def _typed(source, ctype):
    return f"typedef {ctype} T;\n" + source  # as cupy_base.module does


def test_the_sources_are_found():
    if is_removed("kernels/cupy_kernels.py"):
        pytest.skip("removed from this student copy: kernels/cupy_kernels.py")
    modules, elementwise = cuda_sources()
    labels = {label for label, _ in modules}
    assert {"cupy_kernels.py:_SOURCE", "cupy_base.py:_POOL_SOURCE"} <= labels, labels
    kernels = {spec[0] for _, spec in elementwise}
    assert {"minires_residual_add", "minires_sgd_momentum"} <= kernels, kernels
    text = "".join(source for _, source in modules)
    for name in ("im2col", "col2im", "max_pool", "avg_pool_backward", "bn_stats_partials", "bn_grad_finish"):
        assert f" {name}(" in text, name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ctype", C_TYPES)
def test_every_cuda_c_kernel_compiles_with_nvrtc(nvrtc, arch, ctype):
    modules, elementwise = cuda_sources()
    failures = [nvrtc_compile(nvrtc, _typed(source, ctype), label, arch) for label, source in modules]
    failures += [nvrtc_compile(nvrtc, _typed(elementwise_wrapper(*spec), ctype), label, arch)
                 for label, spec in elementwise]
    failures = [f for f in failures if f]
    assert not failures, "\n\n".join(failures)


def test_a_syntax_error_planted_in_a_raw_kernel_fails_naming_it(nvrtc):
    modules, _ = cuda_sources()
    source = dict(modules)["cupy_kernels.py:_SOURCE"]
    good = "i64 iy = tap_input(oy, i, sh, ph), ix = tap_input(ox, j, sw, pw);"
    assert source.count(good) == 1, "the planted error's anchor moved: update this test"
    broken = source.replace(good, good.replace("ph), ix", "ph) ix"))
    failure = nvrtc_compile(nvrtc, _typed(broken, "float"), "planted", "sm_90")
    assert failure is not None, "NVRTC compiled a kernel with a syntax error"
    assert "kernel im2col" in failure and "error" in failure, failure


def test_a_type_error_planted_in_an_elementwise_kernel_fails_naming_it(nvrtc):
    _, elementwise = cuda_sources()
    name, in_params, out_params, operation = dict(elementwise)["cupy_kernels.py:minires_relu_mask"]
    broken = operation.replace(": (T)0;", ": &dy;")  # a pointer where a T belongs
    assert broken != operation, "the planted error's anchor moved: update this test"
    failure = nvrtc_compile(nvrtc, _typed(elementwise_wrapper(name, in_params, out_params, broken), "double"),
                            "planted", "sm_75")
    assert failure is not None, "NVRTC compiled a kernel with a type error"
    assert "kernel minires_relu_mask" in failure and "error" in failure, failure


# ---------------------------------------------------------------- Numba CUDA kernels to PTX

@pytest.fixture(scope="module")
def numba_kernels():
    """{name: (module, dispatcher)} of every kernel (not device function) in the Numba CUDA files.

    The modules refuse to import without a GPU, so they are imported with ``cuda.is_available`` saying
    True, and taken out of ``sys.modules`` again: no other test may find them loaded.
    """
    try:
        from numba import cuda
    except ImportError:
        _missing("needs numba-cuda: pip install -e '.[numba]'")
    from numba import config
    if config.ENABLE_CUDASIM:
        pytest.skip("compile_ptx needs the real CUDA target, not the simulator")
    try:
        cuda.compile_ptx(lambda a: None, "void(float32[:])", cc=NUMBA_CCS[0])
    except Exception as exc:
        _missing(f"numba-cuda cannot compile to PTX here ({type(exc).__name__}: {str(exc)[:200]}): {INSTALL}")
    import importlib
    before = set(sys.modules)
    real = cuda.is_available
    cuda.is_available = lambda: True
    try:
        modules = [importlib.import_module(f"minires.kernels.{m}") for m in ("numba_cuda_base", "numba_cuda")]
    finally:
        cuda.is_available = real
        for name in set(sys.modules) - before:
            if "numba_cuda" in name:
                del sys.modules[name]
    found = {}
    for module in modules:
        for name, obj in vars(module).items():
            if type(obj).__name__ == "CUDADispatcher" and not obj.targetoptions.get("device") \
                    and obj.py_func.__module__ == module.__name__:
                found[name] = (module, obj)
    return found


def _signatures(dtype):
    """kernel -> its argument types with ``dtype`` data, as the host functions of numba_cuda pass them."""
    from numba import types
    t = types.float32 if dtype == "float32" else types.float64
    a = lambda ndim, kind=t: types.Array(kind, ndim, "C")  # noqa: E731
    i, b = types.int64, types.boolean
    win = (i,) * 6  # kh, kw, sh, sw, ph, pw
    return {
        "_im2col_kernel": (a(4), *win, i, i, a(2)),
        "_col2im_kernel": (a(2), *win, i, i, a(4)),
        "_swap_kernel": (a(3), a(3)),
        "_residual_add_kernel": (a(1), a(1), b, a(1)),
        "_relu_mask_kernel": (a(1), a(1), a(1)),
        "_bn_stats_kernel": (a(4), a(3, types.float64), a(1), a(1), b),
        "_channel_affine_kernel": (a(4), a(1), a(1), a(4)),
        "_bn_grad_sums_kernel": (a(4), a(4), a(1), a(1), a(3, types.float64), a(1), a(1), b),
        "_bn_backward_dx_kernel": (a(4), a(4), a(1), a(1), a(1), a(1), a(1), a(4)),
        "_max_pool_kernel": (a(4), *win, a(4), a(4, types.int32)),
        "_max_pool_backward_kernel": (a(4), a(4, types.int32), *win, a(4)),
        "_avg_pool_kernel": (a(4), *win, a(4)),
        "_avg_pool_backward_kernel": (a(4), *win, a(4)),
    }


def numba_compile(name, pyfunc, argtypes, cc):
    """None when kernel ``pyfunc`` compiles to PTX for ``cc``, else what failed, naming the kernel.

    The device functions it calls (``cuda.jit(device=True)`` dispatchers) ask the current device for its
    compute capability when they compile; there is no device here, so they are told ``cc``.
    """
    import types as pytypes

    from numba import cuda, types
    from numba.cuda import dispatcher
    real = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)
    try:
        ptx, _ = cuda.compile_ptx(pyfunc, types.void(*argtypes), cc=cc)
    except Exception as exc:
        message = "\n".join(str(exc).splitlines()[:12])
        return f"kernel {name}, cc {cc[0]}.{cc[1]}: {type(exc).__name__}: {message}"
    finally:
        dispatcher.get_current_device = real
    return None if ".entry" in ptx else f"kernel {name}, cc {cc[0]}.{cc[1]}: no kernel entry in the PTX"


def _kept(name):
    """False for a kernel that this student copy removed (it would show an exercise's solution)."""
    return not is_removed("kernels/numba_cuda.py", name)


def test_every_numba_kernel_has_a_signature_here(numba_kernels):
    assert {n for n in numba_kernels if _kept(n)} == {n for n in _signatures("float32") if _kept(n)}, (
        "a kernel was added or renamed in kernels/numba_cuda*.py: give it its argument types in _signatures")


@pytest.mark.parametrize("cc", NUMBA_CCS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_numba_cuda_kernel_compiles_to_ptx(numba_kernels, dtype, cc):
    failures = []
    for name, argtypes in _signatures(dtype).items():
        if not _kept(name):
            continue  # a student copy without this kernel's solution
        failures.append(numba_compile(name, numba_kernels[name][1].py_func, argtypes, cc))
    failures = [f for f in failures if f]
    assert not failures, "\n\n".join(failures)


def test_a_type_error_planted_in_a_numba_kernel_fails_naming_it(numba_kernels):
    if not _kept("_relu_mask_kernel"):
        pytest.skip("removed from this student copy: _relu_mask_kernel")
    module, dispatcher = numba_kernels["_relu_mask_kernel"]
    source = textwrap.dedent(inspect.getsource(dispatcher.py_func))
    good = "g[k] = grad_out[k] if y[k] > 0 else 0"
    assert good in source, "the planted error's anchor moved: update this test"
    namespace = dict(vars(module))
    exec(compile(source.replace(good, 'g[k] = grad_out[k] if y[k] > 0 else "zero"'), "planted", "exec"), namespace)
    planted = getattr(namespace["_relu_mask_kernel"], "py_func", namespace["_relu_mask_kernel"])
    failure = numba_compile("_relu_mask_kernel", planted,
                            _signatures("float32")["_relu_mask_kernel"], NUMBA_CCS[-1])
    assert failure is not None, "numba compiled a kernel that stores a string into a float array"
    assert failure.startswith("kernel _relu_mask_kernel") and "TypingError" in failure, failure
    assert numba_compile("_relu_mask_kernel", dispatcher.py_func, _signatures("float32")["_relu_mask_kernel"],
                         NUMBA_CCS[-1]) is None, "the unbroken kernel must compile"

