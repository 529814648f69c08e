"""What a student copy leaves out, recorded in the copy itself.

``make-student`` writes the record to ``minires/course/_handout.py`` in the
copy: a Python file, so it installs with the package and a copy stays a
copy wherever it is installed. The reference has none. Tests ask
``handed_out()`` and ``is_removed()`` so that they skip what a copy removed;
``grade`` puts the record in its report.
"""
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


def load(path):
    """The manifest file at ``path`` as a dict: assignments, exercises, removed_modules, removed_functions."""
    values = {}
    exec(compile(Path(path).read_text(encoding="utf-8"), str(path), "exec"), {}, values)  # a file we wrote
    return {k.lower(): v for k, v in values.items() if k.isupper()}


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
