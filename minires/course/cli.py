"""``minires exercises``: list the assignments, make a student copy, grade one."""
import os

from .assignments import ASSIGNMENTS, EXERCISES, select
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
    make_student(args.out_dir, source=args.source, assignments=args.assignment, exercises=args.exercise)


def _check_grade_cli(args):
    """The options' errors before any test runs: the command line reports them as usage errors."""
    select(args.assignment)
    if not os.path.isdir(args.dir):
        raise FileNotFoundError(f"no folder {args.dir}")
    if args.timeout < 1:
        raise ValueError(f"--timeout must be at least 1 second, got {args.timeout}")


def _grade_cli(args):
    grade(args.dir, assignments=args.assignment, json_path=args.json, timeout=args.timeout)


def add_exercises_parser(subparsers):
    """Register ``minires exercises`` (list, make-student, grade) on the ``minires`` command's subparsers."""
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
    q.set_defaults(check=_check_make_student_cli, run=_make_student_cli)

    q = sub.add_parser("grade", help="run a copy's exercise tests and count the points",
                       description="Run the exercise tests of DIR (tests/exercises) in a fresh pytest "
                                   "process against DIR's own code, print passed tests and points per "
                                   "exercise and write a JSON report. Exits 0 whatever the score.")
    q.add_argument("dir", nargs="?", default=".", help="the student copy (default: the current folder)")
    q.add_argument("--assignment", action="append", metavar="N", help="grade only assignment N; repeat for more")
    q.add_argument("--json", help="where to write the report (default: DIR/grade.json)")
    q.add_argument("--timeout", type=int, default=900, help="seconds allowed per pytest run (default 900)")
    q.set_defaults(check=_check_grade_cli, run=_grade_cli)
    return p
