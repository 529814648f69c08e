"""``minires exercises make-student`` and ``grade`` end to end, on two student copies of this checkout.

One copy hands out every assignment, one only assignment 2 (convolution).
The checks: the copy installs (a wheel built from it, installed into a
folder of its own) and imports its own code; every handed-out exercise's
tests fail with its NotImplementedError; the tests of what was not handed
out still pass; grade gives the reference full points and the copy none;
no line unique to a solution survives anywhere in the copy. About a minute
and a half on two cores (three pytest runs of the exercise tests, one of a
selection of the suite, one pip build).
"""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from minires import course
from minires.course import grading, student
from minires.course.assignments import _CUDA
from minires.course.manifest import MANIFEST, read_manifest
from minires.course.markers import find_def
from minires.course.tree import source_files

ROOT = Path(__file__).resolve().parent.parent
ALL = list(course.EXERCISES)
CONV = [e.id for e in course.get_assignment(2).exercises]

if course.handed_out():
    pytest.skip("a student copy: student copies are made from the reference", allow_module_level=True)
if not (ROOT / ".git").exists() or shutil.which("git") is None:
    pytest.skip("needs the git checkout (a student copy takes git's tracked files)", allow_module_level=True)


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    base = tmp_path_factory.mktemp("students")
    full, conv, solved = base / "all", base / "conv", base / "conv-solved"
    course.make_student(full, source=ROOT, log=quiet)
    printed = []
    course.make_student(conv, source=ROOT, assignments=["2"], log=printed.append)
    course.make_student(solved, source=ROOT, assignments=["2"], log=quiet, solved=True)
    return SimpleNamespace(base=base, full=full, conv=conv, solved=solved, printed=printed)


@pytest.fixture(scope="module")
def graded(copies):
    """grade() of the reference, the full copy, the conv copy (on its own assignment and on all) and the solved one."""
    reports = {}
    for name, directory, chosen in (("reference", ROOT, None), ("full", copies.full, None),
                                    ("conv", copies.conv, None), ("conv-all", copies.conv, ["1", "2", "3", "4", "5"]),
                                    ("solved", copies.solved, None)):
        reports[name] = course.grade(directory, assignments=chosen, json_path=copies.base / f"{name}.json", log=quiet)
    return reports


def by_id(report):
    return {e["id"]: e for e in report["exercises"]}


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_ENABLE_CUDASIM", "MINIRES_KERNELS")}
    env.update(extra)
    return env


# ---------------------------------------------------------------- the copy

def test_the_copy_holds_the_tracked_files_and_no_history(copies):
    tracked = set(source_files(ROOT))
    copied = {p.relative_to(copies.full).as_posix() for p in copies.full.rglob("*") if p.is_file()}
    assert copied == tracked | {MANIFEST}, (f"not copied: {sorted(tracked - copied)[:5]}; "
                                            f"extra: {sorted(copied - tracked - {MANIFEST})[:5]}")
    assert not (copies.full / ".git").exists()
    manifest = read_manifest(copies.full)
    assert list(manifest["exercises"]) == ALL and list(manifest["assignments"]) == [1, 2, 3, 4, 5, 6, 7]
    conv = read_manifest(copies.conv)
    assert list(conv["exercises"]) == CONV
    assert set(conv["removed_modules"]) == {"kernels/numba_cpu.py", "kernels/numba_conv.py", "kernels/numba_direct.py",
                                            "kernels/numba_nhwc.py", "kernels/cupy_kernels.py"}


def test_the_copy_installs_and_imports_its_own_code(copies, tmp_path):
    pytest.importorskip("setuptools", reason="pip install --no-build-isolation needs setuptools here")
    source = tmp_path / "src"
    shutil.copytree(copies.full, source)  # pip builds inside the tree: keep the shared copy clean
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input",
                          "--disable-pip-version-check", "-q", "--target", str(target), str(source)],
                         capture_output=True, text=True, timeout=300, env=clean_env())
    if pip.returncode != 0 and "No module named pip" in pip.stderr:
        pytest.skip("pip is not available here")
    assert pip.returncode == 0, f"the student copy does not install:\n{pip.stdout[-2000:]}{pip.stderr[-2000:]}"
    probe = """
import numpy as np
import minires, minires.kernels, minires.kernels.numpy_ref
from minires import course, kernels
print(minires.__file__)
print(minires.kernels.__file__)
print(",".join(sorted(course.handed_out())))
try:
    kernels.load("numba")
except kernels.BackendUnavailable as exc:
    print("numba:", exc)
try:
    minires.kernels.numpy_ref.im2col(np.zeros((1, 1, 3, 3)), 3, 3, (1, 1), (1, 1))
except NotImplementedError as exc:
    print("im2col:", exc)
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=clean_env(PYTHONPATH=str(target)))
    assert out.returncode == 0, out.stderr
    package, kernels_file, handed, numba, im2col = out.stdout.strip().splitlines()
    assert Path(package).parent == target / "minires" and Path(kernels_file).parent == target / "minires" / "kernels"
    assert handed.split(",") == sorted(ALL)
    assert "removed from this student copy" in numba
    assert im2col.startswith("im2col: conv.im2col: ")


def test_no_solution_text_survives(copies):
    files = source_files(ROOT)
    blocks = course.scan(ROOT, files)
    lines = student.solution_lines(ROOT, files, blocks, ALL)
    assert len(lines) > 60, f"only {len(lines)} solution lines: the search would prove little"
    assert len(set(lines.values())) >= 15, f"solution lines of only {sorted(set(lines.values()))}"
    hits = student.find_solution_text(copies.full, lines)
    assert hits == [], f"solution lines in the student copy: {hits[:5]}"
    # the search finds what is there: the conv copy keeps every other exercise's code (but the GPU im2col
    # and col2im kernels, which would show conv.im2col and conv.col2im)
    others = {s: e for s, e in lines.items() if e not in CONV + ["gpu.im2col", "gpu.col2im"]}
    found = {e for _, _, e in student.find_solution_text(copies.conv, others)}
    assert found == set(others.values())
    conv_lines = {s: e for s, e in lines.items() if e in CONV}
    assert student.find_solution_text(copies.conv, conv_lines) == []


def test_leaks_elsewhere_are_blanked(copies):
    modules, functions, docs = student.plan(ALL)
    manifest = read_manifest(copies.full)
    assert sorted(manifest["removed_modules"]) == sorted(modules)
    for path in modules:
        text = (copies.full / path).read_text()
        assert "raise ImportError" in text and "removed from this student copy" in text and "def " not in text
    frames = {course.EXERCISES[e].where for e in ALL if course.EXERCISES[e].file == _CUDA}
    for path, names in functions.items():
        tree = ast.parse((copies.full / path).read_text())
        removed = set(manifest["removed_functions"].get(path, ()))
        assert removed == set(names) - frames, f"{path}: removed {sorted(removed)}"  # a handed-out kernel stays
        for name in removed:
            node = find_def(tree, name)
            assert node is not None, f"{path}: {name} disappeared instead of being blanked"
            body = [n for n in node.body if not isinstance(n, ast.Expr)]
            assert len(body) == 1 and isinstance(body[0], ast.Raise), f"{path}: {name} still has code"
            assert not node.decorator_list, f"{path}: {name} keeps its decorators"
    for path, cuts in docs.items():
        original, copy = ast.parse((ROOT / path).read_text()), ast.parse((copies.full / path).read_text())
        for qualname, text in cuts.items():
            if qualname in manifest["removed_functions"].get(path, ()):
                continue  # removed whole
            before = ast.get_docstring(find_def(original, qualname))
            after = ast.get_docstring(find_def(copy, qualname))
            assert after == (text or before.splitlines()[0]), f"{path}: {qualname}'s docstring was not cut"
            for line in before.splitlines()[1:]:
                if line.strip():
                    assert line.strip() not in (copies.full / path).read_text(), f"{path}: {line.strip()!r} survived"


def test_every_notebook_in_the_copy_is_stripped(copies):
    notebooks = sorted(copies.full.rglob("*.ipynb"))
    assert notebooks, "the copy has no notebooks (the experiment's should be there)"
    for path in notebooks:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} keeps outputs"


def test_a_student_copy_cannot_be_the_source(copies, tmp_path):
    with pytest.raises(RuntimeError, match="is itself a student copy"):
        course.make_student(tmp_path / "again", source=copies.full, log=quiet)


# ---------------------------------------------------------------- grading

def test_grade_gives_the_reference_full_points(graded):
    report = graded["reference"]
    for e in report["exercises"]:
        assert e["total"] > 0, f"{e['id']} has no tests"
        assert e["failed"] == 0 and e["passed"] == e["total"] - e["skipped"] > 0, (
            f"{e['id']} in the reference: {[t['message'] for t in e['tests'] if t['outcome'] != 'passed'][:2]}")
        assert e["points"] == e["points_possible"]
    assert report["total"]["points"] == report["total"]["points_possible"] > 40
    assert report["total"]["graded_by_hand"] == 10


def test_every_handed_out_exercise_fails_with_its_not_implemented_error(graded, copies):
    report = graded["full"]
    for e in report["exercises"]:
        if course.EXERCISES[e["id"]].block:
            assert e["points"] == 0 and e["total"] > 0, e["id"]
            for t in e["tests"]:
                assert t["outcome"] in ("failed", "error") and "NotImplementedError" in t["message"] \
                    and f"{e['id']}:" in t["message"], f"{t['test']}: {t['outcome']}: {t['message'][:200]}"
    assert report["total"]["points"] == 0
    saved = json.loads((copies.base / "full.json").read_text())
    assert saved["total"] == report["total"] and saved["student_copy"]["exercises"] == ALL


def test_what_is_not_handed_out_still_passes(graded):
    exercises = by_id(graded["conv-all"])
    for ex_id, e in exercises.items():
        if ex_id in CONV:
            assert e["points"] == 0 and all("NotImplementedError" in t["message"] for t in e["tests"]), ex_id
        elif ex_id in ("gpu.im2col", "gpu.col2im"):  # their kernels would show im2col: removed, tests skip
            assert e["skipped"] == e["total"] > 0 and "removed from this student copy" in e["tests"][0]["message"]
            assert e["removed"] and e["points_possible"] == 0, f"{ex_id} counts in the total of the conv copy"
        else:
            assert e["points"] == e["points_possible"] and e["failed"] == 0, (ex_id, e["tests"][:1])
    removed = sum(course.EXERCISES[i].points for i in ("gpu.im2col", "gpu.col2im"))
    every = sum(course.get_assignment(n).points for n in range(1, 6))
    assert graded["conv-all"]["total"]["points_possible"] == every - removed
    assert graded["conv-all"]["total"]["points"] == every - removed - course.get_assignment(2).points


def test_a_copy_is_graded_on_its_own_assignments_and_a_solved_one_gets_full_marks(graded):
    conv, solved = graded["conv"], graded["solved"]
    assert [a["number"] for a in conv["assignments"]] == [2] == [a["number"] for a in solved["assignments"]]
    assert sorted(by_id(conv)) == sorted(CONV)
    assert conv["total"]["points"] == 0 and conv["total"]["points_possible"] == course.get_assignment(2).points
    assert solved["total"]["points"] == solved["total"]["points_possible"] == course.get_assignment(2).points
    for e in solved["exercises"]:
        assert e["failed"] == 0 and e["passed"] + e["skipped"] == e["total"] > 0, e["id"]
    assert [a["number"] for a in graded["reference"]["assignments"]] == [1, 2, 3, 4, 5, 6, 7]


def test_grade_prints_passed_failed_and_skipped_apart_and_each_first_problem_in_full(copies):
    lines = []
    course.grade(copies.conv, json_path=copies.base / "printed.json", log=lines.append)
    head = lines[0].split()
    assert head[:5] == ["exercise", "passed", "failed", "skipped", "points"]
    row = next(line for line in lines if line.startswith("conv.im2col ")).split()
    tests = [t for t in json.loads((copies.base / "printed.json").read_text())["exercises"][0]["tests"]]
    assert row[1:4] == ["0", str(len(tests)), "0"] and row[4:] == ["0", "/", "3"]
    text = "\n".join(lines)
    problems = text[text.index("first problem of each exercise:"):]
    flowing = " ".join(problems.split())
    hint = course.EXERCISES["conv.im2col"]  # the NotImplementedError's hints are shown whole, not cut at a width
    assert "conv.im2col (test_" in problems and "a Python loop over pixels is too slow" in flowing, problems
    assert hint.id in problems and all(len(line) <= 100 for line in problems.splitlines() if line.startswith("      "))


def test_make_student_prints_the_one_install_recipe(copies):
    from minires.course.assignments import student_recipe
    assert copies.printed[-3] == f"next, in {copies.conv}:"
    assert [line.strip() for line in copies.printed[-2:]] == student_recipe([course.get_assignment(2)])


def _run_suite(copy, tmp_path, selection):
    """Run ``selection`` of the copy's tests against the copy's code; {outcome: [(test, text)]} from JUnit XML."""
    stage = tmp_path / "stage"
    stage.mkdir()
    grading.import_root(copy, stage)
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           "--rootdir", str(copy), "-c", str(copy / "pyproject.toml"),
                           f"--junitxml={junit}", *[str(copy / "tests" / s) for s in selection]],
                          cwd=stage, capture_output=True, text=True, timeout=900,
                          env=clean_env(PYTHONPATH=str(stage), PYTHONDONTWRITEBYTECODE="1"))
    assert junit.exists(), proc.stdout[-3000:] + proc.stderr[-2000:]
    outcomes = {"passed": [], "failed": [], "skipped": []}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}.{case.get('name')}"
        problems = case.findall("failure") + case.findall("error")
        skipped = case.find("skipped")
        if problems:
            outcomes["failed"].append((name, " ".join((p.get("message") or "") + (p.text or "") for p in problems)))
        elif skipped is not None:
            outcomes["skipped"].append((name, (skipped.get("message") or "") + (skipped.text or "")))
        else:
            outcomes["passed"].append((name, ""))
    return outcomes


def test_an_unsolved_copy_fails_only_its_exercise_tests(copies, tmp_path):
    """The ordinary suite in the conv copy: a test that reaches an unsolved exercise is skipped, naming it."""
    outcomes = _run_suite(copies.conv, tmp_path, ["test_autograd.py", "test_tensor.py", "test_kernels.py",
                                                  "test_cudasim_process.py", "exercises/test_a2_conv.py"])
    failed = [(n, t) for n, t in outcomes["failed"] if ".exercises.test_a2_conv." not in n]
    assert not failed, "tests failed in the unsolved copy for another reason than their own exercise:\n" + \
        "\n".join(f"{n}: {t[:300]}" for n, t in failed[:5])
    exercise_failures = [n for n, _ in outcomes["failed"] if ".exercises.test_a2_conv." in n]
    assert len(exercise_failures) >= 20, f"only {len(exercise_failures)} conv exercise tests failed"
    waiting = [t for _, t in outcomes["skipped"] if "waits for exercise conv." in t]
    assert len(waiting) >= 10, f"only {len(waiting)} tests skipped as waiting for a conv exercise"
    assert len(outcomes["passed"]) > 100, f"only {len(outcomes['passed'])} tests passed in the conv copy"


def test_a_solved_copy_passes_what_the_unsolved_one_skips(copies, tmp_path):
    outcomes = _run_suite(copies.solved, tmp_path, ["test_kernels.py", "exercises/test_a2_conv.py",
                                                    "test_notebooks.py::test_notebook_runs_top_to_bottom"
                                                    "[07_kernels.ipynb]"])
    assert not outcomes["failed"], "\n".join(f"{n}: {t[:400]}" for n, t in outcomes["failed"][:3])
    assert not [t for _, t in outcomes["skipped"] if "waits for exercise" in t]
    assert any("07_kernels" in n for n, _ in outcomes["passed"]), "notebook 07 did not run in the solved copy"


def test_grade_on_the_command_line_exits_0_whatever_the_score(copies, tmp_path):
    out = tmp_path / "g.json"
    proc = subprocess.run([sys.executable, "-m", "minires.cli", "exercises", "grade", str(copies.full),
                           "--assignment", "1", "--json", str(out)], capture_output=True, text=True, timeout=600,
                          env=clean_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "autograd.topo_order" in proc.stdout and "0 / 10" in proc.stdout
    report = json.loads(out.read_text())
    assert [a["number"] for a in report["assignments"]] == [1]


def test_answer_spans_are_cut_from_a_copy_that_hands_the_exercise_out(copies, tmp_path):
    residual = tmp_path / "residual"
    course.make_student(residual, source=ROOT, assignments=["4"], log=quiet)
    readme = (residual / "README.md").read_text()
    assert "hands the same `g` to both" not in readme and "exercise `residual.add_backward`" in readme
    assert "hands the same `g` to both" in (copies.conv / "README.md").read_text()  # not handed out there: kept
    nb = json.loads((residual / "tutorials" / "01_residual_learning.ipynb").read_text())
    prose = " ".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    for statement in ("[y>0]", "[y > 0]", "copies this same $g$", "copies $g$ to both sides"):
        assert statement not in prose, f"notebook 01 of the residual copy still says {statement!r}"
    record_doc = ast.get_docstring(find_def(ast.parse((residual / "minires" / "residual.py").read_text()),
                                            "ResidualRecord"))
    assert "y > 0" not in record_doc and "g =" not in record_doc
    marker = re.compile(r"^\s*(<!--|#)\s*(END\s+)?ANSWER\b", flags=re.M)
    for copy in (residual, copies.conv, copies.full):
        for path in [*copy.rglob("*.md"), *copy.rglob("*.ipynb"), *(copy / "tutorials").glob("*.py")]:
            text = path.read_text()
            if path.suffix == ".ipynb":
                text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
            text = re.sub(r"```.*?```", "", text, flags=re.S)  # a marker in a code block is an example
            assert not marker.search(text), f"markers left in {path}"


def test_one_endless_test_costs_its_own_weight_only(copies, tmp_path):
    """With a per-test time limit, an endless loop fails its test; the other tests still count."""
    copy = tmp_path / "copy"
    shutil.copytree(copies.solved, copy)
    (copy / "tests" / "exercises" / "test_zz_endless.py").write_text(
        "import pytest\n\n\n"
        "@pytest.mark.conv\n@pytest.mark.exercise('conv.col2im', weight=2)\n"
        "def test_forever():\n    while True:\n        pass\n")
    # 10 s: the first test to import PyTorch took over 3 s on a loaded machine, and must not be cut short
    report = course.grade(copy, json_path=tmp_path / "g.json", log=quiet, test_timeout=10)
    col2im = by_id(report)["conv.col2im"]
    endless = [t for t in col2im["tests"] if t["test"].endswith("test_forever")]
    assert len(endless) == 1 and endless[0]["outcome"] == "failed"
    assert "longer than the grader's limit of 10 s per test" in endless[0]["message"]
    weights = [t["weight"] for t in col2im["tests"]]
    assert col2im["points"] == round(2 * (sum(weights) - 2) / sum(weights), 2) and col2im["points"] > 0
    others = [e for e in report["exercises"] if e["id"] != "conv.col2im"]
    assert all(e["points"] == e["points_possible"] for e in others)
