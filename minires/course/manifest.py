"""What a student copy leaves out, recorded in the copy itself.

``make-student`` writes the record to ``minires/course/_handout.py`` in the
copy: a Python file, so it installs with the package and a copy stays a
copy wherever it is installed. The reference has none. Tests ask
``handed_out()`` and ``is_removed()`` so that they skip what a copy removed;
``grade`` puts the record in its report. The file is read, never run: its
assignments are parsed as literals, so a tampered copy's manifest cannot
execute code in the grader.
"""
import ast
from pathlib import Path

from .assignments import ASSIGNMENT_OF

MANIFEST = "minires/course/_handout.py"  # where a student copy keeps it, relative to the copy's root
_OWN = Path(__file__).resolve().with_name(Path(MANIFEST).name)  # this package's own, if it is in a copy


def manifest_text(handed, modules, functions):
    """The manifest of a copy handing out ``handed`` and removing ``modules`` and ``functions`` ({path: names})."""
    numbers = sorted({ASSIGNMENT_OF[i].number for i in handed})
    return ('"""What this student copy of minires leaves out (written by `minires exercises make-student`)."""\n'
            f"ASSIGNMENTS = {tuple(numbers)!r}\n"
            f"EXERCISES = {tuple(handed)!r}\n"
            f"REMOVED_MODULES = {tuple(sorted(modules))!r}\n"
            f"REMOVED_FUNCTIONS = {dict((p, tuple(sorted(n))) for p, n in sorted(functions.items()))!r}\n")


_FIELDS = ("ASSIGNMENTS", "EXERCISES", "REMOVED_MODULES", "REMOVED_FUNCTIONS")
_MAX_BYTES = 1 << 20  # a real manifest is a few kilobytes


def _well_formed(name, value):
    """True if ``value`` has the form ``manifest_text`` writes for ``name``."""
    if name == "REMOVED_FUNCTIONS":
        return isinstance(value, dict) and all(isinstance(p, str) and isinstance(n, tuple)
                                               and all(isinstance(f, str) for f in n) for p, n in value.items())
    element = int if name == "ASSIGNMENTS" else str
    return isinstance(value, tuple) and all(isinstance(v, element) for v in value)


def load(path):
    """The manifest file at ``path`` as a dict: assignments, exercises, removed_modules, removed_functions.

    Parsed, not executed: only a docstring and ``NAME = literal`` lines are
    accepted; anything else is a ValueError naming the file and the line.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(_MAX_BYTES + 1)
    if len(raw) > _MAX_BYTES:
        raise ValueError(f"{path}: {len(raw) - 1}+ bytes is too large for a student-copy manifest")
    try:
        tree = ast.parse(raw.decode("utf-8"), filename=str(path))
    except (UnicodeDecodeError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable manifest ({type(exc).__name__}: {exc})") from None
    values = {}
    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in _FIELDS):
            raise ValueError(f"{path}, line {node.lineno}: a manifest holds only assignments of "
                             f"{', '.join(_FIELDS)}; found something else")
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            raise ValueError(f"{path}, line {node.lineno}: {node.targets[0].id} is not a plain literal") from None
    for name in _FIELDS:
        if not _well_formed(name, values.get(name)):
            raise ValueError(f"{path}: {name} is missing or malformed (got {values.get(name)!r:.80})")
    return {k.lower(): v for k, v in values.items()}


def read_manifest(directory):
    """The manifest of the copy in DIR; None if DIR is no student copy, {"error": ...} if it is damaged."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        return load(path)
    except Exception as exc:  # a damaged manifest should not stop grading
        return {"error": f"{type(exc).__name__}: {exc}"}


def student_copy():
    """The manifest of the student copy this package belongs to (a dict), or None in the reference."""
    return load(_OWN) if _OWN.is_file() else None


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
