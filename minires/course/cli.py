"""``minires exercises``: list the assignments, make a student copy, grade one, export for a grading platform."""
import os

from .assignments import ASSIGNMENTS, EXERCISES, select
from .export import (DEFAULT_TEST_TIMEOUT, DEFAULT_TIMEOUT, check_classroom, check_gradescope, export_classroom,
                     export_gradescope)
from .export_nbgrader import check_nbgrader, export_nbgrader
from .grading import grade
from .student import check_copy, make_student


def list_exercises(log=print):
    """Print the assignments, their exercises and points."""
    width = max(len(e) for e in EXERCISES)
    for a in ASSIGNMENTS:
        log(f"Assignment {a.number}: {a.title}  [pytest -m {a.marker}]  handout: {a.handout}")
        for e in a.exercises:
            where = f"{e.file}" + (f"  {e.where}" if e.where else "")
            log(f"  {e.id:<{width}}  {e.points:>2} pts  {where}  ({e.title})")
        hand = f" + {a.graded_by_hand} points graded by hand" if a.graded_by_hand else ""
        log(f"  {'':<{width}}  {a.points:>2} pts in all{hand}")
    tests = sum(a.points for a in ASSIGNMENTS)
    hand = sum(a.graded_by_hand for a in ASSIGNMENTS)
    log(f"Total: {tests + hand} points ({tests} by tests, {hand} by hand)")


def _list_cli(args):
    list_exercises()


def _check_make_student_cli(args):
    """The options' errors before anything is copied, in make_student's order: usage errors on the command line."""
    select(args.assignment, args.exercise)
    check_copy(args.out_dir, args.source)


def _make_student_cli(args):
    make_student(args.out_dir, source=args.source, assignments=args.assignment, exercises=args.exercise,
                 solved=args.solved)


def _check_grade_cli(args):
    """The options' errors before any test runs: the command line reports them as usage errors."""
    select(args.assignment)
    if not os.path.isdir(args.dir):
        raise FileNotFoundError(f"no folder {args.dir}")
    if args.timeout < 1:
        raise ValueError(f"--timeout must be at least 1 second, got {args.timeout}")
    if args.test_timeout is not None and args.test_timeout <= 0:
        raise ValueError(f"--test-timeout must be a positive number of seconds, got {args.test_timeout}")


def _grade_cli(args):
    grade(args.dir, assignments=args.assignment, json_path=args.json, timeout=args.timeout,
          test_timeout=args.test_timeout)


def add_exercises_parser(subparsers):
    """Register ``minires exercises`` (list, make-student, grade, export) on the ``minires`` command's subparsers."""
    p = subparsers.add_parser("exercises", help="course assignments: list them, make a student copy, grade one",
                              description="Exercises are marked in the reference source with "
                                          "'# BEGIN EXERCISE <id>' ... '# END EXERCISE'. A student copy "
                                          "replaces the chosen ones by a NotImplementedError; grade runs "
                                          "their tests (tests/exercises) and counts the points.")
    sub = p.add_subparsers(dest="exercises_command", required=True)

    q = sub.add_parser("list", help="the assignments, their exercises and points")
    q.set_defaults(run=_list_cli)

    q = sub.add_parser("make-student", help="write a student copy with the chosen exercises cut out",
                       description="Copy the repository's tracked files (no git history) to OUT_DIR, replace "
                                   "the chosen exercises' code by raise NotImplementedError(\"<id>: <hint>\"), "
                                   "blank the other places that would show their solutions, and strip the "
                                   "outputs of every notebook.")
    q.add_argument("out_dir", help="a new (or empty) folder for the copy")
    q.add_argument("--assignment", action="append", metavar="N",
                   help="hand out assignment N (a number or a name such as conv); repeat for more "
                        "(default: every assignment)")
    q.add_argument("--exercise", action="append", metavar="ID", help="hand out one exercise, e.g. conv.im2col")
    q.add_argument("--source", help="the reference repository (default: the checkout minires is installed from)")
    q.add_argument("--solved", action="store_true",
                   help="keep the solutions in the handed-out blocks (all else as in the student copy): "
                        "the copy a student who solved everything hands in, to check that it passes its tests")
    q.set_defaults(check=_check_make_student_cli, run=_make_student_cli)

    q = sub.add_parser("grade", help="run a copy's exercise tests and count the points",
                       description="Run the exercise tests of DIR (tests/exercises) in a fresh pytest "
                                   "process against DIR's own code, print passed tests and points per "
                                   "exercise and write a JSON report. Exits 0 whatever the score.")
    q.add_argument("dir", nargs="?", default=".", help="the student copy (default: the current folder)")
    q.add_argument("--assignment", action="append", metavar="N",
                   help="grade assignment N; repeat for more (default: those the student copy was made for; "
                        "in the reference, all)")
    q.add_argument("--json", help="where to write the report (default: DIR/grade.json)")
    q.add_argument("--timeout", type=int, default=900, help="seconds allowed per pytest run (default 900)")
    q.add_argument("--test-timeout", type=float, metavar="S",
                   help="seconds allowed per test: a longer one fails, the others still count (default: no limit)")
    q.set_defaults(check=_check_grade_cli, run=_grade_cli)
    _add_export_parser(sub)
    return p


# ---------------------------------------------------------------- export

def _check_gradescope_cli(args):
    check_gradescope(args.dest, args.assignment, args.hidden_tests, args.test_timeout, args.timeout)


def _gradescope_cli(args):
    export_gradescope(args.dest, args.assignment, args.hidden_tests, args.test_timeout, args.timeout)


def _check_classroom_cli(args):
    check_classroom(args.dest, args.assignment)


def _classroom_cli(args):
    export_classroom(args.dest, args.assignment)


def _check_nbgrader_cli(args):
    check_nbgrader(args.dest)


def _nbgrader_cli(args):
    export_nbgrader(args.dest)


def _add_export_parser(sub):
    """``minires exercises export gradescope | github-classroom | nbgrader``."""
    p = sub.add_parser("export", help="grading on Gradescope, GitHub Classroom or nbgrader",
                       description="Write what a grading platform needs to grade the assignments: a Gradescope "
                                   "autograder zip, a GitHub Classroom workflow, or the experiment notebook "
                                   "as an nbgrader assignment.")
    kinds = p.add_subparsers(dest="export_kind", metavar="{gradescope,github-classroom,nbgrader}", required=True)
    assignment_help = "export assignment N (a number or a name such as conv); repeat for more (default: all)"

    q = kinds.add_parser("gradescope", help="DEST/autograder.zip: a Gradescope autograder",
                         description="Write DEST/autograder.zip in Gradescope's autograder format: setup.sh "
                                     "installs a student copy of the chosen assignments (no reference "
                                     "solutions) with its test dependencies; run_autograder grades the "
                                     "submission's minires/ and kernels/ with the exercise tests (and the "
                                     "hidden tests) and writes results/results.json, one entry per exercise.")
    q.add_argument("dest", help="the folder to write autograder.zip into (made if missing)")
    q.add_argument("--assignment", action="append", metavar="N", help=assignment_help)
    q.add_argument("--hidden-tests", action="extend", nargs="+", default=[], metavar="FILE",
                   help="test files graded but not handed out, each test marked @pytest.mark.exercise(ID); "
                        "their results are separate entries, shown after the due date")
    q.add_argument("--test-timeout", type=float, default=DEFAULT_TEST_TIMEOUT, metavar="S",
                   help=f"seconds allowed per test; a longer one fails (default {DEFAULT_TEST_TIMEOUT})")
    q.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds allowed per pytest run (default {DEFAULT_TIMEOUT}); keep Gradescope's "
                        "autograder timeout above it")
    q.set_defaults(check=_check_gradescope_cli, run=_gradescope_cli)

    q = kinds.add_parser("github-classroom", help="DEST/.github/workflows/classroom.yml for GitHub Classroom",
                         description="Write DEST/.github/workflows/classroom.yml (DEST: the student copy that is "
                                     "the assignment's template repository): one autograding step per exercise, "
                                     "worth its points when its tests pass, and the step that reports to "
                                     "GitHub Classroom.")
    q.add_argument("dest", help="the template repository's folder")
    q.add_argument("--assignment", action="append", metavar="N", help=assignment_help)
    q.set_defaults(check=_check_classroom_cli, run=_classroom_cli)

    q = kinds.add_parser("nbgrader", help="the experiment notebook as an nbgrader assignment",
                         description="Write DEST/source/experiment/06_experiment.ipynb with nbgrader's cell "
                                     "metadata: the answer cells graded by hand (the assignment's points shared "
                                     "out), the other cells read-only. DEST is an nbgrader course folder.")
    q.add_argument("dest", help="the nbgrader course folder")
    q.set_defaults(check=_check_nbgrader_cli, run=_nbgrader_cli)
