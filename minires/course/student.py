"""Student copies: the reference with the chosen exercises cut out and their solutions blanked everywhere.

``make_student`` copies the tracked files (never the git history), turns
each handed-out block into a ``raise NotImplementedError`` with its hints,
drops the markers of the others, and blanks the other spots that would show
a handed-out solution: a whole module (the backend then reports itself
unavailable and the NumPy kernels serve), named functions, or a docstring cut
to a neutral summary. It strips every notebook's outputs, writes the
manifest, and refuses to finish if a line unique to a solution survived.
"""
import ast
import json
import re
import shutil
from pathlib import Path

from . import answers
from .assignments import (ASSIGNMENT_OF, EXERCISES, CutDocstring, RemoveFunctions, RemoveModule, get_assignment,
                          select, student_recipe)
from .manifest import MANIFEST, load, manifest_text
from .markers import MarkerError, find_def, parse_blocks, scan, statement_span
from .tree import default_source, is_exercise_source, source_files


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
    start, _ = statement_span(node)
    indent = re.match(r"\s*", lines[start - 1]).group(0)
    name = node.name
    args = ast.unparse(node.args)
    message = json.dumps(f"{name} is removed from this student copy: it would show the solution of {why}")
    return [f"{indent}def {name}({args}):",
            f'{indent}    """Removed from this student copy (it would show the solution of {why})."""',
            f"{indent}    raise NotImplementedError({message})"]


def transform_source(text, path, handed, markers, remove_functions=None, cut_docstrings=None, solved=False):
    """The student version of one source: handed-out blocks become a raise, other markers go.

    ``handed``: the exercise ids to hand out; ``markers``: id -> its pytest
    marker; ``remove_functions``: {qualname: why}; ``cut_docstrings``:
    {qualname: text or None}; ``solved``: keep the handed-out blocks' code
    (a copy as a student who solved everything would hand it in).
    """
    lines = text.splitlines()
    trailing_newline = text.endswith("\n")
    blocks = parse_blocks(text, path)
    tree = ast.parse(text)
    edits = []
    removed_spans = []
    for qualname, why in (remove_functions or {}).items():
        node = find_def(tree, qualname)
        if node is None or isinstance(node, ast.ClassDef):
            raise MarkerError(f"{path}: no function {qualname} to remove (check the leaks in ASSIGNMENTS)")
        start, stop = statement_span(node)
        if any(b.id in handed and start <= b.begin <= stop for b in blocks):
            continue  # it holds a handed-out exercise: the block is cut, the rest is the student's frame
        removed_spans.append((start, stop))
        edits.append((start, stop, _removed_function_lines(node, lines, why)))
    for b in blocks:
        if b.id in handed and not solved:
            edits.append((b.begin, b.end, _raise_lines(b, markers.get(b.id, "exercise"))))
        else:
            edits.append((b.begin, b.hint_end, []))
            edits.append((b.end, b.end, []))
    for qualname, new in (cut_docstrings or {}).items():
        node = find_def(tree, qualname)
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


def check_copy(out, source=None):
    """(source, out) as absolute paths, or an error saying why no student copy can be made there."""
    source = Path(source).resolve() if source else default_source()
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RuntimeError(f"{out} exists and is not an empty folder; choose a new one")
    if not (source / "pyproject.toml").is_file() or not (source / "minires").is_dir():
        raise RuntimeError(f"{source} is not a minires source checkout (no pyproject.toml and minires/)")
    if (source / MANIFEST).exists():
        raise RuntimeError(f"{source} is itself a student copy ({MANIFEST} exists); make copies from the reference")
    if out == source or out in source.parents:
        raise RuntimeError(f"{out} would overwrite the source")
    return source, out


def make_student(out, source=None, assignments=None, exercises=None, log=print, solved=False):
    """Write a student copy of ``source`` to ``out`` handing out the chosen exercises; returns the manifest.

    ``solved=True`` (for instructors) makes the copy a student hands in with
    every exercise solved: all else is removed and blanked as in the real copy,
    but the handed-out blocks keep the reference code, so one can check that a
    finished copy passes its whole test suite.
    """
    source, out = check_copy(out, source)
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
            node = find_def(tree, name)
            if node is None:
                raise MarkerError(f"{path}: no function {name} to remove (check the leaks in ASSIGNMENTS)")
            start, stop = statement_span(node)
            if any(b.path == path and b.id in handed and start <= b.begin <= stop for b in blocks.values()):
                del names[name]
    functions = {p: n for p, n in functions.items() if n}
    spans = answers.scan(source, files)
    answers.check_registered(spans)
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
        elif is_exercise_source(rel):
            text = src.read_text(encoding="utf-8")
            dst.write_text(transform_source(text, rel, set(handed), markers, functions.get(rel),
                                            docs.get(rel), solved), encoding="utf-8")
        elif rel.endswith(".ipynb"):
            text = strip_notebook(src.read_text(encoding="utf-8"))
            dst.write_text(answers.cut_file(text, rel, set(handed)), encoding="utf-8")
        elif rel in spans:
            dst.write_text(answers.cut_file(src.read_text(encoding="utf-8"), rel, set(handed)), encoding="utf-8")
        else:
            shutil.copyfile(src, dst)
        shutil.copymode(src, dst)
    (out / MANIFEST).write_text(manifest_text(handed, modules, functions), encoding="utf-8")

    leaks = [] if solved else find_solution_text(out, solution_lines(source, files, blocks, handed))
    if leaks:
        where = "; ".join(f"{p}:{k} ({e})" for p, k, e in leaks[:5])
        raise RuntimeError(f"solution text survived in the student copy at {where}")
    stated = answers.find_answer_text(out, files, answers.answer_lines(source, files, spans, handed))
    if stated:
        where = "; ".join(f"{p} ({e})" for p, e in stated[:5])
        raise RuntimeError(f"an answer's text (from an ANSWER span) survived in the student copy in {where}")
    numbers = sorted({ASSIGNMENT_OF[i].number for i in handed})
    log(f"wrote a {'solved ' if solved else ''}student copy to {out}: {len(handed)} exercises of assignment(s) "
        f"{', '.join(map(str, numbers))}")
    for path, why in sorted(modules.items()):
        log(f"  removed {path} (it would show the solution of {why})")
    for path, names in sorted(functions.items()):
        log(f"  removed from {path}: {', '.join(sorted(names))}")
    log(f"next, in {out}:")
    for line in student_recipe([get_assignment(n) for n in numbers]):
        log(f"  {line}")
    return load(out / MANIFEST)
