"""The shape of the code: imports point one way, tooling stays beside the library, files stay short.

DESIGN.md fixes the direction of imports:

    kernels <- backend <- autograd <- tensor <- functional, residual <- nn <- models
            <- optim, data, train, viz, gradcheck ... <- course, bench <- cli

These tests read every module's imports (top-level and inside functions)
with ``ast`` and fail on any that point the other way, so a cycle or an
upward import is caught the day it is written.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "minires"
KERNELS = ROOT / "kernels"

# layer of each top-level module or subpackage of minires: a module may import only lower layers
LAYER = {
    "kernels": 0,
    "errors": 1, "rng": 1, "backend": 1,
    "autograd": 2, "cuda": 2,
    "ops": 3,
    "tensor": 4,
    "checks": 5, "gradcheck": 5, "serialization": 5,
    "residual": 6, "distributed": 6, "functional_extra": 6,  # functional re-exports functional_extra: below it
    "functional": 7, "ring": 7,
    "nn": 8, "optim": 8, "data": 8,
    "models": 9,
    "viz": 10,
    "train": 11, "experiments": 12,
    "course": 13, "bench": 13,
    "cli": 14,
}
TOOLING = {"course", "bench", "cli"}


def _modules():
    """(unit, path) for every library file: unit is the top-level module or subpackage it belongs to."""
    for path in sorted(LIBRARY.rglob("*.py")):
        rel = path.relative_to(LIBRARY)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue  # the package's front door imports everything on purpose
        yield rel.parts[0].removesuffix(".py"), path
    for path in sorted(KERNELS.glob("*.py")):
        yield "kernels", path


def _imported_units(path):
    """The minires units a file imports, with line numbers (relative imports resolved)."""
    rel = path.relative_to(ROOT)
    package = ["minires"] + list(rel.parts[1:-1]) if rel.parts[0] == "minires" else ["minires", "kernels"]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            else:
                target = (node.module or "").split(".")
            if target[0] != "minires":
                continue
            if len(target) == 1:  # from minires import x, y: each name is a unit
                found += [(alias.name, node.lineno) for alias in node.names]
            else:
                found.append((target[1], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "minires" and len(parts) > 1:
                    found.append((parts[1], node.lineno))
    return found


def test_every_library_module_has_a_layer():
    units = {unit for unit, _ in _modules()}
    assert units <= set(LAYER), f"modules without a layer in this test: {sorted(units - set(LAYER))}"


@pytest.mark.parametrize("unit, path", list(_modules()), ids=lambda v: str(v).split("/work/main/")[-1])
def test_imports_point_one_way(unit, path):
    wrong = [f"line {line}: imports {target} (layer {LAYER.get(target)})"
             for target, line in _imported_units(path)
             if target != unit and target in LAYER and LAYER[target] >= LAYER[unit]]
    assert not wrong, f"{path.relative_to(ROOT)} (layer {LAYER[unit]}) imports upward or sideways: {wrong}"


def test_the_library_never_imports_its_tooling():
    users = [f"{path.relative_to(ROOT)}:{line} imports {target}" for unit, path in _modules()
             if unit not in TOOLING for target, line in _imported_units(path) if target in TOOLING]
    assert not users, users


def test_no_module_patches_another_modules_globals():
    """``autograd.Tensor = Tensor`` style assignments hide a cycle; there must be none."""
    patched = []
    for _, path in _modules():
        tree = ast.parse(path.read_text())
        imported = {alias.asname or alias.name.split(".")[0] for node in tree.body
                    if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in imported:
                    patched.append(f"{path.relative_to(ROOT)}:{node.lineno} sets {t.value.id}.{t.attr}")
    assert not patched, patched


@pytest.mark.parametrize("unit, path", list(_modules()), ids=lambda v: str(v).split("/work/main/")[-1])
def test_no_file_over_500_lines(unit, path):
    lines = len(path.read_text().splitlines())
    assert lines <= 500, f"{path.relative_to(ROOT)} has {lines} lines: split it by concept"


def test_function_names_never_collide_with_layer_names():
    import minires
    from minires import models, nn

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    import minires.functional  # noqa: F401  (every Function subclass defined)
    import minires.residual  # noqa: F401
    functions = {c.__name__: c for c in subclasses(minires.Function) if c.__module__.startswith("minires.")}
    layers = {name for mod in (nn, models) for name, obj in vars(mod).items()
              if isinstance(obj, type) and issubclass(obj, nn.Module)}
    clash = sorted(set(functions) & layers)
    assert not clash, f"autograd Functions named like nn Modules: {clash}"


def test_importing_minires_changes_nothing_in_the_process():
    """No allocator settings (glibc mallopt), no forced kernel backend and no Numba just for importing the package.

    The automatic choice of kernels ("auto") loads Numba at the first op, not at import.
    """
    code = (
        "import ctypes\n"
        "def refuse(*a, **k):\n"
        "    raise AssertionError('a C library was loaded at import: ' + repr(a))\n"
        "ctypes.CDLL = refuse\n"
        "import minires, minires.functional, minires.models, minires.train, minires.viz\n"
        "from minires import kernels\n"
        "import sys\n"
        "assert kernels._forced == {'cpu': None, 'cuda': None}, kernels._forced\n"
        "assert kernels._default == {'cpu': None, 'cuda': None}, kernels._default\n"
        "assert 'numba' not in sys.modules, 'numba was imported by import minires'\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "MINIRES_KERNELS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
