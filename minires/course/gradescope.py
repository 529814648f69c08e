"""Gradescope's side of the exported autograder: grade ``/autograder/submission``, write ``results.json``.

``run_autograder`` (written by ``minires exercises export gradescope``) runs
``python3 -m minires.course.gradescope --root /autograder``. Gradescope
unpacks the zip into ``/autograder/source``, so the student copy the export
put in the zip's ``source/`` is ``/autograder/source/source``. This module
builds a grading tree from the submission's student code (``minires/``,
``kernels/``, the experiment notebook; never its tests) and the autograder's
own tests (that copy's ``tests/``, hidden tests included), runs ``grade`` on it,
and turns the report into Gradescope's results format: one entry per
exercise, and one more per exercise for its hidden tests, each hidden entry
worth the weight share of the exercise's tests it holds. Whatever goes wrong
(no ``minires/`` in the submission, a crash, a timeout), ``results.json`` is
still written: score 0 and a message that says why.
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from ..serialization import write_atomic
from .assignments import EXERCISES, EXPERIMENT_NOTEBOOK, get_assignment
from .grading import counted as _counted, grade, passed as _passed, weight as _weight

ZIP_SOURCE = "source"                    # the zip's folder with the student copy and the tests
CONFIG = "minires_autograder.json"       # in that folder: what the export chose (assignments, time limits)
HIDDEN_DIR = "tests/exercises/hidden"    # in that folder: the instructor's hidden tests
HIDDEN_VISIBILITY = "after_due_date"     # Gradescope shows hidden entries once the due date has passed
_OUTPUT_LIMIT = 6000                     # characters of output per entry


class SubmissionError(Exception):
    """The submission cannot be graded; the message tells the student why."""


def source_dir(root):
    """Where the zip's ``source/`` lies under the autograder root (Gradescope unpacks the zip into root/source)."""
    return Path(root) / "source" / ZIP_SOURCE


def load_config(source):
    """The export's settings, from ``minires_autograder.json`` in the zip's ``source/``."""
    path = Path(source) / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"the autograder is damaged: cannot read {path} ({exc})") from None
    config["assignments"] = [get_assignment(n).number for n in config.get("assignments") or ()]
    if not config["assignments"]:
        raise RuntimeError(f"the autograder is damaged: {path} names no assignment")
    return config


def find_tree(submission, need_code=True):
    """The folder of the submission that holds ``minires/`` (the submission itself, or one folder inside)."""
    submission = Path(submission)
    if not submission.is_dir():
        raise SubmissionError(f"there is no submission folder ({submission})")
    found = []
    for depth in range(4):
        for package in sorted(submission.glob("/".join(["*"] * depth + ["minires", "__init__.py"]))):
            if "__MACOSX" not in package.parts:
                found.append(package.parent.parent)
        if found:
            break
    if len(found) > 1:
        where = ", ".join(str(p.relative_to(submission)) or "." for p in found)
        raise SubmissionError(f"the submission holds more than one minires/ folder ({where}); "
                              "submit one copy of the repository")
    if found:
        return found[0]
    if need_code:
        raise SubmissionError("the submission has no minires/ folder (with its __init__.py): submit the whole "
                              "repository (the folder with minires/, kernels/ and tests/), not single files")
    return None


def _copytree(src, dst):
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_tree(submission, source, tree, assignments):
    """Fill ``tree`` with the submission's code and the autograder's tests; returns notes for the student."""
    notes = []
    chosen = [get_assignment(n) for n in assignments]
    only_notebook = all(not e.block for a in chosen for e in a.exercises)
    code = find_tree(submission, need_code=not only_notebook)
    tree.mkdir(parents=True)
    for name in ("minires", "kernels"):
        mine = code / name if code is not None else None
        if mine is not None and mine.is_dir():
            _copytree(mine, tree / name)
        else:
            _copytree(source / name, tree / name)
            if not only_notebook:
                notes.append(f"Your submission has no {name}/ folder: graded with the handout's {name}/ "
                             "(its exercises as handed out, unsolved).")
    # the course tooling is the instructor's, never the student's: the grader's own, with the handout's
    # record of what the copy leaves out (a submission's record could be stale, or edited)
    shutil.rmtree(tree / "minires" / "course", ignore_errors=True)
    _copytree(source / "minires" / "course", tree / "minires" / "course")
    _copytree(source / "tests", tree / "tests")
    shutil.copy2(source / "pyproject.toml", tree / "pyproject.toml")
    if any(a.graded_by_hand for a in chosen):
        notebook = _find_notebook(submission, code)
        if notebook is not None:
            (tree / EXPERIMENT_NOTEBOOK).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(notebook, tree / EXPERIMENT_NOTEBOOK)
    return notes


def _find_notebook(submission, code):
    """The experiment notebook of the submission: at its place in the repository, else the one file of its name."""
    if code is not None and (code / EXPERIMENT_NOTEBOOK).is_file():
        return code / EXPERIMENT_NOTEBOOK
    name = Path(EXPERIMENT_NOTEBOOK).name
    found = [p for depth in range(5) for p in Path(submission).glob("/".join(["*"] * depth + [name]))
             if "__MACOSX" not in p.parts and p.is_file()]
    return found[0] if len(found) == 1 else None


def is_hidden(test):
    """True for a test of the report (``{"test": node id, ...}``) that lives among the hidden tests."""
    return test["test"].replace("\\", "/").startswith(HIDDEN_DIR + "/")


def split_points(points_possible, tests):
    """[(kind, score, max_score, tests)]: "visible", and "hidden" if there are hidden tests.

    The exercise's points are points_possible * (weight passed) / (weight counted),
    skipped tests not counted; the hidden entry gets the weight share of the
    counted tests it holds, so the entries add up to the exercise's points.
    """
    visible = [t for t in tests if not is_hidden(t)]
    hidden = [t for t in tests if is_hidden(t)]
    total = _weight(_counted(tests))
    if not total:  # nothing counted: the visible entry carries the exercise, with nothing earned
        groups = [("visible", 0.0, float(points_possible), visible)]
        return groups + ([("hidden", 0.0, 0.0, hidden)] if hidden else [])
    score = round(points_possible * _weight(_passed(tests)) / total, 2)
    if not hidden:
        return [("visible", score, float(points_possible), visible)]
    v_max = round(points_possible * _weight(_counted(visible)) / total, 2)
    v_score = round(points_possible * _weight(_passed(visible)) / total, 2)
    return [("visible", v_score, v_max, visible),
            ("hidden", round(score - v_score, 2), round(points_possible - v_max, 2), hidden)]


def _clip(text, limit=_OUTPUT_LIMIT):
    return text if len(text) <= limit else text[:limit - 12].rstrip() + "\n[... cut]"


def entry_output(tests, hidden=False):
    """What the student reads for one entry: the counts, then why the others did not pass (alike ones together)."""
    counted, passed = _counted(tests), _passed(tests)
    kind = "hidden tests" if hidden else "tests"
    if not tests:
        return f"No {kind} found for this exercise."
    lines = [f"{len(passed)} of {len(counted)} {kind} passed" +
             (f" ({len(tests) - len(counted)} skipped, not counted)" if len(counted) < len(tests) else "") + "."]
    groups = {}  # (label, message) -> test names, in the order the tests ran
    for t in tests:
        if t["outcome"] == "passed":
            continue
        label = {"skipped": "SKIPPED", "not run": "NOT RUN"}.get(t["outcome"], "FAILED")
        message = (t.get("message") or "").strip() or "(no message)"
        if t["outcome"] == "not run":
            message = ("pytest stopped before this test ran: an error while importing the tests "
                       "(does your code import?)")
        groups.setdefault((label, message), []).append(t["test"].rsplit("::", 1)[-1])
    for (label, message), names in groups.items():
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        lines.append(f"\n{label} {shown}:\n{_clip(message, 1500)}")
    return _clip("\n".join(lines))


def results_from_report(report, notes=(), seconds=0.0, test_timeout=None):
    """Gradescope's results.json (a dict) from a ``grade`` report."""
    tests = []
    for ex in report["exercises"]:
        if ex.get("removed"):
            continue  # not handed out and removed from the copy: not part of this assignment's score
        info = EXERCISES.get(ex["id"])
        title = f"{ex['id']}: {info.title}" if info else ex["id"]
        for kind, score, max_score, group in split_points(ex["points_possible"], ex["tests"]):
            hidden = kind == "hidden"
            counted = _counted(group)
            ok = bool(counted) and len(_passed(group)) == len(counted)
            tests.append({"name": f"{ex['id']}: hidden tests" if hidden else title,
                          "score": score, "max_score": max_score, "status": "passed" if ok else "failed",
                          "output": entry_output(group, hidden),
                          "tags": [f"assignment {ex['assignment']}", ex["id"]] + (["hidden"] if hidden else []),
                          "visibility": HIDDEN_VISIBILITY if hidden else "visible",
                          "extra_data": {"exercise": ex["id"], "hidden": hidden, "tests": len(group),
                                         "passed": len(_passed(group)), "weight": _weight(counted),
                                         "weight_passed": _weight(_passed(group))}})
    score = round(sum(t["score"] for t in tests), 2)
    possible = round(sum(t["max_score"] for t in tests), 2)
    lines = [f"minires autograder: {score:g} of {possible:g} points by tests."]
    for a in report["assignments"]:
        if a.get("graded_by_hand"):
            answers = a.get("answers")
            filled = f"{answers[0]} of {answers[1]} answer cells filled" if answers else "the notebook was not found"
            lines.append(f"Assignment {a['number']}: {a['graded_by_hand']:g} more points are graded by hand "
                         f"({filled}).")
    if any(is_hidden(t) for ex in report["exercises"] for t in ex["tests"]):
        lines.append("Some exercises also have hidden tests; their results show after the due date.")
    if test_timeout:
        lines.append(f"Each test may run for at most {test_timeout:g} s.")
    lines += list(notes)
    return {"score": score, "execution_time": int(round(seconds)), "output": "\n".join(lines),
            "visibility": "visible", "stdout_visibility": "hidden", "tests": tests}


def failure_results(reason, assignments=(), seconds=0.0):
    """results.json for a submission that could not be graded: score 0, the reason, a zero per exercise."""
    tests = [{"name": f"{e.id}: {e.title}", "score": 0.0, "max_score": float(e.points), "status": "failed",
              "output": reason, "visibility": "visible"}
             for n in assignments for e in get_assignment(n).exercises]
    return {"score": 0.0, "execution_time": int(round(seconds)),
            "output": f"The autograder could not grade this submission: {reason}",
            "visibility": "visible", "stdout_visibility": "hidden", "tests": tests}


def _run_grade(tree, config, report_path, log):
    """``grade`` on the tree with the export's time limits."""
    return grade(tree, assignments=[str(n) for n in config["assignments"]], json_path=report_path,
                 timeout=int(config.get("timeout") or 900), test_timeout=config.get("test_timeout") or None, log=log)


def autograde(root, log=print):
    """Grade ``root/submission`` with the autograder's tests; write and return ``root/results/results.json``."""
    root = Path(root)
    started = time.perf_counter()
    config = {"assignments": []}
    try:
        config = load_config(source_dir(root))
        with tempfile.TemporaryDirectory(prefix="minires-autograder-") as tmp:
            tree = Path(tmp) / "tree"
            notes = build_tree(root / "submission", source_dir(root), tree, config["assignments"])
            report = _run_grade(tree, config, Path(tmp) / "report.json", log)
        results = results_from_report(report, notes, time.perf_counter() - started, config.get("test_timeout"))
    except SubmissionError as exc:
        results = failure_results(str(exc), config["assignments"], time.perf_counter() - started)
    except Exception as exc:  # a crash, or a pytest run past its time limit: still a result, with the reason
        log(traceback.format_exc())
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, RuntimeError) else str(exc)
        results = failure_results(reason, config["assignments"], time.perf_counter() - started)
    out = root / "results" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1) + "\n"
    write_atomic(out, lambda f: f.write(text.encode("utf-8")))
    log(f"results: {out} ({results['score']:g} points)")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m minires.course.gradescope",
                                     description="Grade a Gradescope submission (run_autograder calls this).")
    parser.add_argument("--root", default="/autograder",
                        help="the folder with source/ (the unpacked zip) and submission/; "
                             "results/results.json goes there")
    args = parser.parse_args(argv)
    autograde(args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
