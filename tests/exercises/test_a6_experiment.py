"""Assignment 6, the experiment: the notebook exists, is a valid notebook, and has its questions and answer cells.

The answers themselves are graded by hand; ``minires exercises grade`` says
so and counts the answer cells filled.
"""
import json
from pathlib import Path

import pytest

from minires.course.assignments import ANSWER_PLACEHOLDER, EXPERIMENT_NOTEBOOK

pytestmark = pytest.mark.experiment

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = 5


def load():
    path = ROOT / EXPERIMENT_NOTEBOOK
    if not path.is_file():
        pytest.fail(f"{EXPERIMENT_NOTEBOOK} is missing", pytrace=False)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        pytest.fail(f"{EXPERIMENT_NOTEBOOK} is not valid JSON ({exc}); did an editor damage it?", pytrace=False)


def tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def text(cell):
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


@pytest.mark.exercise("experiment.notebook")
def test_the_notebook_is_valid():
    nb = load()
    assert nb.get("nbformat") == 4, f"expected an nbformat 4 notebook, got nbformat {nb.get('nbformat')}"
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.reads(json.dumps(nb), as_version=4))


@pytest.mark.exercise("experiment.notebook")
def test_every_question_has_an_answer_cell_after_it():
    cells = load()["cells"]
    questions = [k for k, c in enumerate(cells) if "question" in tags(c)]
    assert len(questions) == QUESTIONS, (f"expected {QUESTIONS} cells tagged 'question', found {len(questions)}: "
                                         "keep the question cells (and their tags) as they are")
    for number, k in enumerate(questions, 1):
        assert cells[k]["cell_type"] == "markdown" and f"**Question {number}.**" in text(cells[k]), (
            f"cell {k} should be the markdown of Question {number}")
        after = cells[k + 1] if k + 1 < len(cells) else {}
        assert after.get("cell_type") == "markdown" and "answer" in tags(after), (
            f"Question {number} (cell {k}) must be followed by its markdown answer cell tagged 'answer'; "
            "write your answer in that cell, do not delete it")


@pytest.mark.exercise("experiment.notebook")
def test_the_notebook_trains_both_networks_and_plots_the_gradient_flow():
    code = "\n".join(text(c) for c in load()["cells"] if c["cell_type"] == "code")
    for needed in ("resnet20", "plain20", "gradient_flow(", "plot_block_contributions(", "plot_training_curves("):
        assert needed in code, f"the notebook's code no longer contains {needed!r}"


def test_the_reference_leaves_the_answers_empty():
    """The answer cells ship with the placeholder: answers are the students' to write."""
    from minires.course import handed_out
    if handed_out():
        pytest.skip("a student copy: the answers are the student's")
    answers = [text(c).strip() for c in load()["cells"] if "answer" in tags(c)]
    assert answers and all(a == ANSWER_PLACEHOLDER for a in answers)
