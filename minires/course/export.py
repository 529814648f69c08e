"""Exports for grading platforms: a Gradescope autograder zip and a GitHub Classroom workflow.

``export_gradescope`` writes ``autograder.zip`` in Gradescope's autograder
format: ``setup.sh`` and ``run_autograder`` at its root, and in ``source/``
a student copy of the reference (so the image Gradescope builds holds no
reference solution), the tests, the instructor's hidden tests, and the
export's settings. On Gradescope, ``run_autograder`` runs
``minires.course.gradescope``, which grades the submission with ``grade``.

``export_classroom`` writes ``.github/workflows/classroom.yml``: one
``autograding-command-grader`` step per exercise, worth its points, and the
``autograding-grading-reporter`` step that sends the total to GitHub
Classroom. The YAML is written as text (no YAML library at run time).
"""
import ast
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..serialization import write_atomic
from .assignments import ASSIGNMENT_OF, ASSIGNMENTS, EXERCISES, extras_of, get_assignment
from .gradescope import CONFIG, HIDDEN_DIR, ZIP_SOURCE
from .student import check_copy, make_student

DEFAULT_TEST_TIMEOUT = 10    # seconds per test on Gradescope (the slowest reference test takes about one):
                             # one endless loop costs one test, and even a loop every test runs into fits
DEFAULT_TIMEOUT = 900        # seconds per pytest run on Gradescope (keep the assignment's own limit above)
CLASSROOM_WORKFLOW = ".github/workflows/classroom.yml"
COMMAND_GRADER = "classroom-resources/autograding-command-grader@v1"
GRADING_REPORTER = "classroom-resources/autograding-grading-reporter@v1"


def chosen_assignments(assignments=None):
    """The Assignment objects named by ``assignments`` (numbers or names; default: all), each once."""
    chosen = [get_assignment(k) for k in assignments] if assignments else list(ASSIGNMENTS)
    return list({a.number: a for a in chosen}.values())


def _check_dest(dest):
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"{dest} exists and is not a folder")
    return dest


# ---------------------------------------------------------------- Gradescope

def hidden_test_name(path):
    """Where a hidden test file goes in source/: a name no visible test file has (pytest needs unique names)."""
    stem = Path(path).stem
    return f"test_hidden_{stem[5:] if stem.startswith('test_') else stem}.py"


def check_hidden_test(path, chosen):
    """The exercise ids a hidden test file marks, or a ValueError saying why the grader could not count it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no hidden test file {path}")
    if path.suffix != ".py":
        raise ValueError(f"hidden test {path} is not a .py file")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"hidden test {path} is not valid Python ({exc})") from None
    ids = [node.args[0].value for node in ast.walk(tree)
           if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exercise"
           and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)]
    if not ids:
        raise ValueError(f"hidden test {path} marks no test with @pytest.mark.exercise(\"<id>\"): "
                         "the grader counts only tests marked with their exercise")
    numbers = {a.number for a in chosen}
    for ex_id in ids:
        if ex_id not in EXERCISES:
            raise ValueError(f"hidden test {path}: no exercise {ex_id!r}; `minires exercises list` shows them")
        if ASSIGNMENT_OF[ex_id].number not in numbers:
            raise ValueError(f"hidden test {path}: exercise {ex_id} belongs to assignment "
                             f"{ASSIGNMENT_OF[ex_id].number}, which this autograder does not grade "
                             f"(--assignment {', '.join(str(n) for n in sorted(numbers))})")
    return sorted(set(ids))


def check_gradescope(dest, assignments=None, hidden_tests=(), test_timeout=DEFAULT_TEST_TIMEOUT,
                     timeout=DEFAULT_TIMEOUT, source=None):
    """The export's options checked before any work: (assignments, source, {hidden file: name in source/})."""
    chosen = chosen_assignments(assignments)
    dest = _check_dest(dest)
    if test_timeout is not None and not test_timeout > 0:
        raise ValueError(f"--test-timeout must be a positive number of seconds, got {test_timeout}")
    if timeout < 1:
        raise ValueError(f"--timeout must be at least 1 second, got {timeout}")
    source, _ = check_copy(dest.resolve() / "autograder-source", source)  # a reference checkout, not a copy
    hidden = {}
    for path in hidden_tests or ():
        check_hidden_test(path, chosen)
        name = hidden_test_name(path)
        if name in hidden.values():
            raise ValueError(f"two hidden test files would both be {name}; rename one")
        hidden[Path(path)] = name
    return chosen, source, hidden


_HIDDEN_CONFTEST = '''"""The Gradescope autograder's hidden tests (put here by `minires exercises export gradescope`).

A hidden test needs only @pytest.mark.exercise("<id>"): this file adds the pytest marker
of the exercise's assignment (grade selects tests by it) and lets the tests import
exercise_helpers from tests/exercises, as the visible tests do.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minires.course.assignments import ASSIGNMENT_OF  # noqa: E402


def pytest_itemcollected(item):
    for mark in list(item.iter_markers("exercise")):
        if mark.args and mark.args[0] in ASSIGNMENT_OF:
            item.add_marker(ASSIGNMENT_OF[mark.args[0]].marker)
'''

_SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, while it builds the autograder's image (written by
# `minires exercises export gradescope` for assignment(s) {numbers}). It installs Python and, into a
# virtual environment, the zip's student copy (the handout: no reference solutions) with the
# test dependencies '[{extras}]'. AUTOGRADER_ROOT (default /autograder) moves it for a trial run.
set -euo pipefail
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q python3 python3-venv python3-pip
fi
python3 -m venv "$ROOT/venv"
"$ROOT/venv/bin/python" -m pip install -q --upgrade pip
"$ROOT/venv/bin/python" -m pip install -q "$ROOT/source/{zip_source}[{extras}]"
"$ROOT/venv/bin/python" -c "import minires.course.gradescope"
"""

_RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission (written by `minires exercises export gradescope`). It grades
# $ROOT/submission (the student's minires/ and kernels/) with the tests in the zip's source/ and writes
# $ROOT/results/results.json; if grading itself fails, it still writes one, with score 0 and the reason.
# ROOT is $AUTOGRADER_ROOT, or /autograder as on Gradescope (which unpacks the zip into $ROOT/source).
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
RESULTS="$ROOT/results/results.json"
LIMIT={limit}
mkdir -p "$ROOT/results"
rm -f "$RESULTS"
PY="$ROOT/venv/bin/python3"
if [ ! -x "$PY" ]; then PY="$(command -v python3 || true)"; fi
cd "$ROOT" || exit 0
status=0
if [ -z "$PY" ]; then
    status=127
elif command -v timeout >/dev/null 2>&1; then
    timeout -k 20 "$LIMIT" "$PY" -I -m minires.course.gradescope --root "$ROOT" || status=$?
else
    "$PY" -I -m minires.course.gradescope --root "$ROOT" || status=$?
fi
if [ ! -s "$RESULTS" ]; then
    why="it stopped (exit status $status) before writing its results; please tell the course staff"
    printf '{{"score": 0.0, "execution_time": %s, "visibility": "visible", "tests": [], "output": "%s"}}\\n' \\
        "$SECONDS" "The autograder could not grade this submission: $why." > "$RESULTS"
fi
exit 0
"""


def _zip_add(archive, name, data, executable=False):
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # a fixed date: the same export, the same zip
    info.external_attr = (0o100755 if executable else 0o100644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def gradescope_scripts(chosen, timeout=DEFAULT_TIMEOUT):
    """The texts of setup.sh and run_autograder for these assignments."""
    numbers = ", ".join(str(a.number) for a in chosen)
    return {"setup.sh": _SETUP_SH.format(numbers=numbers, extras=extras_of(chosen), zip_source=ZIP_SOURCE),
            "run_autograder": _RUN_AUTOGRADER.format(limit=run_limit(chosen, timeout))}


def run_limit(chosen, timeout=DEFAULT_TIMEOUT):
    """Seconds run_autograder allows the grader: each pytest run's limit, and two minutes to set up."""
    runs = any(a.marker != "gpu_kernel" for a in chosen) + any(a.marker == "gpu_kernel" for a in chosen)
    return runs * int(timeout) + 120


def export_gradescope(dest, assignments=None, hidden_tests=(), test_timeout=DEFAULT_TEST_TIMEOUT,
                      timeout=DEFAULT_TIMEOUT, source=None, log=print):
    """Write ``dest/autograder.zip``, a Gradescope autograder for the chosen assignments; returns its path."""
    chosen, source, hidden = check_gradescope(dest, assignments, hidden_tests, test_timeout, timeout, source)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "autograder.zip"
    with tempfile.TemporaryDirectory(prefix="minires-gradescope-") as tmp:
        copy = Path(tmp) / "source"
        make_student(copy, source=source, assignments=[str(a.number) for a in chosen], log=lambda *a: None)
        if not (copy / "minires" / "course" / "gradescope.py").is_file():
            raise RuntimeError(f"{source}: minires/course/gradescope.py is not among the files a copy takes "
                               "(git's tracked files); commit it first")
        if hidden:
            folder = copy / HIDDEN_DIR
            folder.mkdir(parents=True)
            (folder / "conftest.py").write_text(_HIDDEN_CONFTEST, encoding="utf-8")
            for path, name in hidden.items():
                shutil.copyfile(path, folder / name)
        config = {"minires_autograder": 1, "assignments": [a.number for a in chosen],
                  "test_timeout": test_timeout, "timeout": int(timeout),
                  "hidden_tests": sorted(f"{HIDDEN_DIR}/{name}" for name in hidden.values())}
        (copy / CONFIG).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        files = sorted(p for p in copy.rglob("*") if p.is_file())

        def write(f):
            with zipfile.ZipFile(f, "w") as archive:
                for name, text in gradescope_scripts(chosen, timeout).items():
                    _zip_add(archive, name, text.encode("utf-8"), executable=True)
                for p in files:
                    _zip_add(archive, f"{ZIP_SOURCE}/" + p.relative_to(copy).as_posix(), p.read_bytes(),
                             executable=os.access(p, os.X_OK))
        write_atomic(out, write)
    numbers = ", ".join(str(a.number) for a in chosen)
    log(f"wrote {out}: a Gradescope autograder for assignment(s) {numbers} "
        f"({sum(a.points for a in chosen)} points by tests; {len(hidden)} hidden test file(s); "
        + (f"at most {test_timeout:g} s per test)" if test_timeout else "no per-test time limit)"))
    log("  upload it as the assignment's autograder (Configure Autograder > Zip file upload); students "
        "submit their repository (GitHub, or a zip of the folder with minires/ and kernels/)")
    log(f"  set the autograder timeout on Gradescope to at least {-(-run_limit(chosen, timeout) // 60)} minutes "
        "(or export with a lower --timeout)")
    return out


# ---------------------------------------------------------------- GitHub Classroom

def step_id(ex_id):
    """A workflow step id for an exercise: letters, digits and '-' (conv.im2col -> conv-im2col)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", ex_id).strip("-").lower()


def exercise_command(ex_id):
    """The shell command that runs one exercise's tests; exit status 0 when they pass."""
    command = f"python -m pytest tests/exercises --exercise {ex_id} -q"
    if ASSIGNMENT_OF[ex_id].marker == "gpu_kernel":  # the kernels run under Numba's CUDA simulator
        command = "NUMBA_ENABLE_CUDASIM=1 " + command
    return command


def _q(text):
    """A YAML double-quoted scalar (a JSON string is one)."""
    return json.dumps(str(text))


def classroom_workflow(chosen, minutes=10, python="3.12"):
    """The text of classroom.yml: one command-grader step per exercise, then the reporter."""
    numbers = ", ".join(str(a.number) for a in chosen)
    lines = [
        f"# GitHub Classroom autograding for minires, assignment(s) {numbers}: one step per exercise, worth its",
        "# points when its tests pass (written by `minires exercises export github-classroom`).",
        "name: Autograding Tests",
        '"on":',
        "  - push",
        "  - repository_dispatch",
        "permissions:",
        "  checks: write",
        "  actions: read",
        "  contents: read",
        "jobs:",
        "  run-autograding-tests:",
        "    runs-on: ubuntu-latest",
        "    if: " + _q("github.actor != 'github-classroom[bot]'"),
        "    steps:",
        "      - name: Checkout code",
        "        uses: actions/checkout@v4",
        "      - name: Set up Python",
        "        uses: actions/setup-python@v5",
        "        with:",
        f"          python-version: {_q(python)}",
    ]
    ids = []
    for a in chosen:
        setup = f"python -m pip install -q -e '.[{extras_of([a])}]'"
        for ex in a.exercises:
            ids.append(step_id(ex.id))
            lines += [
                f"      - name: {_q(ex.id)}",
                f"        id: {ids[-1]}",
                f"        uses: {COMMAND_GRADER}",
                "        with:",
                f"          test-name: {_q(f'{ex.id}: {ex.title}')}",
                f"          setup-command: {_q(setup)}",
                f"          command: {_q(exercise_command(ex.id))}",
                f"          timeout: {int(minutes)}",
                f"          max-score: {int(ex.points)}",
            ]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"two exercises share a workflow step id: {ids}")
    lines += ["      - name: Autograding Reporter",
              f"        uses: {GRADING_REPORTER}",
              "        env:"]
    lines += [f"          {i.upper()}_RESULTS: {_q('${{steps.' + i + '.outputs.result}}')}" for i in ids]
    lines += ["        with:",
              f"          runners: {_q(','.join(ids))}"]
    return "\n".join(lines) + "\n"


def check_classroom(dest, assignments=None):
    """The options of the GitHub Classroom export, checked before anything is written."""
    chosen = chosen_assignments(assignments)
    fractional = [e.id for a in chosen for e in a.exercises if e.points != int(e.points)]
    if fractional:
        raise ValueError(f"GitHub Classroom scores whole points; {', '.join(fractional)} have fractions")
    return chosen, _check_dest(dest)


def export_classroom(dest, assignments=None, log=print):
    """Write ``dest/.github/workflows/classroom.yml`` for the chosen assignments; returns its path."""
    chosen, dest = check_classroom(dest, assignments)
    out = dest / CLASSROOM_WORKFLOW
    out.parent.mkdir(parents=True, exist_ok=True)
    text = classroom_workflow(chosen)
    write_atomic(out, lambda f: f.write(text.encode("utf-8")))
    steps = sum(len(a.exercises) for a in chosen)
    log(f"wrote {out}: {steps} autograding steps, {sum(a.points for a in chosen)} points")
    if not (dest / "tests" / "exercises").is_dir():
        log(f"  note: {dest} has no tests/exercises; put the workflow into the student copy "
            "(`minires exercises make-student`) that is the assignment's template repository")
    return out
