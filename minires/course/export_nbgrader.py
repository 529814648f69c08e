"""The experiment notebook (assignment 6) as an nbgrader assignment, its answers graded by hand.

``export_nbgrader`` writes ``DEST/source/<assignment>/06_experiment.ipynb``,
the layout of an nbgrader course folder, with nbgrader's cell metadata
(schema version 3): each cell tagged "answer" becomes a manually graded
answer (``solution`` and ``grade`` true, ``points``: the assignment's
points graded by hand, shared out), every other cell is read-only
(``locked``). Each cell gets a unique ``grade_id``. Outputs and answer
spans are cut, as in a student copy. Then ``nbgrader generate_assignment <assignment>``
in DEST makes the release version.
"""
import json
import re
from pathlib import Path

from ..serialization import write_atomic
from .answers import cut_file
from .assignments import ASSIGNMENTS, EXPERIMENT_NOTEBOOK
from .student import strip_notebook
from .tree import default_source

SCHEMA_VERSION = 3
ANSWER_TAG = "answer"


def share_points(total, count):
    """``total`` points shared out over ``count`` answers as whole numbers (the first ones get the remainder)."""
    base, extra = divmod(int(total), count)
    return [base + (k < extra) for k in range(count)]


def _tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def nbgrader_metadata(nb, points):
    """Add nbgrader's metadata to every cell of ``nb`` (a notebook dict, changed in place); returns ``nb``."""
    answers = [c for c in nb.get("cells", []) if ANSWER_TAG in _tags(c)]
    if not answers:
        raise ValueError(f"the notebook has no cell tagged {ANSWER_TAG!r}: nothing to grade by hand")
    shares = iter(share_points(points, len(answers)))
    used = set()
    number = 0
    for k, cell in enumerate(nb["cells"]):
        meta = {"schema_version": SCHEMA_VERSION, "task": False}
        if ANSWER_TAG in _tags(cell):
            if cell.get("cell_type") != "markdown":
                raise ValueError(f"cell {k} is tagged {ANSWER_TAG!r} but is a {cell.get('cell_type')} cell; "
                                 "nbgrader grades written answers in markdown cells")
            number += 1
            grade_id = f"answer-{number}"
            meta.update(grade=True, solution=True, locked=False, points=next(shares))
        else:
            grade_id = "cell-" + re.sub(r"[^A-Za-z0-9_-]", "-", str(cell.get("id") or k))
            meta.update(grade=False, solution=False, locked=True)
        while grade_id in used:
            grade_id += f"-{k}"
        used.add(grade_id)
        meta["grade_id"] = grade_id
        cell.setdefault("metadata", {})["nbgrader"] = meta
    return nb


def check_nbgrader(dest, source=None):
    """The options of the nbgrader export, checked before anything is written: (notebook path, assignment)."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"{dest} exists and is not a folder")
    source = Path(source).resolve() if source else default_source()
    notebook = source / EXPERIMENT_NOTEBOOK
    if not notebook.is_file():
        raise FileNotFoundError(f"no experiment notebook {notebook}")
    assignment = next(a for a in ASSIGNMENTS if any(e.file == EXPERIMENT_NOTEBOOK for e in a.exercises))
    if not assignment.graded_by_hand:
        raise ValueError(f"assignment {assignment.number} has no points graded by hand")
    return notebook, assignment


def export_nbgrader(dest, source=None, log=print):
    """Write the experiment notebook with nbgrader metadata to ``dest/source/<name>/``; returns its path."""
    notebook, assignment = check_nbgrader(dest, source)
    handed = {e.id for e in assignment.exercises}  # as in a student copy: no outputs, no answer spans
    nb = json.loads(cut_file(strip_notebook(notebook.read_text(encoding="utf-8")), EXPERIMENT_NOTEBOOK, handed))
    nbgrader_metadata(nb, assignment.graded_by_hand)
    out = Path(dest) / "source" / assignment.marker / notebook.name
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    write_atomic(out, lambda f: f.write(text.encode("utf-8")))
    answers = sum(1 for c in nb["cells"] if c["metadata"]["nbgrader"]["grade"])
    log(f"wrote {out}: {answers} answer cells graded by hand, {assignment.graded_by_hand} points; "
        "the other cells read-only")
    log(f"  next: cd {dest} && nbgrader generate_assignment {assignment.marker}")
    return out
