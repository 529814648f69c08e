"""``minires exercises export``: each platform's files checked against that platform's documented format.

Gradescope: the exported ``autograder.zip`` is unpacked as Gradescope does
(into ``$ROOT/source``; ``run_autograder`` copied to ``$ROOT``) and
``run_autograder`` runs with ``AUTOGRADER_ROOT=$ROOT`` on four submissions:
the reference (full marks), a fresh student copy (nothing), the reference
with an endless loop in one exercise (the others still count) and no code at
all (score 0 and why). Every ``results.json`` validates against a schema
written from Gradescope's autograder specification. ``setup.sh`` is only
checked (``bash -n``, its extras): it installs packages.
GitHub Classroom: the workflow parses (PyYAML), has a command-grader step
per exercise worth its points and the reporter, and its commands select
tests. nbgrader: the notebook's cell metadata follows nbgrader's schema
version 3 and the notebook still validates with nbformat.
About a minute on two cores (assignment 2: three grading runs and a cut-short
one, seven pytest collections).
"""
import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from minires import course
from minires.cli import main
from minires.course import export, export_nbgrader, gradescope
from minires.course.assignments import EXPERIMENT_NOTEBOOK, get_assignment
from minires.course.tree import source_files

ROOT = Path(__file__).resolve().parent.parent
CONV = get_assignment(2)
TEST_TIMEOUT = 10  # seconds per test: the longest conv test takes under half a second, but the first one to
#                   import PyTorch took over 3 s on a loaded CI machine

if course.handed_out():
    pytest.skip("a student copy: exports are made from the reference", allow_module_level=True)
if not (ROOT / ".git").exists() or shutil.which("git") is None:
    pytest.skip("needs the git checkout (the autograder holds a student copy of git's tracked files)",
                allow_module_level=True)

# ---------------------------------------------------------------- Gradescope's results.json, as documented
# From https://gradescope-autograders.readthedocs.io/en/latest/specs/ ("Output format"): every key is
# optional, but a score must be given at the top or on every test; visibility is one of four words;
# output, name and test formats are one of five; a test's status is passed or failed; tags are strings.
_VISIBILITY = {"enum": ["hidden", "after_due_date", "after_published", "visible"]}
_FORMAT = {"enum": ["text", "html", "simple_format", "md", "ansi"]}
_NUMBER = {"type": "number"}
_TEST = {
    "type": "object",
    "properties": {
        "score": _NUMBER, "max_score": _NUMBER, "status": {"enum": ["passed", "failed"]},
        "name": {"type": "string"}, "name_format": _FORMAT, "number": {"type": "string"},
        "output": {"type": "string"}, "output_format": _FORMAT,
        "tags": {"type": "array", "items": {"type": "string"}},
        "visibility": _VISIBILITY, "extra_data": {"type": "object"},
    },
    "additionalProperties": False,
}
RESULTS_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "score": _NUMBER, "execution_time": {"type": "number", "minimum": 0}, "output": {"type": "string"},
        "output_format": _FORMAT, "test_output_format": _FORMAT, "test_name_format": _FORMAT,
        "visibility": _VISIBILITY, "stdout_visibility": _VISIBILITY, "extra_data": {"type": "object"},
        "tests": {"type": "array", "items": _TEST},
        "leaderboard": {"type": "array", "items": {
            "type": "object", "required": ["name", "value"],
            "properties": {"name": {"type": "string"}, "value": {"type": ["number", "string"]},
                           "order": {"enum": ["asc", "desc"]}}}},
    },
    "additionalProperties": False,
    "anyOf": [{"required": ["score"]},
              {"required": ["tests"], "properties": {"tests": {"items": {"required": ["score"]}}}}],
}


def check_results(results):
    """results.json follows the documented format, and carries what this autograder promises."""
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(results, RESULTS_SCHEMA)
    assert {"score", "execution_time", "output", "visibility", "tests"} <= results.keys()
    for t in results["tests"]:
        assert {"name", "score", "max_score", "output", "visibility"} <= t.keys(), t
        assert 0 <= t["score"] <= t["max_score"] + 1e-9, t
    assert results["score"] == pytest.approx(sum(t["score"] for t in results["tests"]), abs=0.011)


HIDDEN_TEST = '''import numpy as np
import pytest
from exercise_helpers import check_array, im2col_loop

from minires.kernels import numpy_ref as ref


@pytest.mark.exercise("conv.im2col")
def test_im2col_of_a_single_channel_ramp():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    check_array(ref.im2col(x, 2, 2, (1, 1), (0, 0)), im2col_loop(x, 2, 2, (1, 1), (0, 0)), "im2col")


@pytest.mark.exercise("conv.im2col", weight=2)
def test_im2col_of_a_strided_padded_window():
    x = np.arange(50, dtype=np.float32).reshape(1, 2, 5, 5)
    check_array(ref.im2col(x, 3, 3, (2, 2), (1, 1)), im2col_loop(x, 3, 3, (2, 2), (1, 1)), "im2col")
'''


def quiet(*args):
    pass


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_ENABLE_CUDASIM", "MINIRES_KERNELS",
                                                            "PYTEST_ADDOPTS", "AUTOGRADER_ROOT")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # this python first
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("gradescope")
    hidden = base / "test_conv_extra.py"
    hidden.write_text(HIDDEN_TEST)
    path = export.export_gradescope(base / "out", assignments=["2"], hidden_tests=[hidden],
                                    test_timeout=TEST_TIMEOUT, log=quiet)
    return path


def autograder_root(zip_path, root):
    """An /autograder folder as Gradescope makes it: the zip unpacked into source/, run_autograder beside."""
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(root / "source")
        for info in archive.infolist():  # extractall drops the permission bits
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(root / "source" / info.filename, mode)
    shutil.copy2(root / "source" / "run_autograder", root / "run_autograder")
    return root


def run_autograder(root, timeout=300):
    proc = subprocess.run([str(root / "run_autograder")], cwd=root, capture_output=True, text=True,
                          timeout=timeout, env=clean_env(AUTOGRADER_ROOT=str(root)))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    path = root / "results" / "results.json"
    assert path.is_file(), f"no results.json:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
    results = json.loads(path.read_text())
    check_results(results)
    return results, proc.stdout


def entries(results):
    return {t["name"].split(":")[0]: t for t in results["tests"] if not t["name"].endswith("hidden tests")}


def hidden_entries(results):
    return {t["name"].split(":")[0]: t for t in results["tests"] if t["name"].endswith("hidden tests")}


def copy_code(src, dst):
    for name in ("minires", "kernels"):
        shutil.copytree(src / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))


# ---------------------------------------------------------------- the zip

def test_the_zip_has_gradescopes_layout_and_no_solution(exported, tmp_path):
    with zipfile.ZipFile(exported) as archive:
        infos = {i.filename: i for i in archive.infolist()}
        for script in ("setup.sh", "run_autograder"):
            assert script in infos, f"{script} is not at the zip's root"
            assert (infos[script].external_attr >> 16) & 0o111, f"{script} is not executable in the zip"
            assert archive.read(script).startswith(b"#!"), f"{script} has no #! line"
        names = set(infos)
        assert {"source/minires/course/gradescope.py", "source/tests/exercises/test_a2_conv.py",
                "source/pyproject.toml", "source/minires_autograder.json",
                "source/tests/exercises/hidden/conftest.py",
                "source/tests/exercises/hidden/test_hidden_conv_extra.py"} <= names
        assert not any(n.startswith("source/.git/") for n in names)
        archive.extractall(tmp_path)
    config = json.loads((tmp_path / "source" / "minires_autograder.json").read_text())
    assert config["assignments"] == [2] and config["test_timeout"] == TEST_TIMEOUT
    # the copy in source/ is a student copy: every conv exercise is a raise, no line unique to a solution is left
    files = source_files(ROOT)
    lines = course.student.solution_lines(ROOT, files, course.scan(ROOT, files), [e.id for e in CONV.exercises])
    assert len(lines) > 10
    assert course.student.find_solution_text(tmp_path / "source", lines) == []
    kernels = (tmp_path / "source" / "kernels" / "numpy_ref.py").read_text()
    assert "raise NotImplementedError" in kernels and '"conv.im2col: ' in kernels


def test_setup_sh_parses_and_installs_the_copy_with_its_extras(exported, tmp_path):
    with zipfile.ZipFile(exported) as archive:
        setup = archive.read("setup.sh").decode()
        run = archive.read("run_autograder").decode()
    for name, text in (("setup.sh", setup), ("run_autograder", run)):
        (tmp_path / name).write_text(text)
        proc = subprocess.run(["bash", "-n", str(tmp_path / name)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
    assert "source/source[test]" in setup and "numba" not in setup
    gpu = export.gradescope_scripts([get_assignment(5)])["setup.sh"]
    assert "source/source[test,numba]" in gpu
    assert "minires.course.gradescope" in run and "AUTOGRADER_ROOT" in run


# ---------------------------------------------------------------- run_autograder on submissions

def test_the_reference_gets_full_marks_with_hidden_entries(exported, tmp_path):
    root = autograder_root(exported, tmp_path)
    (root / "submission").symlink_to(ROOT, target_is_directory=True)  # the repository itself, as submitted
    results, stdout = run_autograder(root)
    visible, hidden = entries(results), hidden_entries(results)
    assert set(visible) == {e.id for e in CONV.exercises}
    for ex in CONV.exercises:
        assert visible[ex.id]["visibility"] == "visible"
        assert visible[ex.id]["score"] == visible[ex.id]["max_score"], visible[ex.id]["output"]
    assert set(hidden) == {"conv.im2col"}, "only conv.im2col has hidden tests"
    h, v = hidden["conv.im2col"], visible["conv.im2col"]
    assert h["visibility"] == "after_due_date" and h["score"] == h["max_score"] > 0
    assert v["max_score"] + h["max_score"] == pytest.approx(3)
    # the hidden tests weigh 1 + 2 against the visible tests' weight: the split follows the weights
    assert h["extra_data"]["weight"] == 3 and v["extra_data"]["weight"] >= 5
    assert h["max_score"] == pytest.approx(3 * 3 / (3 + v["extra_data"]["weight"]), abs=0.01)
    assert results["score"] == pytest.approx(CONV.points)
    assert "12 of 12 points" in results["output"] and "12 / 12" in stdout


def test_a_fresh_student_copy_gets_nothing(exported, tmp_path):
    root = autograder_root(exported, tmp_path / "root")
    course.make_student(root / "submission", source=ROOT, assignments=["2"], log=quiet)
    results, _ = run_autograder(root)
    assert results["score"] == 0
    for name, t in entries(results).items():
        assert t["score"] == 0 and t["max_score"] > 0 and t["status"] == "failed"
        assert "NotImplementedError" in t["output"] and f"{name}: " in t["output"], t["output"][:300]
    assert set(hidden_entries(results)) == {"conv.im2col"}


def test_an_endless_loop_costs_only_its_exercise(exported, tmp_path):
    root = autograder_root(exported, tmp_path / "root")
    sub = root / "submission" / "my-repo"  # a zip of the repository's folder: the code is one level down
    copy_code(ROOT, sub)
    functional = sub / "minires" / "functional.py"
    text = functional.read_text()
    node = course.markers.find_def(ast.parse(text), "Conv2dFunction.backward")
    lines = text.splitlines()
    first = node.body[0]
    indent = " " * first.col_offset
    lines.insert(first.lineno - 1, f"{indent}while True:  # an endless loop\n{indent}    pass")
    functional.write_text("\n".join(lines) + "\n")
    results, _ = run_autograder(root)
    visible = entries(results)
    looped = visible["conv.layer_backward"]
    assert looped["score"] == 0 and f"{TEST_TIMEOUT:g} s" in looped["output"], looped["output"][:500]
    for ex in CONV.exercises:
        if ex.id != "conv.layer_backward":
            assert visible[ex.id]["score"] == visible[ex.id]["max_score"], (ex.id, visible[ex.id]["output"][:300])
    assert results["score"] == pytest.approx(CONV.points - 1)


def test_a_submission_without_code_gets_zero_and_the_reason(exported, tmp_path):
    root = autograder_root(exported, tmp_path)
    (root / "submission").mkdir()
    (root / "submission" / "numpy_ref.py").write_text("def im2col(): pass\n")
    results, _ = run_autograder(root, timeout=120)
    assert results["score"] == 0 and "no minires/ folder" in results["output"]
    assert {t["name"].split(":")[0] for t in results["tests"]} == {e.id for e in CONV.exercises}


def test_grading_that_cannot_finish_still_writes_results(exported, tmp_path):
    root = autograder_root(exported, tmp_path)
    config_path = gradescope.source_dir(root) / gradescope.CONFIG
    config = json.loads(config_path.read_text())
    config["timeout"] = 3  # seconds per pytest run, and the submission hangs while it is imported
    config_path.write_text(json.dumps(config))
    copy_code(ROOT, root / "submission")
    init = root / "submission" / "minires" / "__init__.py"
    init.write_text("import time\ntime.sleep(60)\n" + init.read_text())
    results, _ = run_autograder(root, timeout=120)
    assert results["score"] == 0 and "longer than 3 s" in results["output"], results["output"]


def test_run_autograder_writes_results_even_without_python(exported, tmp_path):
    root = autograder_root(exported, tmp_path)
    (root / "submission").mkdir()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\nexit 3\n")
    (fake / "python3").chmod(0o755)
    env = clean_env(AUTOGRADER_ROOT=str(root))
    env["PATH"] = f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin"
    proc = subprocess.run([str(root / "run_autograder")], cwd=root, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    results = json.loads((root / "results" / "results.json").read_text())
    check_results(results)
    assert results["score"] == 0 and "exit status 3" in results["output"]


def test_the_notebook_alone_is_a_submission_for_the_experiment(exported, tmp_path):
    """Assignment 6 grades only the notebook: found anywhere in the submission, with the handout's code."""
    source = autograder_root(exported, tmp_path / "root") / "source" / "source"
    sub = tmp_path / "sub"
    (sub / "upload").mkdir(parents=True)
    shutil.copy2(ROOT / EXPERIMENT_NOTEBOOK, sub / "upload" / Path(EXPERIMENT_NOTEBOOK).name)
    notes = gradescope.build_tree(sub, source, tmp_path / "tree", [6])
    assert notes == []
    assert (tmp_path / "tree" / EXPERIMENT_NOTEBOOK).read_bytes() == (ROOT / EXPERIMENT_NOTEBOOK).read_bytes()
    assert (tmp_path / "tree" / "minires" / "__init__.py").is_file()
    with pytest.raises(gradescope.SubmissionError, match="no minires/ folder"):
        gradescope.build_tree(sub, source, tmp_path / "tree2", [2])
    for name in ("a", "b"):
        (sub / name / "minires").mkdir(parents=True)
        (sub / name / "minires" / "__init__.py").write_text("")
    with pytest.raises(gradescope.SubmissionError, match="more than one minires/"):
        gradescope.find_tree(sub)


def test_the_runtime_needs_only_the_standard_library_numpy_and_minires():
    """Gradescope runs these modules with minires installed: no YAML, no jsonschema, nothing else."""
    allowed = set(sys.stdlib_module_names) | {"numpy", "minires"}
    for module in (export, export_nbgrader, gradescope):
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{module.__name__} imports {name}"


def test_split_points_follows_the_weights():
    def t(name, outcome, weight=1, hidden=False):
        where = gradescope.HIDDEN_DIR if hidden else "tests/exercises"
        return {"test": f"{where}/test_x.py::{name}", "outcome": outcome, "weight": weight, "message": ""}
    tests = [t("a", "passed"), t("b", "failed", 3), t("c", "skipped"), t("h1", "passed", 2, True),
             t("h2", "failed", 2, True)]
    (kind_v, score_v, max_v, _), (kind_h, score_h, max_h, _) = gradescope.split_points(4, tests)
    assert (kind_v, kind_h) == ("visible", "hidden")
    assert (max_v, score_v) == (2.0, 0.5) and (max_h, score_h) == (2.0, 1.0)  # weights: visible 4, hidden 4
    [(kind, score, max_score, _)] = gradescope.split_points(2, [{"test": "x", "outcome": "passed"},
                                                                {"test": "y", "outcome": "failed"}])
    assert (kind, score, max_score) == ("visible", 1.0, 2.0)  # a missing weight counts 1
    [(_, score, max_score, _)] = gradescope.split_points(2, [t("s", "skipped")])
    assert (score, max_score) == (0.0, 2.0)


# ---------------------------------------------------------------- GitHub Classroom

def test_the_classroom_workflow_has_a_graded_step_per_exercise(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = export.export_classroom(tmp_path, ["1", "2", "5"], log=quiet)
    assert path == tmp_path / ".github" / "workflows" / "classroom.yml"
    workflow = yaml.safe_load(path.read_text())
    assert set(workflow["on"]) == {"push", "repository_dispatch"}
    assert workflow["permissions"]["checks"] == "write"
    [job] = workflow["jobs"].values()
    steps = job["steps"]
    graders = [s for s in steps if s.get("uses") == "classroom-resources/autograding-command-grader@v1"]
    chosen = [get_assignment(n) for n in (1, 2, 5)]
    assert [s["name"] for s in graders] == [e.id for a in chosen for e in a.exercises]
    for a in chosen:
        for ex in a.exercises:
            step = next(s for s in graders if s["name"] == ex.id)
            w = step["with"]
            assert set(w) == {"test-name", "setup-command", "command", "timeout", "max-score"}
            assert w["max-score"] == ex.points and isinstance(w["timeout"], int)
            assert f"--exercise {ex.id} " in w["command"] + " "
            extras = "[test,numba]" if a.number == 5 else "[test]"
            assert w["setup-command"] == f"python -m pip install -q -e '.{extras}'"
            assert ("NUMBA_ENABLE_CUDASIM=1 " in w["command"]) == (a.number == 5)
    ids = [s["id"] for s in graders]
    assert len(set(ids)) == len(ids)
    reporter = steps[-1]
    assert reporter["uses"] == "classroom-resources/autograding-grading-reporter@v1"
    assert reporter["with"]["runners"].split(",") == ids
    assert reporter["env"] == {f"{i.upper()}_RESULTS": f"${{{{steps.{i}.outputs.result}}}}" for i in ids}
    assert steps.index(reporter) > max(steps.index(s) for s in graders)


def test_every_classroom_command_selects_tests(tmp_path):
    """Each command of assignment 1, and one under the CUDA simulator, collects tests in the reference."""
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(export.export_classroom(tmp_path, ["1", "5"], log=quiet).read_text())
    commands = {s["name"]: s["with"]["command"] for s in next(iter(workflow["jobs"].values()))["steps"]
                if "command" in s.get("with", {})}
    chosen = [e.id for e in get_assignment(1).exercises]
    try:
        import numba.cuda  # noqa: F401
        chosen.append("gpu.im2col")
    except ImportError:  # numba is an optional extra: the simulator's command is checked where it is installed
        pass
    procs = {ex_id: subprocess.Popen(commands[ex_id] + " --collect-only -p no:cacheprovider", shell=True, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
             for ex_id in chosen}  # side by side: each is mostly start-up
    for ex_id, proc in procs.items():
        out = proc.communicate(timeout=300)[0]
        collected = [line for line in out.splitlines() if "::" in line]
        assert proc.returncode == 0 and collected, f"{ex_id}: {commands[ex_id]}\n{out[-1500:]}"


# ---------------------------------------------------------------- nbgrader

# nbgrader's cell metadata, version 3, as its documentation ("JSON Metadata Format") describes it
NBGRADER_SCHEMA = {
    "type": "object",
    "properties": {
        "schema_version": {"const": 3},
        "grade": {"type": "boolean"}, "solution": {"type": "boolean"}, "locked": {"type": "boolean"},
        "task": {"type": "boolean"},
        "grade_id": {"type": "string", "pattern": "^[a-zA-Z0-9_-]+$"},
        "points": {"type": "number", "minimum": 0},
        "checksum": {"type": "string"}, "cell_type": {"enum": ["raw", "code", "markdown"]},
    },
    "required": ["schema_version", "grade", "solution", "locked", "grade_id"],
    "additionalProperties": False,
}


def test_the_nbgrader_notebook_follows_nbgraders_metadata_rules(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    path = export_nbgrader.export_nbgrader(tmp_path, log=quiet)
    experiment = get_assignment(6)
    assert path == tmp_path / "source" / experiment.marker / Path(EXPERIMENT_NOTEBOOK).name
    nb = json.loads(path.read_text())
    ids, points = [], 0
    for cell in nb["cells"]:
        meta = cell["metadata"]["nbgrader"]
        jsonschema.validate(meta, NBGRADER_SCHEMA)
        ids.append(meta["grade_id"])
        assert ("points" in meta) == meta["grade"], "points only on graded cells"
        if "answer" in cell["metadata"].get("tags", []):
            assert cell["cell_type"] == "markdown"
            assert (meta["solution"], meta["grade"], meta["locked"]) == (True, True, False)
            points += meta["points"]
        else:
            assert (meta["solution"], meta["grade"], meta["locked"]) == (False, False, True)
        if cell["cell_type"] == "markdown":  # nbgrader: a markdown cell is graded exactly when it is a solution
            assert meta["grade"] == meta["solution"]
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    assert len(set(ids)) == len(ids), "grade_id must be unique"
    assert points == experiment.graded_by_hand
    assert sum(1 for c in nb["cells"] if c["metadata"]["nbgrader"]["grade"]) == 5
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.reads(json.dumps(nb), as_version=4))


def test_points_are_shared_out_whole():
    assert export_nbgrader.share_points(10, 5) == [2] * 5
    assert export_nbgrader.share_points(10, 3) == [4, 3, 3]


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("args, message", [
    (["gradescope", "{dest}", "--assignment", "9"], "no assignment '9'"),
    (["gradescope", "{dest}", "--test-timeout", "0"], "--test-timeout"),
    (["gradescope", "{dest}", "--hidden-tests", "{missing}"], "no hidden test file"),
    (["gradescope", "{dest}", "--assignment", "1", "--hidden-tests", "{hidden}"], "belongs to assignment 2"),
    (["gradescope", "{dest}", "--hidden-tests", "{unmarked}"], "marks no test"),
    (["gradescope", "{file}"], "is not a folder"),
    (["github-classroom", "{dest}", "--assignment", "conv2"], "no assignment 'conv2'"),
    (["nbgrader", "{file}"], "is not a folder"),
], ids=["assignment", "test-timeout", "missing", "other-assignment", "unmarked", "dest-file", "classroom",
        "nbgrader"])
def test_bad_options_are_usage_errors(tmp_path, capsys, args, message):
    (tmp_path / "hidden.py").write_text(HIDDEN_TEST)
    (tmp_path / "unmarked.py").write_text("def test_x():\n    pass\n")
    (tmp_path / "file").write_text("")
    names = {"dest": tmp_path / "out", "missing": tmp_path / "nope.py", "hidden": tmp_path / "hidden.py",
             "unmarked": tmp_path / "unmarked.py", "file": tmp_path / "file"}
    code = main(["exercises", "export"] + [a.format(**names) for a in args])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "minires exercises export: error:" in err, err
    assert not (tmp_path / "out").exists(), "nothing is written when an option is wrong"


def test_the_command_line_writes_the_workflow_and_the_notebook(tmp_path, capsys):
    assert main(["exercises", "export", "github-classroom", str(tmp_path), "--assignment", "conv"]) == 0
    assert (tmp_path / ".github" / "workflows" / "classroom.yml").is_file()
    assert main(["exercises", "export", "nbgrader", str(tmp_path)]) == 0
    assert (tmp_path / "source" / "experiment" / "06_experiment.ipynb").is_file()
    out = capsys.readouterr().out
    assert "6 autograding steps, 12 points" in out and "nbgrader generate_assignment experiment" in out
