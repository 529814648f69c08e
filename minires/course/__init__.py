"""Course tooling: exercises marked in the reference code, student copies, and a grader.

It sits beside the library, not on the learner's path: it reads minires's
source as text and runs its tests, and nothing in the library imports it.

- ``assignments``: the table of assignments, exercises, points, and the other
  spots that would show each solution.
- ``markers``: the ``# BEGIN EXERCISE`` ... ``# END EXERCISE`` comments, parsed
  and checked against the table (the syntax is in its docstring).
- ``tree``: which files of the reference a copy starts from.
- ``student``: ``make_student``, a copy with the chosen exercises cut out.
- ``manifest``: the record a copy keeps of what it leaves out;
  ``handed_out()`` and ``is_removed()`` read it (tests skip what was removed).
- ``grading`` and ``pytest_plugin``: ``grade``, the copy's exercise tests in a
  fresh pytest process, points per exercise.
- ``cli``: ``minires exercises list | make-student | grade``.
"""
from .assignments import ASSIGNMENTS, EXERCISES, Assignment, Exercise, get_assignment, select
from .grading import grade
from .manifest import handed_out, is_removed, student_copy
from .markers import MarkerError, parse_blocks, scan
from .student import make_student, transform_source

__all__ = ["ASSIGNMENTS", "EXERCISES", "Assignment", "Exercise", "MarkerError", "get_assignment", "grade",
           "handed_out", "is_removed", "make_student", "parse_blocks", "scan", "select", "student_copy",
           "transform_source"]
