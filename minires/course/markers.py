"""Exercise markers: the comment lines that mark an exercise in the reference source, parsed and checked.

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
used once and registered in ``ASSIGNMENTS`` (``assignments.py``).
"""
import ast
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from .assignments import EXERCISES
from .tree import is_exercise_source, source_files


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


def statement_span(node):
    """The first and last line of a statement, its decorators included."""
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
            s, e = statement_span(node)
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


def enclosing_function(tree, line):
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


def find_def(tree, qualname):
    """The def or class node called ``qualname`` ("f", "Class", "Class.method"), or None; "" is the module."""
    node = tree
    for part in qualname.split(".") if qualname else ():
        found = None
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and child.name == part:
                found = child
        if found is None:
            return None
        node = found
    return node



def scan(root, files=None):
    """{exercise id: Block} for the whole tree, checked against ``ASSIGNMENTS``."""
    root = Path(root)
    files = source_files(root) if files is None else files
    found = {}
    for rel in files:
        if not is_exercise_source(rel):
            continue
        text = (root / rel).read_text(encoding="utf-8")
        for b in parse_blocks(text, rel):
            if b.id in found:
                first = found[b.id]
                raise MarkerError(f"{rel}:{b.begin}: exercise {b.id} is marked twice (first at "
                                  f"{first.path}:{first.begin})")
            if b.id not in EXERCISES:
                raise MarkerError(f"{rel}:{b.begin}: exercise {b.id} is not registered in "
                                  "minires/course/assignments.py ASSIGNMENTS")
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
        where = enclosing_function(tree, b.begin)
        if where != ex.where:
            raise MarkerError(f"{b.path}:{b.begin}: exercise {ex.id} sits in {where or 'no function'}, "
                              f"registered as {ex.where}")
    return found
