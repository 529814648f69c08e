"""Grading: run a copy's exercise tests in a fresh pytest process and count the points per exercise.

The tests run against DIR's own code: a temporary import root whose
``minires`` package is DIR's (and ``minires.kernels`` DIR/kernels), checked
afterwards, so an installed minires cannot stand in for the student's. The
grader's own ``pytest_plugin`` records each test's outcome and exercise.
Student code runs only in that child: the grader reads the copy's manifest
without executing it, and checks the child's record before trusting it.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from ..serialization import write_atomic
from .assignments import ANSWER_PLACEHOLDER, ASSIGNMENTS, EXPERIMENT_NOTEBOOK, get_assignment
from .manifest import read_manifest

# The child pytest loads this package's plugin under a private top-level name, from a folder of its
# own: DIR's minires (another copy, perhaps older or edited) neither provides nor shadows it.
_PLUGIN_FILE = Path(__file__).resolve().with_name("pytest_plugin.py")
_PLUGIN_NAME = "_minires_grade_plugin"


def import_root(directory, root):
    """Make ``root`` an import root whose ``minires`` package is DIR's, ``minires.kernels`` DIR/kernels."""
    package = root / "minires"
    package.mkdir()
    for entry in sorted((directory / "minires").iterdir()):
        if entry.name in ("__pycache__", "kernels"):
            continue
        _link(entry, package / entry.name)
    _link(directory / "kernels", package / "kernels")


def _link(src, dst):
    try:
        os.symlink(src, dst, target_is_directory=src.is_dir())
    except (OSError, NotImplementedError):
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)


def _run_pytest(directory, stage, plugin_dir, args, extra_env, timeout):
    """One pytest process over DIR's exercise tests; returns the plugin's record."""
    out_file = Path(plugin_dir) / f"result-{len(os.listdir(plugin_dir))}.json"
    env = dict(os.environ)
    for key in ("NUMBA_ENABLE_CUDASIM", "MINIRES_KERNELS", "PYTEST_ADDOPTS"):
        env.pop(key, None)
    env.update(extra_env)
    env["MINIRES_GRADE_OUT"] = str(out_file)
    env["PYTHONPATH"] = os.pathsep.join([str(stage), str(plugin_dir)])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [sys.executable, "-m", "pytest", str(directory / "tests" / "exercises"), "-q", "-p", "no:cacheprovider",
           "-p", _PLUGIN_NAME, "-o", "addopts=", "--rootdir", str(directory)]
    if (directory / "pyproject.toml").is_file():
        cmd += ["-c", str(directory / "pyproject.toml")]
    cmd += args
    try:
        proc = subprocess.run(cmd, cwd=stage, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the exercise tests ran longer than {timeout} s; an endless loop?") from None
    if not out_file.exists():
        tail = (proc.stdout[-2000:] + proc.stderr[-2000:]).strip()
        raise RuntimeError(f"pytest did not run the exercise tests (exit {proc.returncode}):\n{tail}")
    try:
        record = json.loads(out_file.read_text(encoding="utf-8"))
        well_formed = (isinstance(record, dict) and isinstance(record.get("modules"), dict)
                       and isinstance(record.get("results"), dict)
                       and all(isinstance(r, dict) and {"outcome", "exercise", "message"} <= r.keys()
                               for r in record["results"].values()))
    except (ValueError, OSError):
        well_formed = False
    if not well_formed:  # the child runs the student's code, which could have written anything there
        raise RuntimeError(f"the exercise tests' record {out_file.name} is damaged (exit {proc.returncode}); "
                           "did a test write to it?")
    record["output"] = proc.stdout[-4000:]
    return record


def _check_imports(directory, modules):
    """Raise unless every minires module the tests imported comes from DIR."""
    real = Path(os.path.realpath(directory))
    foreign = {n: f for n, f in modules.items() if f and real not in Path(f).parents}
    if foreign:
        name, path = sorted(foreign.items())[0]
        raise RuntimeError(f"the tests imported {name} from {path}, not from {directory}; "
                           "grading would not test this copy")


def answered_questions(directory):
    """(answer cells filled, answer cells) of the experiment notebook in DIR, or None if it is missing."""
    path = Path(directory) / EXPERIMENT_NOTEBOOK
    if not path.is_file():
        return None
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (ValueError, OSError):
        return None
    answers = [c for c in cells if "answer" in c.get("metadata", {}).get("tags", [])]
    filled = sum(1 for c in answers if "".join(c.get("source", "")).strip() not in ("", ANSWER_PLACEHOLDER))
    return filled, len(answers)


def _removed(ex, manifest):
    """True when the student copy described by ``manifest`` removed exercise ``ex``'s code without handing it out."""
    if not manifest or "error" in manifest or ex.id in manifest["exercises"] or not ex.where:
        return False
    return ex.file in manifest["removed_modules"] or ex.where in manifest["removed_functions"].get(ex.file, ())


def weight(tests):
    """The summed weight of report ``tests`` (a test without one weighs 1)."""
    return sum(t.get("weight", 1) for t in tests)


def counted(tests):
    """The tests that count for the points: all but the skipped ones."""
    return [t for t in tests if t["outcome"] != "skipped"]


def passed(tests):
    return [t for t in tests if t["outcome"] == "passed"]


def _score(ex, tests):
    """An exercise's points times the weight share of its passed tests (skipped tests do not count)."""
    total = weight(counted(tests))
    return round(ex.points * weight(passed(tests)) / total, 2) if total else 0.0


def _problem(ex, tests, removed):
    """The first thing a student should look at for this exercise: (test name, message)."""
    if removed:
        return "", "removed from this student copy (not handed out): left out of the total"
    if not tests:
        return "", "no tests found"
    bad = next((t for t in tests if t["outcome"] in ("failed", "error")), None)
    if bad is not None:
        return bad["test"].rsplit("::", 1)[-1], bad["message"]
    if all(t["outcome"] == "skipped" for t in tests):
        return tests[0]["test"].rsplit("::", 1)[-1], "all skipped: " + tests[0]["message"]
    return "", ""


def _default_assignments(manifest):
    """A student copy is graded on the assignments it was made for; the reference on all of them."""
    if manifest and "error" not in manifest and manifest["assignments"]:
        return [get_assignment(n) for n in manifest["assignments"]]
    return list(ASSIGNMENTS)


def grade(directory=".", assignments=None, json_path=None, timeout=900, log=print, test_timeout=None):
    """Run DIR's exercise tests, print passed tests and points per exercise, write a JSON report; returns it.

    By default a student copy is graded on the assignments it hands out. An
    exercise the copy removed without handing it out is shown and left out of
    the total. ``test_timeout``: seconds allowed per test (one endless loop
    then costs one test); ``timeout``: seconds allowed per pytest run.
    """
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise FileNotFoundError(f"no folder {directory}")
    for need in ("minires", "kernels", "tests/exercises"):
        if not (directory / need).is_dir():
            raise FileNotFoundError(f"{directory} has no {need}/: not a minires source tree or student copy")
    manifest = read_manifest(directory)
    chosen = [get_assignment(k) for k in assignments] if assignments else _default_assignments(manifest)
    cpu_markers = [a.marker for a in chosen if a.marker != "gpu_kernel"]
    limit = {"MINIRES_GRADE_TEST_TIMEOUT": str(test_timeout)} if test_timeout else {}
    results, started = {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="minires-grade-") as tmp:
        stage, plugin_dir = Path(tmp) / "stage", Path(tmp) / "plugin"
        stage.mkdir()
        plugin_dir.mkdir()
        _link(_PLUGIN_FILE, plugin_dir / f"{_PLUGIN_NAME}.py")
        import_root(directory, stage)
        runs = []
        if cpu_markers:
            runs.append((["-m", " or ".join(cpu_markers)], dict(limit)))
        if any(a.marker == "gpu_kernel" for a in chosen):
            runs.append((["-m", "gpu_kernel"], dict(limit, NUMBA_ENABLE_CUDASIM="1")))
        for args, env in runs:
            record = _run_pytest(directory, stage, plugin_dir, args, env, timeout)
            _check_imports(directory, record["modules"])
            for nodeid, result in record["results"].items():
                if result["outcome"] != "not run" or nodeid not in results:
                    results[nodeid] = result

    report = {"minires_grade": 2, "directory": str(directory),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.perf_counter() - started, 1),
              "student_copy": manifest, "exercises": [], "assignments": []}
    total = possible = by_hand = 0.0
    rows, problems = [], []
    for a in chosen:
        a_points = a_possible = 0.0
        for ex in a.exercises:
            tests = [dict(test=k, **v) for k, v in sorted(results.items()) if v["exercise"] == ex.id]
            removed = _removed(ex, manifest)
            points = _score(ex, tests)
            outcomes = {o: sum(t["outcome"] in group for t in tests)
                        for o, group in (("passed", ("passed",)), ("failed", ("failed", "error")),
                                         ("skipped", ("skipped",)))}
            test_name, problem = _problem(ex, tests, removed)
            if not removed:
                a_points += points
                a_possible += ex.points
            report["exercises"].append({
                "id": ex.id, "assignment": a.number, "points": 0.0 if removed else points,
                "points_possible": 0 if removed else ex.points, "removed": removed, **outcomes,
                "total": len(tests), "tests": tests})
            shown = "removed" if removed else f"{points:g} / {ex.points}"
            rows.append((ex.id, outcomes["passed"], outcomes["failed"], outcomes["skipped"], shown))
            if problem:
                problems.append((ex.id, test_name, problem))
        entry = {"number": a.number, "name": a.marker, "points": round(a_points, 2), "points_possible": a_possible,
                 "graded_by_hand": a.graded_by_hand}
        if a.graded_by_hand:
            entry["answers"] = answered_questions(directory)
        report["assignments"].append(entry)
        total += a_points
        possible += a_possible
        by_hand += a.graded_by_hand
    report["total"] = {"points": round(total, 2), "points_possible": possible, "graded_by_hand": by_hand}
    _print_report(report, rows, problems, log)
    json_path = Path(json_path) if json_path else directory / "grade.json"
    text = json.dumps(report, indent=1) + "\n"
    write_atomic(json_path, lambda f: f.write(text.encode("utf-8")))  # an old report survives a crash
    log(f"report: {json_path}")
    return report


def _print_report(report, rows, problems, log):
    """The table (passed, failed and skipped tests apart; points), then each exercise's first problem in full."""
    width = max([len(r[0]) for r in rows] + [len("exercise")])
    log(f"{'exercise':<{width}}  {'passed':>6}  {'failed':>6}  {'skipped':>7}  {'points':>11}")
    for ex_id, n_passed, n_failed, n_skipped, points in rows:
        log(f"{ex_id:<{width}}  {n_passed:>6}  {n_failed:>6}  {n_skipped:>7}  {points:>11}")
    for entry in report["assignments"]:
        if entry["graded_by_hand"]:
            answers = entry.get("answers")
            filled = (f"{answers[0]} of {answers[1]} answer cells filled" if answers
                      else f"{EXPERIMENT_NOTEBOOK} not found")
            log(f"assignment {entry['number']} ({entry['name']}): {entry['graded_by_hand']:g} points "
                f"graded by hand, not counted here ({filled})")
    t = report["total"]
    log(f"{'total':<{width}}  {'':>6}  {'':>6}  {'':>7}  {t['points']:g} / {t['points_possible']:g}" +
        (f"  (+ {t['graded_by_hand']:g} points graded by hand)" if t["graded_by_hand"] else ""))
    if problems:
        log("\nfirst problem of each exercise:")
        for ex_id, test_name, problem in problems:
            log(f"  {ex_id}" + (f" ({test_name})" if test_name else "") + ":")
            log(textwrap.fill(" ".join(problem.split()), width=100, initial_indent="      ",
                              subsequent_indent="      ", break_on_hyphens=False, max_lines=6, placeholder=" [...]"))
