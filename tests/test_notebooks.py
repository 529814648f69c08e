"""The tutorial notebooks: each runs top to bottom, and each is committed with its outputs.

Every ``tutorials/*.ipynb`` is executed with nbclient in a fresh kernel with
``MINIRES_FAST=1`` (each notebook's parameter cell then shrinks its epochs,
depths and data), in a temporary working directory with ``TMPDIR`` pointing
there too, so run folders and figures never land in the repository. A
failing cell fails its test with the cell's source and the error.

The committed copies are meant to be read on a code-hosting site: every code
cell must have been executed (in one pass, top to bottom, in full mode) and
none may hold an error. A student copy's notebooks are stripped of their
outputs on purpose; there the notebooks must still run.
"""
import os
import re
import sys
from pathlib import Path

import pytest

import minires
from minires.course import handed_out

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install 'minires[test]')")
nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install 'minires[test]')")
pytest.importorskip("ipykernel", reason="needs ipykernel (pip install 'minires[test]')")
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
EXPECTED = [
    "01_residual_learning.ipynb",
    "02_shortcuts.ipynb",
    "03_gradient_flow.ipynb",
    "04_degradation.ipynb",
    "05_resnet_family.ipynb",
    "06_relatives.ipynb",
    "07_kernels.ipynb",
    "08_training_for_real.ipynb",
    "09_data_parallel.ipynb",
    "10_porting_from_keras.ipynb",
]
# notebooks 01-04 with their prose in Chinese (tests/test_translations.py keeps their code the English one's):
# run and checked like the others
TRANSLATED = ["zh-CN/" + name for name in EXPECTED[:4]]
ALL = EXPECTED + TRANSLATED
CELL_TIMEOUT = 300  # seconds per cell; a FAST run of a whole notebook takes well under a minute
KERNEL_NAME = "minires-tests"  # a kernelspec of our own, so the kernel is this interpreter
# where this process imported minires from (not resolving links: a grader-style import root links the
# copy's files into a folder of its own): the notebooks' kernel imports the same package
IMPORT_ROOT = Path(os.path.abspath(minires.__file__)).parent.parent
STUDENT_COPY = bool(handed_out())


def _read(name):
    return nbformat.read(TUTORIALS / name, as_version=4)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _parameter_cell(nb):
    for cell in _code_cells(nb):
        if re.search(r"^FAST\s*=", cell.source, flags=re.M):
            return cell
    return None


def test_the_tutorials_are_the_expected_ones():
    found = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
    assert found == EXPECTED


@pytest.mark.parametrize("name", ALL)
def test_notebook_has_a_fast_parameter_cell(name):
    cell = _parameter_cell(_read(name))
    assert cell is not None, f"{name}: no parameter cell defining FAST"
    assert 'os.environ.get("MINIRES_FAST"' in cell.source, f"{name}: FAST does not read MINIRES_FAST"


@pytest.mark.skipif(STUDENT_COPY, reason="a student copy: its notebooks are stripped of outputs")
@pytest.mark.parametrize("name", ALL)
def test_notebook_is_committed_with_its_outputs(name):
    nb = _read(name)
    cells = _code_cells(nb)
    assert cells, f"{name} has no code cells"
    counts = [c.execution_count for c in cells]
    unexecuted = [i for i, n in enumerate(counts) if n is None]
    assert not unexecuted, f"{name}: code cells {unexecuted} were never executed; commit it with its outputs"
    assert counts == list(range(counts[0], counts[0] + len(counts))), (
        f"{name}: execution counts {counts} are not one top-to-bottom run")
    for i, cell in enumerate(cells):
        for out in cell.get("outputs", []):
            assert out.output_type != "error", (
                f"{name}: code cell {i} was committed with an error: {out.get('ename')}: {out.get('evalue')}")
            if out.output_type == "stream" and out.name == "stderr":
                assert "Traceback" not in out.text, f"{name}: code cell {i} printed a traceback"
    # the committed copy ran in full mode (the parameter cell prints its settings, FAST=False among them)
    printed = "".join(o.get("text", "") for o in _parameter_cell(nb).get("outputs", []) if o.output_type == "stream")
    assert "FAST=False" in printed, (
        f"{name}: the committed outputs were not produced in full mode (parameter cell printed {printed!r})")


def _function_sources():
    """{name: [source, ...]} of every function in kernels/ and minires/, decorators included."""
    import ast
    sources = {}
    for path in [*(ROOT / "kernels").glob("*.py"), *(ROOT / "minires").rglob("*.py")]:
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
                sources.setdefault(node.name, []).append("\n".join(lines[start:node.end_lineno]))
    return sources


@pytest.mark.parametrize("name", ALL)
def test_printed_library_source_is_current(name):
    """A notebook that prints a function's source was committed after that function last changed."""
    sources = None
    for i, cell in enumerate(_code_cells(_read(name))):
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.output_type == "stream" else ""
            for fn in re.findall(r"^def (\w+)\(", text, flags=re.M):
                sources = sources or _function_sources()
                if fn not in sources:
                    continue  # a function the notebook defines itself
                assert any(src in text for src in sources[fn]), (
                    f"{name}: code cell {i} prints an old version of {fn}(); re-execute the notebook "
                    "and commit it with its outputs")


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory):
    """A kernelspec that starts ``sys.executable -m ipykernel_launcher``: this interpreter, this minires."""
    from ipykernel.kernelspec import install
    prefix = tmp_path_factory.mktemp("kernelspec")
    install(kernel_name=KERNEL_NAME, display_name="minires tests", prefix=str(prefix))
    return prefix / "share" / "jupyter"


def _tree(folder):
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("name", ALL)
def test_notebook_runs_top_to_bottom(name, tmp_path, kernel_dir, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("MINIRES_FAST", "1")
    monkeypatch.setenv("TMPDIR", str(work))  # tempfile.mkdtemp() in a notebook lands here
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(IMPORT_ROOT), os.environ.get("PYTHONPATH")])))
    # The notebooks' matrices are small: one BLAS thread is faster than several fighting over few cores.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    had_runs, before_tutorials = (ROOT / "runs").exists(), _tree(TUTORIALS)

    nb = _read(name)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=KERNEL_NAME,
                                     resources={"metadata": {"path": str(work)}})
    failure = None
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        failure = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the cell's source and the error, without colours
    if failure is not None:
        pytest.fail(f"{name} failed with MINIRES_FAST=1:\n{failure}", pytrace=False)

    executable = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream").strip()
    assert os.path.realpath(executable) == os.path.realpath(sys.executable), (
        f"the notebook ran in {executable}, not in the interpreter running the tests ({sys.executable})")
    assert had_runs or not (ROOT / "runs").exists(), f"{name} wrote a run folder into the repository"
    assert _tree(TUTORIALS) == before_tutorials, (
        f"{name} left files in tutorials/: {_tree(TUTORIALS) - before_tutorials}")
