"""Answer spans: places outside the exercise blocks that state a handed-out answer, cut from student copies.

The residual add's backward, say, is derived in notebook 01's text, checked in
a tutorial script and summed up in the README. Each such place is a span
between two markers. In Markdown (README, handouts, notebook text) they are
HTML comments, invisible when rendered (outside code blocks)::

    <!-- ANSWER residual.add_backward: what a student copy shows instead -->
    ...the text that states the answer...
    <!-- END ANSWER -->

In Python (tutorial scripts, notebook code) they are comment lines, and the
text after the colon is one line of code that does the span's work with the
student's own functions, so the script still runs in the copy::

    # ANSWER residual.add_backward: g, _ = numpy_ref.residual_add_backward(R, y, True)
    g = R * (y > 0)
    # END ANSWER

A copy that hands out the exercise replaces the span (markers included) by
that text, or by a note that it was left out; other copies keep the text and
drop the markers. Every file with spans is registered among its exercise's
leaks in ``ASSIGNMENTS`` (``AnswerText(path)``), and ``check_registered``
fails both ways: an unregistered span, or a registered file without one.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .assignments import EXERCISES, AnswerText
from .markers import ID_PATTERN, MarkerError

_MARKDOWN = (re.compile(r"^\s*<!--\s*ANSWER\s+(?P<id>\S+?)\s*(?::\s*(?P<instead>.*?))?\s*-->\s*$"),
             re.compile(r"^\s*<!--\s*END\s+ANSWER\s*-->\s*$"))
_PYTHON = (re.compile(r"^(?P<indent>\s*)#\s*ANSWER\s+(?P<id>\S+?)\s*(?::\s*(?P<instead>.*?))?\s*$"),
           re.compile(r"^\s*#\s*END\s+ANSWER\s*$"))


@dataclass
class Span:
    """One answer span: lines ``begin``..``end`` (0-based, the markers included) of one text."""
    id: str
    begin: int
    end: int
    instead: str
    indent: str


def kind_of(path):
    """"markdown", "python" or "notebook" for a file that may hold answer spans, else None."""
    path = str(path)
    if path.endswith(".md"):
        return "markdown"
    if path.endswith(".ipynb"):
        return "notebook"
    if path.endswith(".py") and path.startswith("tutorials/"):
        return "python"
    return None


def spans(text, kind, where):
    """The answer spans of a Markdown or Python ``text``; ``where`` names it in errors."""
    begin_re, end_re = _MARKDOWN if kind == "markdown" else _PYTHON
    found, open_span, fenced = [], None, False
    for k, line in enumerate(text.split("\n")):
        if kind == "markdown" and line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced  # a marker shown in a code block is an example, not a span
        if fenced:
            continue
        begin, end = begin_re.match(line), end_re.match(line)
        if begin and not end:
            if open_span is not None:
                raise MarkerError(f"{where}, line {k + 1}: ANSWER span inside the one opened at line "
                                  f"{open_span.begin + 1}; spans do not nest")
            ex_id = begin.group("id")
            if not ID_PATTERN.match(ex_id) or ex_id not in EXERCISES:
                raise MarkerError(f"{where}, line {k + 1}: ANSWER {ex_id!r} is no exercise in ASSIGNMENTS")
            open_span = Span(ex_id, k, -1, begin.group("instead") or "", begin.groupdict().get("indent") or "")
        elif end:
            if open_span is None:
                raise MarkerError(f"{where}, line {k + 1}: END ANSWER without an ANSWER line before it")
            open_span.end = k
            found.append(open_span)
            open_span = None
    if open_span is not None:
        raise MarkerError(f"{where}, line {open_span.begin + 1}: ANSWER {open_span.id} is never closed "
                          "by END ANSWER")
    return found


def _replacement(span, kind):
    if kind == "markdown":
        return [span.instead or f"*(Left out of this student copy: exercise `{span.id}` asks for it.)*"]
    return [span.indent + (span.instead or f"# (left out of this student copy: exercise {span.id} asks for it)")]


def cut_text(text, kind, handed, where):
    """``text`` with the spans of handed-out exercises replaced and every other span's markers dropped."""
    lines = text.split("\n")
    for span in reversed(spans(text, kind, where)):
        inner = _replacement(span, kind) if span.id in handed else lines[span.begin + 1:span.end]
        lines[span.begin:span.end + 1] = inner
    return "\n".join(lines)


def _cells(nb):
    for cell in nb.get("cells", []):
        kind = "markdown" if cell.get("cell_type") == "markdown" else "python"
        source = cell.get("source", "")
        yield cell, kind, "".join(source) if isinstance(source, list) else source


def _set_source(cell, text):
    lines = text.split("\n")
    cell["source"] = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def cut_file(text, path, handed):
    """The student version of one file's text (a notebook as JSON text); unchanged if it has no spans."""
    kind = kind_of(path)
    if kind is None or "ANSWER" not in text:
        return text
    if kind != "notebook":
        return cut_text(text, kind, handed, path)
    nb = json.loads(text)
    for k, (cell, cell_kind, source) in enumerate(_cells(nb)):
        if "ANSWER" in source:
            _set_source(cell, cut_text(source, cell_kind, handed, f"{path}, cell {k}"))
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def file_spans(text, path):
    """[(exercise id, the span's inner lines)] of one file."""
    kind = kind_of(path)
    if kind is None or "ANSWER" not in text:
        return []
    if kind != "notebook":
        parts = [(text, kind, path)]
    else:
        parts = [(s, k, f"{path}, cell {i}") for i, (_, k, s) in enumerate(_cells(json.loads(text))) if "ANSWER" in s]
    found = []
    for part, part_kind, where in parts:
        lines = part.split("\n")
        found += [(s.id, lines[s.begin + 1:s.end]) for s in spans(part, part_kind, where)]
    return found


def scan(root, files):
    """{path: [(exercise id, inner lines)]} of every file under ``root`` holding answer spans."""
    found = {}
    for rel in files:
        if kind_of(rel) is None:
            continue
        try:
            text = (Path(root) / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        here = file_spans(text, rel)
        if here:
            found[rel] = here
    return found


def check_registered(found):
    """Raise unless the files with spans are exactly the ``AnswerText`` leaks registered for their exercises."""
    seen = {(ex_id, path) for path, items in found.items() for ex_id, _ in items}
    registered = {(e.id, leak.path) for e in EXERCISES.values() for leak in e.leaks if isinstance(leak, AnswerText)}
    for ex_id, path in sorted(seen - registered):
        raise MarkerError(f"{path}: an ANSWER span of {ex_id} that ASSIGNMENTS does not register "
                          f"(add AnswerText({path!r}) to {ex_id}'s leaks)")
    for ex_id, path in sorted(registered - seen):
        raise MarkerError(f"{path}: registered as stating {ex_id}'s answer (AnswerText) but has no "
                          "ANSWER span of it")


def _text_lines(text, path):
    """The lines a reader sees: a notebook's cell sources, any other file's lines."""
    if kind_of(path) == "notebook":
        try:
            return [line for _, _, source in _cells(json.loads(text)) for line in source.split("\n")]
        except ValueError:
            return text.split("\n")
    return text.split("\n")


def _read_lines(root, rel):
    try:
        return _text_lines((Path(root) / rel).read_text(encoding="utf-8"), rel)
    except (UnicodeDecodeError, OSError):
        return []


def answer_lines(root, files, found, handed):
    """{stripped line: exercise id}: substantial lines of the handed-out exercises' spans found nowhere else."""
    inside, in_spans = {}, set()
    for items in found.values():
        for ex_id, inner in items:
            for line in inner:
                in_spans.add(line.strip())
                if ex_id in handed and len(line.strip()) >= 20:
                    inside.setdefault(line.strip(), ex_id)
    elsewhere = set()
    for rel in files:
        elsewhere.update(s for s in (line.strip() for line in _read_lines(root, rel)) if s not in in_spans)
    return {s: ex_id for s, ex_id in inside.items() if s not in elsewhere}


def find_answer_text(copy_root, files, lines):
    """[(path, exercise id)] for every file of a copy in which a line of ``lines`` survives."""
    hits = []
    for rel in files:
        found = {lines[s.strip()] for s in _read_lines(copy_root, rel) if s.strip() in lines}
        hits += [(rel, ex_id) for ex_id in sorted(found)]
    return hits
