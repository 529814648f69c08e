"""Course assignments: exercises marked in the reference code, student copies and a grader.

An exercise is a block of the reference source between two comment lines::

    def im2col(x, kh, kw, stride, padding):
        \"\"\"Unfold x (N, C, H, W) into columns (C*kh*kw, N*OH*OW).\"\"\"
        # BEGIN EXERCISE conv.im2col
        # HINT: one strided slice of the padded input per kernel tap (i, j)
        ...the reference code...
        # END EXERCISE

The markers are comments, so the reference stays whole and tested. In a
student copy (``minires exercises make-student``) the block becomes

        # EXERCISE conv.im2col: replace the raise with your code (check it: pytest -m conv)
        # HINT: one strided slice of the padded input per kernel tap (i, j)
        raise NotImplementedError("conv.im2col: one strided slice of the padded input per kernel tap (i, j)")

at the BEGIN line's indentation. Rules (checked, with errors that name file
and line): a block holds whole statements at one indentation, usually a
function's whole body (code after a block may stay: it becomes unreachable);
``# HINT:`` lines come right after BEGIN; blocks do not nest; every id is
used once and registered in ``ASSIGNMENTS`` below.

Solutions also live elsewhere (the Numba and CuPy kernels are other
implementations of im2col, a docstring may state a backward's formula), so
every exercise lists the other spots a student copy must blank: a whole
module (the backend then reports itself unavailable and the NumPy kernels
serve), named functions, or a docstring cut to a neutral summary.
``minires/_handout.py`` in the copy records what was handed out and removed;
``handed_out()`` and ``is_removed()`` read it (tests skip what was removed).

``minires exercises grade DIR`` runs the exercise tests (``tests/exercises``)
of a student copy in a fresh pytest process against DIR's own code and
prints passed tests and points per exercise.
"""
import argparse
import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

# ---------------------------------------------------------------- the assignments


@dataclass(frozen=True)
class RemoveModule:
    """A whole module the student copy replaces by one that raises ImportError (a kernel backend)."""
    path: str


@dataclass(frozen=True)
class RemoveFunctions:
    """Top-level functions (or ``Class.method``) the student copy replaces by a ``raise``."""
    path: str
    names: tuple


@dataclass(frozen=True)
class CutDocstring:
    """A docstring the student copy cuts to ``text`` (None: to its first line)."""
    path: str
    qualname: str
    text: str = None


@dataclass(frozen=True)
class Exercise:
    id: str
    file: str          # the file that holds the block (repo-relative)
    where: str         # the function the block sits in, e.g. "Conv2d.backward"
    points: int
    title: str
    leaks: tuple = ()  # other spots that show the solution (RemoveModule, RemoveFunctions, CutDocstring)
    block: bool = True  # False: nothing to cut (the notebook of the experiment)


@dataclass(frozen=True)
class Assignment:
    number: int
    marker: str        # the pytest marker that selects its tests
    title: str
    handout: str
    tests: str
    exercises: tuple
    graded_by_hand: int = 0  # points given by hand (answers to questions)

    @property
    def points(self):
        return sum(e.points for e in self.exercises)


_BACKENDS = (RemoveModule("kernels/numba_cpu.py"), RemoveModule("kernels/cupy_kernels.py"))
_CUDA = "kernels/numba_cuda.py"
_CONV_DOC = CutDocstring("minires/functional.py", "Conv2d")
_BN_DOC = CutDocstring("minires/functional.py", "BatchNorm")


def _cuda(*names):
    return RemoveFunctions(_CUDA, names)


ASSIGNMENTS = (
    Assignment(1, "autograd", "Autograd: the backward pass", "tutorials/assignments/01_autograd.md",
               "tests/exercises/test_a1_autograd.py", (
                   Exercise("autograd.topo_order", "minires/autograd.py", "_topological_order", 3,
                            "the reverse topological order, without recursion"),
                   Exercise("autograd.accumulate", "minires/autograd.py", "_accumulate", 2,
                            "gradient accumulation where a tensor fans out"),
                   Exercise("autograd.unbroadcast", "minires/ops.py", "unbroadcast", 3,
                            "summing a gradient back to a broadcast operand's shape"),
                   Exercise("autograd.matmul_backward", "minires/ops.py", "MatMul.backward", 2,
                            "the backward of a batched, broadcasting matrix product",
                            (CutDocstring("minires/ops.py", "MatMul",
                                          "y = a @ b (batched and broadcast like NumPy)."),)),
               )),
    Assignment(2, "conv", "Convolution as one GEMM", "tutorials/assignments/02_conv.md",
               "tests/exercises/test_a2_conv.py", (
                   Exercise("conv.im2col", "kernels/numpy_ref.py", "im2col", 3,
                            "unfold an image into columns", _BACKENDS + (_cuda("_im2col_kernel"),)),
                   Exercise("conv.col2im", "kernels/numpy_ref.py", "col2im", 2,
                            "fold columns back, adding overlaps (im2col's adjoint)",
                            _BACKENDS + (_cuda("_col2im_kernel"),)),
                   Exercise("conv.forward", "kernels/numpy_ref.py", "conv2d_forward", 2,
                            "convolution forward as one GEMM", _BACKENDS + (_cuda("conv2d_forward"),)),
                   Exercise("conv.backward_input", "kernels/numpy_ref.py", "conv2d_backward_input", 2,
                            "the gradient with respect to the input",
                            _BACKENDS + (_cuda("conv2d_backward_input"), _CONV_DOC)),
                   Exercise("conv.backward_weight", "kernels/numpy_ref.py", "conv2d_backward_weight", 2,
                            "the gradient with respect to the weight",
                            _BACKENDS + (_cuda("conv2d_backward_weight"), _CONV_DOC)),
                   Exercise("conv.layer_backward", "minires/functional.py", "Conv2d.backward", 1,
                            "the op's backward: which gradients, and the bias's", (_CONV_DOC,)),
               )),
    Assignment(3, "batchnorm", "Batch normalisation", "tutorials/assignments/03_batchnorm.md",
               "tests/exercises/test_a3_batchnorm.py", (
                   Exercise("bn.stats", "kernels/numpy_ref.py", "batch_norm_stats", 1,
                            "per-channel batch mean and variance",
                            _BACKENDS + (_cuda("batch_norm_stats", "_bn_stats_kernel"),)),
                   Exercise("bn.normalize", "kernels/numpy_ref.py", "batch_norm_forward", 1,
                            "normalise, scale and shift per channel",
                            _BACKENDS + (_cuda("batch_norm_forward", "_channel_affine_kernel",
                                               "_bn_scale_shift_kernel"),)),
                   Exercise("bn.forward", "minires/functional.py", "BatchNorm.forward", 3,
                            "training and eval statistics, the running averages", (_BN_DOC,)),
                   Exercise("bn.backward", "kernels/numpy_ref.py", "batch_norm_backward", 5,
                            "the backward in training and in eval mode",
                            _BACKENDS + (_cuda("batch_norm_backward", "_bn_grad_sums_kernel",
                                               "_bn_backward_dx_kernel"), _BN_DOC)),
               )),
    Assignment(4, "residual", "Residual blocks", "tutorials/assignments/04_residual.md",
               "tests/exercises/test_a4_residual.py", (
                   Exercise("residual.add_backward", "kernels/numpy_ref.py", "residual_add_backward", 2,
                            "the residual add's backward: the 1 of 1 + dF/dx",
                            _BACKENDS + (_cuda("residual_add_backward", "_relu_mask_kernel"),
                                         CutDocstring("minires/functional.py", "ResidualAdd"))),
                   Exercise("residual.pad_forward", "minires/functional.py", "PadChannels.forward", 2,
                            "the option-A shortcut: subsample, zero-pad channels",
                            (CutDocstring("minires/functional.py", "PadChannels"),)),
                   Exercise("residual.pad_backward", "minires/functional.py", "PadChannels.backward", 2,
                            "the option-A shortcut's backward",
                            (CutDocstring("minires/functional.py", "PadChannels"),)),
                   Exercise("residual.basic_block", "minires/models/blocks.py", "BasicBlock.forward", 2,
                            "BasicBlock.forward"),
                   Exercise("residual.bottleneck", "minires/models/blocks.py", "Bottleneck.forward", 2,
                            "Bottleneck.forward"),
               )),
    Assignment(5, "gpu_kernel", "A GPU kernel in Numba CUDA", "tutorials/assignments/05_gpu_kernel.md",
               "tests/exercises/test_a5_gpu_kernel.py", (
                   Exercise("gpu.im2col", _CUDA, "_im2col_kernel", 4, "im2col, one thread per element",
                            _BACKENDS),
                   Exercise("gpu.col2im", _CUDA, "_col2im_kernel", 3, "col2im as a gather: no atomics",
                            _BACKENDS),
                   Exercise("gpu.residual_forward", _CUDA, "_residual_add_kernel", 1,
                            "the fused residual add", _BACKENDS),
                   Exercise("gpu.residual_backward", _CUDA, "_relu_mask_kernel", 2,
                            "the residual add's backward kernel",
                            _BACKENDS + (CutDocstring(_CUDA, "residual_add_backward",
                                                      "Returns (grad into the residual branch, grad into "
                                                      "the shortcut)."),)),
               )),
    Assignment(6, "experiment", "Experiment: ResNet-20 against plain-20",
               "tutorials/assignments/06_experiment.md", "tests/exercises/test_a6_experiment.py", (
                   Exercise("experiment.notebook", "tutorials/assignments/06_experiment.ipynb", "", 0,
                            "train both, read the gradient-flow plots, answer the questions", block=False),
               ), graded_by_hand=10),
)

EXPERIMENT_NOTEBOOK = "tutorials/assignments/06_experiment.ipynb"
ANSWER_PLACEHOLDER = "*Write your answer here.*"

EXERCISES = {e.id: e for a in ASSIGNMENTS for e in a.exercises}
ASSIGNMENT_OF = {e.id: a for a in ASSIGNMENTS for e in a.exercises}
MANIFEST = "minires/_handout.py"
SOURCE_DIRS = ("minires", "kernels")  # where exercise blocks may live


def get_assignment(key):
    """The assignment numbered or named ``key`` ("2" or "conv")."""
    for a in ASSIGNMENTS:
        if str(key) in (str(a.number), a.marker):
            return a
    choices = ", ".join(f"{a.number} ({a.marker})" for a in ASSIGNMENTS)
    raise ValueError(f"no assignment {key!r}; choose one of {choices}")


# ---------------------------------------------------------------- what this copy leaves out

def student_copy():
    """The manifest of this student copy (a dict), or None in the reference."""
    try:
        from . import _handout
    except ImportError:
        return None
    return {"assignments": tuple(_handout.ASSIGNMENTS), "exercises": tuple(_handout.EXERCISES),
            "removed_modules": tuple(_handout.REMOVED_MODULES),
            "removed_functions": {k: tuple(v) for k, v in _handout.REMOVED_FUNCTIONS.items()}}


def handed_out():
    """The ids of the exercises this student copy hands out (empty in the reference)."""
    info = student_copy()
    return frozenset(info["exercises"]) if info else frozenset()


def is_removed(path, name=None):
    """True when this student copy removed module ``path`` (or function ``name`` of it)."""
    info = student_copy()
    if not info:
        return False
    if path in info["removed_modules"]:
        return True
    return name is not None and name in info["removed_functions"].get(path, ())


# ---------------------------------------------------------------- the markers

class MarkerError(ValueError):
    """A malformed exercise marker; the message names the file and line."""


ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_BEGIN = re.compile(r"^#\s*BEGIN\s+EXERCISE\b(?P<rest>.*)$")
_END = re.compile(r"^#\s*END\s+EXERCISE\b(?P<rest>.*)$")
_HINT = re.compile(r"^#\s*HINT:(?P<text>.*)$")


@dataclass
class Block:
    """One exercise block: lines are 1-based; ``begin``/``end`` are the marker lines."""
    id: str
    path: str
    begin: int
    end: int
    indent: str
    hints: list = field(default_factory=list)
    hint_end: int = 0  # the last HINT line (begin when there is none)

    @property
    def code_lines(self):
        return range(self.hint_end + 1, self.end)


def _comments(text, path):
    """(line, column, comment text) of every comment that stands alone on its line."""
    lines = text.splitlines()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError) as exc:
        raise MarkerError(f"{path}: cannot tokenize ({exc})") from None
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            if not lines[row - 1][:col].strip():
                yield row, col, tok.string


def parse_blocks(text, path="<string>"):
    """The exercise blocks of one Python source, in order; MarkerError on any malformed marker."""
    blocks, current = [], None
    lines = text.splitlines()
    for row, col, comment in _comments(text, path):
        indent = lines[row - 1][:col]
        begin, end, hint = _BEGIN.match(comment), _END.match(comment), _HINT.match(comment)
        if begin:
            ex_id = begin.group("rest").strip()
            if current is not None:
                raise MarkerError(f"{path}:{row}: BEGIN EXERCISE {ex_id} inside exercise {current.id} "
                                  f"(opened at line {current.begin}); blocks cannot nest")
            if not ID_PATTERN.match(ex_id):
                raise MarkerError(f"{path}:{row}: BEGIN EXERCISE needs an id like 'conv.im2col' "
                                  f"(lower case, dotted), got {ex_id!r}")
            current = Block(ex_id, path, row, 0, indent, hint_end=row)
        elif end:
            rest = end.group("rest").strip()
            if current is None:
                raise MarkerError(f"{path}:{row}: END EXERCISE without a BEGIN EXERCISE")
            if rest and rest != current.id:
                raise MarkerError(f"{path}:{row}: END EXERCISE {rest} closes exercise {current.id} "
                                  f"(opened at line {current.begin})")
            if indent != current.indent:
                raise MarkerError(f"{path}:{row}: END EXERCISE of {current.id} is indented "
                                  f"{len(indent)} columns, its BEGIN (line {current.begin}) {len(current.indent)}")
            current.end = row
            if not any(lines[k - 1].strip() for k in current.code_lines):
                raise MarkerError(f"{path}:{current.begin}: exercise {current.id} holds no code")
            blocks.append(current)
            current = None
        elif hint:
            if current is None:
                continue  # a comment that happens to start with HINT: outside any block
            if current.hint_end != row - 1:
                raise MarkerError(f"{path}:{row}: HINT lines of {current.id} must follow its BEGIN "
                                  f"line (line {current.begin}) directly")
            if indent != current.indent:
                raise MarkerError(f"{path}:{row}: HINT line of {current.id} must be indented like its BEGIN")
            current.hints.append(hint.group("text").strip())
            current.hint_end = row
        elif re.match(r"^#\s*(BEGIN|END)\s+EXERCISES?\b", comment, re.IGNORECASE) or \
                re.match(r"^#\s*(begin|end)\s+exercise\b", comment, re.IGNORECASE):
            raise MarkerError(f"{path}:{row}: malformed marker {comment!r}: write '# BEGIN EXERCISE <id>' "
                              "or '# END EXERCISE'")
    if current is not None:
        raise MarkerError(f"{path}:{current.begin}: BEGIN EXERCISE {current.id} is never closed "
                          "(no '# END EXERCISE' follows)")
    _check_statements(text, path, blocks)
    return blocks


def _statement_span(node):
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return start, node.end_lineno


def _check_statements(text, path, blocks):
    """Each block must hold whole statements whose first level sits at the BEGIN line's indentation."""
    if not blocks:
        return
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise MarkerError(f"{path}:{exc.lineno}: not valid Python ({exc.msg})") from None
    statements = [n for n in ast.walk(tree) if isinstance(n, ast.stmt)]
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    skip = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT, tokenize.ENDMARKER)
    for b in blocks:
        for tok in tokens:
            row, col = tok.start
            if tok.type not in skip and b.begin < row < b.end and col < len(b.indent):
                raise MarkerError(f"{path}:{row}: this line of exercise {b.id} is indented less than its "
                                  f"BEGIN line ({b.begin}); a block must hold whole statements")
        inside = []
        for node in statements:
            s, e = _statement_span(node)
            if e < b.begin or s > b.end:
                continue
            if b.begin < s and e < b.end:
                inside.append(node)
                continue
            if s < b.begin and hasattr(node, "body"):
                continue  # a compound statement that holds the block (the function)
            raise MarkerError(f"{path}:{b.begin}: exercise {b.id} splits the statement at lines {s}-{e}; "
                              "a block must hold whole statements")
        if not any(n.col_offset == len(b.indent) for n in inside):
            raise MarkerError(f"{path}:{b.begin}: the code of exercise {b.id} must start at the indentation "
                              f"of its BEGIN line ({len(b.indent)} columns)")


def _enclosing_function(tree, line):
    """The qualified name ("Class.method") of the innermost function holding ``line``, or ""."""
    best = ""

    def visit(node, prefix):
        nonlocal best
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if child.lineno <= line <= child.end_lineno:
                    if not isinstance(child, ast.ClassDef):
                        best = name
                    visit(child, name + ".")

    visit(tree, "")
    return best


def _find_def(tree, qualname):
    """The def or class node called ``qualname`` ("f", "Class", "Class.method"), or None."""
    node = tree
    for part in qualname.split("."):
        found = None
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and child.name == part:
                found = child
        if found is None:
            return None
        node = found
    return node


# ---------------------------------------------------------------- the source tree

def default_source():
    """The repository this package was installed from (an editable install or a checkout)."""
    package = Path(__file__).resolve().parent
    root = package.parent
    if (root / "pyproject.toml").is_file() and (root / "kernels").is_dir() and (root / "tests").is_dir():
        return root
    raise RuntimeError(f"minires is installed at {package}, not in a source checkout (no pyproject.toml, "
                       "kernels/ and tests/ beside it); pass --source with the repository root")


_SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".hypothesis", ".ipynb_checkpoints", ".mypy_cache",
              ".ruff_cache", "runs", "build", "dist", ".tox", ".nox", "node_modules"}


def source_files(root):
    """Repo-relative paths of the files a student copy starts from: git's tracked files, else a walk."""
    root = Path(root)
    if (root / ".git").exists() and shutil.which("git"):
        proc = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True)
        if proc.returncode == 0:
            names = [n for n in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if n]
            return sorted(n for n in names if (root / n).is_file())
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")
                             and not (here / d / "pyvenv.cfg").exists())
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")) or name in (".DS_Store", "grade.json"):
                continue
            files.append((here / name).relative_to(root).as_posix())
    return files


def _is_source(rel):
    return rel.endswith(".py") and rel.split("/")[0] in SOURCE_DIRS


def scan(root, files=None):
    """{exercise id: Block} for the whole tree, checked against ``ASSIGNMENTS``."""
    root = Path(root)
    files = source_files(root) if files is None else files
    found = {}
    for rel in files:
        if not _is_source(rel):
            continue
        text = (root / rel).read_text(encoding="utf-8")
        for b in parse_blocks(text, rel):
            if b.id in found:
                first = found[b.id]
                raise MarkerError(f"{rel}:{b.begin}: exercise {b.id} is marked twice (first at "
                                  f"{first.path}:{first.begin})")
            if b.id not in EXERCISES:
                raise MarkerError(f"{rel}:{b.begin}: exercise {b.id} is not registered in "
                                  "minires/exercises.py ASSIGNMENTS")
            found[b.id] = b
    for ex in EXERCISES.values():
        if not ex.block:
            continue
        b = found.get(ex.id)
        if b is None:
            raise MarkerError(f"{ex.file}: exercise {ex.id} has no '# BEGIN EXERCISE {ex.id}' block")
        if b.path != ex.file:
            raise MarkerError(f"{b.path}:{b.begin}: exercise {ex.id} is registered in {ex.file}")
        tree = ast.parse((root / b.path).read_text(encoding="utf-8"))
        where = _enclosing_function(tree, b.begin)
        if where != ex.where:
            raise MarkerError(f"{b.path}:{b.begin}: exercise {ex.id} sits in {where or 'no function'}, "
                              f"registered as {ex.where}")
    return found


# ---------------------------------------------------------------- making a student copy

def _edit_lines(lines, edits, path):
    """Apply edits (first line, last line, replacement lines), 1-based and inclusive, dropping nested ones."""
    edits = sorted(edits, key=lambda e: (e[0], -e[1]))
    kept = []
    for e in edits:
        if kept and e[0] <= kept[-1][1]:
            if e[1] <= kept[-1][1]:
                continue  # inside an edit already made (e.g. a marker inside a removed function)
            raise MarkerError(f"{path}:{e[0]}: overlapping edits at lines {kept[-1][0]}-{kept[-1][1]} "
                              f"and {e[0]}-{e[1]}")
        kept.append(e)
    out = list(lines)
    for start, stop, replacement in reversed(kept):
        out[start - 1:stop] = replacement
    return out


def _raise_lines(block, marker):
    message = f"{block.id}: " + (" ".join(block.hints) if block.hints else "not implemented yet")
    head = [f"{block.indent}# EXERCISE {block.id}: replace the raise with your code "
            f"(check it: pytest -m {marker})"]
    head += [f"{block.indent}# HINT: {h}" for h in block.hints]
    literal = json.dumps(message, ensure_ascii=False)
    if len(block.indent) + len(literal) + 26 <= 110:
        return head + [f"{block.indent}raise NotImplementedError({literal})"]
    parts = [f"{block.id}: "] + [h + (" " if k < len(block.hints) - 1 else "") for k, h in enumerate(block.hints)]
    body = [f"{block.indent}    {json.dumps(p, ensure_ascii=False)}" for p in parts]
    body[-1] += ")"
    return head + [f"{block.indent}raise NotImplementedError("] + body


def _removed_function_lines(node, lines, why):
    start, _ = _statement_span(node)
    indent = re.match(r"\s*", lines[start - 1]).group(0)
    name = node.name
    args = ast.unparse(node.args)
    message = json.dumps(f"{name} is removed from this student copy: it would show the solution of {why}")
    return [f"{indent}def {name}({args}):",
            f'{indent}    """Removed from this student copy (it would show the solution of {why})."""',
            f"{indent}    raise NotImplementedError({message})"]


def transform_source(text, path, handed, markers, remove_functions=None, cut_docstrings=None):
    """The student version of one source: handed-out blocks become a raise, other markers go.

    ``handed``: the exercise ids to hand out; ``markers``: id -> its pytest
    marker; ``remove_functions``: {qualname: why}; ``cut_docstrings``:
    {qualname: text or None}.
    """
    lines = text.splitlines()
    trailing_newline = text.endswith("\n")
    blocks = parse_blocks(text, path)
    tree = ast.parse(text)
    edits = []
    removed_spans = []
    for qualname, why in (remove_functions or {}).items():
        node = _find_def(tree, qualname)
        if node is None or isinstance(node, ast.ClassDef):
            raise MarkerError(f"{path}: no function {qualname} to remove (check the leaks in ASSIGNMENTS)")
        start, stop = _statement_span(node)
        if any(b.id in handed and start <= b.begin <= stop for b in blocks):
            continue  # it holds a handed-out exercise: the block is cut, the rest is the student's frame
        removed_spans.append((start, stop))
        edits.append((start, stop, _removed_function_lines(node, lines, why)))
    for b in blocks:
        if b.id in handed:
            edits.append((b.begin, b.end, _raise_lines(b, markers.get(b.id, "exercise"))))
        else:
            edits.append((b.begin, b.hint_end, []))
            edits.append((b.end, b.end, []))
    for qualname, new in (cut_docstrings or {}).items():
        node = tree if qualname == "" else _find_def(tree, qualname)
        if node is None:
            raise MarkerError(f"{path}: no {qualname} whose docstring to cut (check the leaks in ASSIGNMENTS)")
        first = node.body[0] if node.body else None
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            raise MarkerError(f"{path}: {qualname} has no docstring to cut")
        if new is None:
            new = ast.get_docstring(node).strip().splitlines()[0]
        indent = " " * first.col_offset
        edits.append((first.lineno, first.end_lineno, [f'{indent}"""{new}"""']))
    out = "\n".join(_edit_lines(lines, edits, path)) + ("\n" if trailing_newline else "")
    try:
        compile(out, path, "exec")
    except SyntaxError as exc:
        raise MarkerError(f"{path}:{exc.lineno}: the student version does not compile ({exc.msg}); "
                          "check the exercise blocks of this file") from None
    return out


def _stub_module(path, why):
    message = json.dumps(f"{path} is removed from this student copy: it would show the solution of {why}")
    return (f'"""Removed from this student copy: this module would show the solution of {why}.\n\n'
            'Its place is taken by the NumPy reference kernels, which you write."""\n'
            f"raise ImportError({message})\n")


def strip_notebook(text):
    """A notebook's JSON with every output and execution count removed."""
    nb = json.loads(text)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        meta = cell.get("metadata", {})
        for key in ("execution", "collapsed", "scrolled"):
            meta.pop(key, None)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def select(assignments=None, exercises=None):
    """The exercise ids chosen by assignment numbers/names and exercise ids (default: all)."""
    chosen = []
    for key in assignments or ():
        chosen += [e.id for e in get_assignment(key).exercises]
    for ex_id in exercises or ():
        if ex_id not in EXERCISES:
            raise ValueError(f"no exercise {ex_id!r}; `minires exercises list` shows them")
        chosen.append(ex_id)
    if not assignments and not exercises:
        chosen = list(EXERCISES)
    return list(dict.fromkeys(chosen))


def plan(handed):
    """What a copy handing out ``handed`` removes: (modules {path: why}, functions {path: {name: why}},
    docstrings {path: {qualname: text}})."""
    modules, functions, docs = {}, {}, {}

    def why(mapping, key, ex_id):
        mapping.setdefault(key, [])
        if ex_id not in mapping[key]:
            mapping[key].append(ex_id)

    for ex_id in handed:
        for leak in EXERCISES[ex_id].leaks:
            if isinstance(leak, RemoveModule):
                why(modules, leak.path, ex_id)
            elif isinstance(leak, RemoveFunctions):
                for name in leak.names:
                    why(functions.setdefault(leak.path, {}), name, ex_id)
            elif isinstance(leak, CutDocstring):
                docs.setdefault(leak.path, {})[leak.qualname] = leak.text
    join = ", ".join
    return ({p: join(v) for p, v in modules.items()},
            {p: {n: join(v) for n, v in names.items()} for p, names in functions.items()},
            docs)


def _manifest(handed, modules, functions):
    numbers = sorted({ASSIGNMENT_OF[i].number for i in handed})
    return ('"""What this student copy of minires leaves out (written by `minires exercises make-student`)."""\n'
            f"ASSIGNMENTS = {tuple(numbers)!r}\n"
            f"EXERCISES = {tuple(handed)!r}\n"
            f"REMOVED_MODULES = {tuple(sorted(modules))!r}\n"
            f"REMOVED_FUNCTIONS = {dict((p, tuple(sorted(n))) for p, n in sorted(functions.items()))!r}\n")


def _trivial(line):
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\d+", line)
    return len(line) < 14 or len(words) < 3 or line.startswith(("#", '"""', "'''"))


def solution_lines(root, files, blocks, handed):
    """{stripped line: exercise id}: lines of the handed-out blocks found nowhere else in the reference."""
    root = Path(root)
    inside = {}
    cut = {}  # path -> set of line numbers inside handed-out blocks
    for ex_id in handed:
        b = blocks.get(ex_id)
        if b is None:
            continue
        lines = (root / b.path).read_text(encoding="utf-8").splitlines()
        cut.setdefault(b.path, set()).update(range(b.begin, b.end + 1))
        for k in b.code_lines:
            s = lines[k - 1].strip()
            if s and not _trivial(s):
                inside.setdefault(s, ex_id)
    elsewhere = set()
    for rel in files:
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        skip = cut.get(rel, ())
        for k, line in enumerate(text.splitlines(), 1):
            if k not in skip:
                elsewhere.add(line.strip())
    return {s: ex_id for s, ex_id in inside.items() if s not in elsewhere}


def find_solution_text(copy_root, lines):
    """[(path, line number, exercise id)] where any of ``lines`` (from solution_lines) occurs in a copy."""
    hits = []
    for path in sorted(Path(copy_root).rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for k, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if s in lines:
                hits.append((path.relative_to(copy_root).as_posix(), k, lines[s]))
    return hits


def make_student(out, source=None, assignments=None, exercises=None, log=print):
    """Write a student copy of ``source`` to ``out`` handing out the chosen exercises; returns the manifest."""
    source = Path(source).resolve() if source else default_source()
    out = Path(out).resolve()
    if not (source / "pyproject.toml").is_file() or not (source / "minires").is_dir():
        raise RuntimeError(f"{source} is not a minires source checkout (no pyproject.toml and minires/)")
    if (source / MANIFEST).exists():
        raise RuntimeError(f"{source} is itself a student copy ({MANIFEST} exists); make copies from the reference")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RuntimeError(f"{out} exists and is not an empty folder; choose a new one")
    if out == source or out in source.parents:
        raise RuntimeError(f"{out} would overwrite the source")
    handed = select(assignments, exercises)
    files = source_files(source)
    blocks = scan(source, files)
    modules, functions, docs = plan(handed)
    markers = {e: ASSIGNMENT_OF[e].marker for e in EXERCISES}
    for path in list(modules) + list(functions) + list(docs):
        if path not in files:
            raise RuntimeError(f"{path} (a spot to blank for {', '.join(handed)}) is not among the source files")
    for path, names in functions.items():  # a function that holds a handed-out block stays: the student's frame
        tree = ast.parse((source / path).read_text(encoding="utf-8"))
        for name in list(names):
            node = _find_def(tree, name)
            if node is None:
                raise MarkerError(f"{path}: no function {name} to remove (check the leaks in ASSIGNMENTS)")
            start, stop = _statement_span(node)
            if any(b.path == path and b.id in handed and start <= b.begin <= stop for b in blocks.values()):
                del names[name]
    functions = {p: n for p, n in functions.items() if n}
    for path, why in modules.items():
        inside = [b.id for b in blocks.values() if b.path == path and b.id in handed]
        if inside:
            raise MarkerError(f"{path} holds handed-out exercises ({', '.join(inside)}) and cannot be removed "
                              f"whole for {why}")

    out.mkdir(parents=True, exist_ok=True)
    for rel in files:
        src, dst = source / rel, out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel == MANIFEST:
            continue
        if rel in modules:
            dst.write_text(_stub_module(rel, modules[rel]), encoding="utf-8")
        elif _is_source(rel):
            text = src.read_text(encoding="utf-8")
            dst.write_text(transform_source(text, rel, set(handed), markers, functions.get(rel),
                                            docs.get(rel)), encoding="utf-8")
        elif rel.endswith(".ipynb"):
            dst.write_text(strip_notebook(src.read_text(encoding="utf-8")), encoding="utf-8")
        else:
            shutil.copyfile(src, dst)
        shutil.copymode(src, dst)
    (out / MANIFEST).write_text(_manifest(handed, modules, functions), encoding="utf-8")

    leaks = find_solution_text(out, solution_lines(source, files, blocks, handed))
    if leaks:
        where = "; ".join(f"{p}:{k} ({e})" for p, k, e in leaks[:5])
        raise RuntimeError(f"solution text survived in the student copy at {where}")
    numbers = sorted({ASSIGNMENT_OF[i].number for i in handed})
    log(f"wrote a student copy to {out}: {len(handed)} exercises of assignment(s) "
        f"{', '.join(map(str, numbers))}")
    for path, why in sorted(modules.items()):
        log(f"  removed {path} (it would show the solution of {why})")
    for path, names in sorted(functions.items()):
        log(f"  removed from {path}: {', '.join(sorted(names))}")
    selection = " or ".join(get_assignment(n).marker for n in numbers)
    log(f"next: cd {out} && python -m venv .venv && .venv/bin/pip install -e '.[test]' && "
        f".venv/bin/python -m pytest tests/exercises -m '{selection}'")
    return student_copy_manifest(handed, modules, functions)


def student_copy_manifest(handed, modules, functions):
    return {"assignments": sorted({ASSIGNMENT_OF[i].number for i in handed}), "exercises": list(handed),
            "removed_modules": sorted(modules),
            "removed_functions": {p: sorted(n) for p, n in functions.items()}}


# ---------------------------------------------------------------- grading

_PLUGIN = textwrap.dedent('''\
    """Collects per-test outcomes and the exercise marker of each test for `minires exercises grade`."""
    import json
    import os
    import sys

    _results = {}


    import pytest


    @pytest.hookimpl(trylast=True)  # after -m has deselected what this run does not test
    def pytest_collection_modifyitems(session, config, items):
        keep, drop = [], []
        for item in items:
            mark = item.get_closest_marker("exercise")
            if mark is None or not mark.args:
                drop.append(item)
                continue
            keep.append(item)
            _results[item.nodeid] = {"exercise": str(mark.args[0]), "outcome": "not run", "message": ""}
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep


    def _message(report):
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None:
            return crash.message
        if isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
            return str(report.longrepr[2])
        return str(report.longrepr or "")


    def pytest_runtest_logreport(report):
        r = _results.get(report.nodeid)
        if r is None:
            return
        if report.skipped:
            r["outcome"], r["message"] = "skipped", _message(report)
        elif report.failed:
            if r["outcome"] in ("passed", "not run"):
                r["outcome"] = "failed" if report.when == "call" else "error"
                r["message"] = _message(report)
        elif report.when == "call":
            r["outcome"] = "passed"


    def pytest_sessionfinish(session, exitstatus):
        modules = {name: os.path.realpath(getattr(m, "__file__", None) or "")
                   for name, m in list(sys.modules.items())
                   if m is not None and (name == "minires" or name.startswith("minires."))}
        with open(os.environ["MINIRES_GRADE_OUT"], "w") as f:
            json.dump({"results": _results, "modules": modules, "exitstatus": int(exitstatus)}, f)
''')


def _stage(directory, stage):
    """An import root in ``stage`` whose ``minires`` package is DIR's, ``minires.kernels`` DIR/kernels."""
    package = stage / "minires"
    package.mkdir()
    for entry in sorted((directory / "minires").iterdir()):
        if entry.name in ("__pycache__", "kernels"):
            continue
        _link(entry, package / entry.name)
    _link(directory / "kernels", package / "kernels")


def _link(src, dst):
    try:
        os.symlink(src, dst, target_is_directory=src.is_dir())
    except (OSError, NotImplementedError):
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)


def _run_pytest(directory, stage, plugin_dir, args, extra_env, timeout):
    """One pytest process over DIR's exercise tests; returns the plugin's record."""
    out_file = Path(plugin_dir) / f"result-{len(os.listdir(plugin_dir))}.json"
    env = dict(os.environ)
    for key in ("NUMBA_ENABLE_CUDASIM", "MINIRES_KERNELS", "PYTEST_ADDOPTS"):
        env.pop(key, None)
    env.update(extra_env)
    env["MINIRES_GRADE_OUT"] = str(out_file)
    env["PYTHONPATH"] = os.pathsep.join([str(stage), str(plugin_dir)])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [sys.executable, "-m", "pytest", str(directory / "tests" / "exercises"), "-q", "-p", "no:cacheprovider",
           "-p", "_minires_grade_plugin", "-o", "addopts=", "--rootdir", str(directory)]
    if (directory / "pyproject.toml").is_file():
        cmd += ["-c", str(directory / "pyproject.toml")]
    cmd += args
    try:
        proc = subprocess.run(cmd, cwd=stage, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the exercise tests ran longer than {timeout} s; an endless loop?") from None
    if not out_file.exists():
        tail = (proc.stdout[-2000:] + proc.stderr[-2000:]).strip()
        raise RuntimeError(f"pytest did not run the exercise tests (exit {proc.returncode}):\n{tail}")
    record = json.loads(out_file.read_text())
    record["output"] = proc.stdout[-4000:]
    return record


def _check_imports(directory, modules):
    """Raise unless every minires module the tests imported comes from DIR."""
    real = Path(os.path.realpath(directory))
    foreign = {n: f for n, f in modules.items() if f and real not in Path(f).parents}
    if foreign:
        name, path = sorted(foreign.items())[0]
        raise RuntimeError(f"the tests imported {name} from {path}, not from {directory}; "
                           "grading would not test this copy")


def answered_questions(directory):
    """(answer cells filled, answer cells) of the experiment notebook in DIR, or None if it is missing."""
    path = Path(directory) / EXPERIMENT_NOTEBOOK
    if not path.is_file():
        return None
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (ValueError, OSError):
        return None
    answers = [c for c in cells if "answer" in c.get("metadata", {}).get("tags", [])]
    filled = sum(1 for c in answers if "".join(c.get("source", "")).strip() not in ("", ANSWER_PLACEHOLDER))
    return filled, len(answers)


def grade(directory=".", assignments=None, json_path=None, timeout=900, log=print):
    """Run DIR's exercise tests, print passed tests and points per exercise, write a JSON report; returns it."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise FileNotFoundError(f"no folder {directory}")
    for need in ("minires", "kernels", "tests/exercises"):
        if not (directory / need).is_dir():
            raise FileNotFoundError(f"{directory} has no {need}/: not a minires source tree or student copy")
    chosen = [get_assignment(k) for k in assignments] if assignments else list(ASSIGNMENTS)
    cpu_markers = [a.marker for a in chosen if a.marker != "gpu_kernel"]
    results, started = {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="minires-grade-") as tmp:
        stage, plugin_dir = Path(tmp) / "stage", Path(tmp) / "plugin"
        stage.mkdir()
        plugin_dir.mkdir()
        (plugin_dir / "_minires_grade_plugin.py").write_text(_PLUGIN)
        _stage(directory, stage)
        runs = []
        if cpu_markers:
            runs.append((["-m", " or ".join(cpu_markers)], {}))
        if any(a.marker == "gpu_kernel" for a in chosen):
            runs.append((["-m", "gpu_kernel"], {"NUMBA_ENABLE_CUDASIM": "1"}))
        for args, env in runs:
            record = _run_pytest(directory, stage, plugin_dir, args, env, timeout)
            _check_imports(directory, record["modules"])
            for nodeid, result in record["results"].items():
                if result["outcome"] != "not run" or nodeid not in results:
                    results[nodeid] = result

    report = {"minires_grade": 1, "directory": str(directory),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.perf_counter() - started, 1),
              "student_copy": _read_manifest(directory), "exercises": [], "assignments": []}
    total = possible = by_hand = 0.0
    rows = []
    for a in chosen:
        a_points = 0.0
        for ex in a.exercises:
            tests = [dict(test=k, **v) for k, v in sorted(results.items()) if v["exercise"] == ex.id]
            counted = [t for t in tests if t["outcome"] != "skipped"]
            passed = sum(t["outcome"] == "passed" for t in tests)
            points = round(ex.points * passed / len(counted), 2) if counted else 0.0
            problem = next((t["message"] for t in tests if t["outcome"] in ("failed", "error")), "")
            if counted == [] and tests:
                problem = "all skipped: " + tests[0]["message"]
            if not tests:
                problem = "no tests found"
            a_points += points
            report["exercises"].append({
                "id": ex.id, "assignment": a.number, "points": points, "points_possible": ex.points,
                "passed": passed, "failed": sum(t["outcome"] in ("failed", "error") for t in tests),
                "skipped": len(tests) - len(counted), "total": len(tests), "tests": tests})
            rows.append((ex.id, f"{passed}/{len(tests)}", f"{points:g} / {ex.points}", problem))
        entry = {"number": a.number, "name": a.marker, "points": round(a_points, 2), "points_possible": a.points,
                 "graded_by_hand": a.graded_by_hand}
        if a.graded_by_hand:
            entry["answers"] = answered_questions(directory)
        report["assignments"].append(entry)
        total += a_points
        possible += a.points
        by_hand += a.graded_by_hand
    report["total"] = {"points": round(total, 2), "points_possible": possible, "graded_by_hand": by_hand}

    width = max(len(r[0]) for r in rows) if rows else 10
    log(f"{'exercise':<{width}}  {'tests':>7}  {'points':>11}  first problem")
    for ex_id, tests, points, problem in rows:
        problem = " ".join(problem.split())
        log(f"{ex_id:<{width}}  {tests:>7}  {points:>11}  {problem[:90]}")
    for entry in report["assignments"]:
        if entry["graded_by_hand"]:
            answers = entry.get("answers")
            filled = (f"{answers[0]} of {answers[1]} answer cells filled" if answers
                      else f"{EXPERIMENT_NOTEBOOK} not found")
            log(f"assignment {entry['number']} ({entry['name']}): {entry['graded_by_hand']:g} points "
                f"graded by hand, not counted here ({filled})")
    log(f"{'total':<{width}}  {'':>7}  {total:g} / {possible:g}" +
        (f"  (+ {by_hand:g} points graded by hand)" if by_hand else ""))
    json_path = Path(json_path) if json_path else directory / "grade.json"
    json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    log(f"report: {json_path}")
    return report


def _read_manifest(directory):
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    values = {}
    try:
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), {}, values)  # our own file
    except Exception as exc:  # a damaged manifest should not stop grading
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {k.lower(): v for k, v in values.items() if k.isupper()}


# ---------------------------------------------------------------- the command line

def list_exercises(log=print):
    """Print the assignments, their exercises and points."""
    width = max(len(e) for e in EXERCISES)
    for a in ASSIGNMENTS:
        log(f"Assignment {a.number}: {a.title}  [pytest -m {a.marker}]  handout: {a.handout}")
        for e in a.exercises:
            where = f"{e.file}" + (f"  {e.where}" if e.where else "")
            log(f"  {e.id:<{width}}  {e.points:>2} pts  {where}  ({e.title})")
        hand = f" + {a.graded_by_hand} points graded by hand" if a.graded_by_hand else ""
        log(f"  {'':<{width}}  {a.points:>2} pts in all{hand}")
    tests = sum(a.points for a in ASSIGNMENTS)
    hand = sum(a.graded_by_hand for a in ASSIGNMENTS)
    log(f"Total: {tests + hand} points ({tests} by tests, {hand} by hand)")


def _list_cli(args):
    list_exercises()


def _make_student_cli(args):
    make_student(args.out_dir, source=args.source, assignments=args.assignment, exercises=args.exercise)


def _grade_cli(args):
    grade(args.dir, assignments=args.assignment, json_path=args.json, timeout=args.timeout)


def add_exercises_parser(subparsers):
    """Register ``minires exercises`` (list, make-student, grade) on the ``minires`` command's subparsers."""
    p = subparsers.add_parser("exercises", help="course assignments: list them, make a student copy, grade one",
                              description="Exercises are marked in the reference source with "
                                          "'# BEGIN EXERCISE <id>' ... '# END EXERCISE'. A student copy "
                                          "replaces the chosen ones by a NotImplementedError; grade runs "
                                          "their tests (tests/exercises) and counts the points.")
    sub = p.add_subparsers(dest="exercises_command", required=True)

    q = sub.add_parser("list", help="the assignments, their exercises and points")
    q.set_defaults(run=_list_cli)

    q = sub.add_parser("make-student", help="write a student copy with the chosen exercises cut out",
                       description="Copy the repository's tracked files (no git history) to OUT_DIR, replace "
                                   "the chosen exercises' code by raise NotImplementedError(\"<id>: <hint>\"), "
                                   "blank the other places that would show their solutions, and strip the "
                                   "outputs of every notebook.")
    q.add_argument("out_dir", help="a new (or empty) folder for the copy")
    q.add_argument("--assignment", action="append", metavar="N",
                   help="hand out assignment N (a number or a name such as conv); repeat for more "
                        "(default: every assignment)")
    q.add_argument("--exercise", action="append", metavar="ID", help="hand out one exercise, e.g. conv.im2col")
    q.add_argument("--source", help="the reference repository (default: the checkout minires is installed from)")
    q.set_defaults(run=_make_student_cli)

    q = sub.add_parser("grade", help="run a copy's exercise tests and count the points",
                       description="Run the exercise tests of DIR (tests/exercises) in a fresh pytest "
                                   "process against DIR's own code, print passed tests and points per "
                                   "exercise and write a JSON report. Exits 0 whatever the score.")
    q.add_argument("dir", nargs="?", default=".", help="the student copy (default: the current folder)")
    q.add_argument("--assignment", action="append", metavar="N", help="grade only assignment N; repeat for more")
    q.add_argument("--json", help="where to write the report (default: DIR/grade.json)")
    q.add_argument("--timeout", type=int, default=900, help="seconds allowed per pytest run (default 900)")
    q.set_defaults(run=_grade_cli)
    return p
