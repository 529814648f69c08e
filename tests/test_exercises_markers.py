"""The exercise markers: parsing, the errors for malformed ones, the student version of a source, the registry."""
import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from minires import course
from minires.course import MarkerError, parse_blocks, transform_source, tree
from minires.course.manifest import MANIFEST
from minires.course.student import strip_notebook

ROOT = Path(__file__).resolve().parent.parent
MARKERS = {"demo.whole": "demo", "demo.tail": "demo", "demo.other": "demo"}


def src(text):
    return textwrap.dedent(text).lstrip("\n")


WHOLE = src('''
    def area(w, h):
        """The area of a w x h rectangle."""
        # BEGIN EXERCISE demo.whole
        # HINT: multiply the sides
        # HINT: (both are numbers)
        result = w * h
        return result
        # END EXERCISE


    def perimeter(w, h):
        # BEGIN EXERCISE demo.other
        return 2 * (w + h)
        # END EXERCISE
''')


def load(text, name="demo"):
    namespace = {}
    exec(compile(text, f"{name}.py", "exec"), namespace)
    return namespace


# ---------------------------------------------------------------- parsing

def test_a_block_is_parsed_with_its_hints_and_lines():
    blocks = parse_blocks(WHOLE, "demo.py")
    assert [b.id for b in blocks] == ["demo.whole", "demo.other"]
    b = blocks[0]
    assert (b.begin, b.hint_end, b.end, b.indent) == (3, 5, 8, "    ")
    assert b.hints == ["multiply the sides", "(both are numbers)"]
    assert blocks[1].hints == []


def test_markers_inside_strings_are_not_markers():
    text = src('''
        EXAMPLE = """
        # BEGIN EXERCISE demo.whole
        x = 1
        """
        def f():
            return "# END EXERCISE"
    ''')
    assert parse_blocks(text, "demo.py") == []


@pytest.mark.parametrize("text, line, words", [
    ("""
     def f():
         # BEGIN EXERCISE demo.whole
         x = 1
         # BEGIN EXERCISE demo.other
         y = 2
         # END EXERCISE
         # END EXERCISE
     """, 4, "cannot nest"),
    ("""
     def f():
         # BEGIN EXERCISE demo.whole
         return 1
     """, 2, "never closed"),
    ("""
     def f():
         return 1
         # END EXERCISE
     """, 3, "without a BEGIN"),
    ("""
     def f():
         # BEGIN EXERCISE Demo Whole
         return 1
         # END EXERCISE
     """, 2, "needs an id"),
    ("""
     def f():
         # BEGIN EXERCISE demo.whole
         return 1
         # END EXERCISE demo.other
     """, 4, "closes exercise demo.whole"),
    ("""
     def f():
         # BEGIN EXERCISE demo.whole
         return 1
     # END EXERCISE
     """, 4, "indented"),
    ("""
     def f():
         # BEGIN EXERCISE demo.whole
         x = 1
         # HINT: too late
         return x
         # END EXERCISE
     """, 4, "must follow its BEGIN"),
    ("""
     def f():
         # BEGIN EXERCISE demo.whole
         # HINT: nothing below
         # END EXERCISE
     """, 2, "holds no code"),
    ("""
     def f():
         # begin exercise demo.whole
         return 1
     """, 2, "malformed marker"),
    ("""
     def f(a):
         total = max(a,
         # BEGIN EXERCISE demo.whole
                     2)
         # END EXERCISE
         return total
     """, 3, "splits the statement"),
    ("""
     def f(a):
         if a:
             # BEGIN EXERCISE demo.whole
             x = 1
         else:
             x = 2
             # END EXERCISE
         return x
     """, 5, "indented less than its BEGIN"),
])
def test_malformed_markers_name_the_file_and_line(text, line, words):
    with pytest.raises(MarkerError) as info:
        parse_blocks(src(text), "pkg/mod.py")
    message = str(info.value)
    assert message.startswith(f"pkg/mod.py:{line}:"), message
    assert words in message, message


def test_an_id_marked_twice_names_both_places(tmp_path):
    for name in ("a.py", "b.py"):
        (tmp_path / "minires").mkdir(exist_ok=True)
        (tmp_path / "minires" / name).write_text(src('''
            def f():
                # BEGIN EXERCISE conv.im2col
                return 1
                # END EXERCISE
        '''))
    with pytest.raises(MarkerError, match=r"minires/b.py:2: exercise conv.im2col is marked twice \(first at "
                                          r"minires/a.py:2\)"):
        course.scan(tmp_path, ["minires/a.py", "minires/b.py"])


def test_an_unregistered_id_is_refused(tmp_path):
    (tmp_path / "minires").mkdir()
    (tmp_path / "minires" / "a.py").write_text(WHOLE)
    with pytest.raises(MarkerError, match=r"minires/a.py:3: exercise demo.whole is not registered"):
        course.scan(tmp_path, ["minires/a.py"])


# ---------------------------------------------------------------- the student version

def test_a_handed_out_block_becomes_a_raise_with_the_hints():
    out = transform_source(WHOLE, "demo.py", {"demo.whole"}, MARKERS)
    assert "w * h" not in out and "result" not in out
    assert "# EXERCISE demo.whole" in out and "# HINT: multiply the sides" in out
    assert "BEGIN EXERCISE" not in out and "END EXERCISE" not in out
    ns = load(out)
    with pytest.raises(NotImplementedError, match=r"^demo\.whole: multiply the sides \(both are numbers\)$"):
        ns["area"](2, 3)
    assert ns["perimeter"](2, 3) == 10  # not handed out: intact, its markers gone
    assert ast.get_docstring(ast.parse(out).body[0]) == "The area of a w x h rectangle."


def test_a_block_in_the_middle_of_a_function_keeps_the_rest():
    text = src('''
        class Op:
            def forward(self, x, training):
                self.training = training
                if training:
                    # BEGIN EXERCISE demo.tail
                    # HINT: the mean of x
                    mean = sum(x) / len(x)
                    # END EXERCISE
                else:
                    mean = 0.0
                return [v - mean for v in x]
    ''')
    out = transform_source(text, "demo.py", {"demo.tail"}, MARKERS)
    lines = out.splitlines()
    raise_line = next(line for line in lines if "raise NotImplementedError" in line)
    assert re.match(r"^ {12}raise", raise_line), raise_line  # the indentation of the if body
    ns = load(out)
    assert ns["Op"]().forward([1.0, 3.0], training=False) == [1.0, 3.0]
    with pytest.raises(NotImplementedError, match="demo.tail: the mean of x"):
        ns["Op"]().forward([1.0, 3.0], training=True)


def test_the_reference_version_is_the_source_without_marker_lines():
    out = transform_source(WHOLE, "demo.py", set(), MARKERS)
    kept = [line for line in WHOLE.splitlines() if not re.match(r"\s*# (BEGIN|END) EXERCISE|\s*# HINT:", line)]
    assert out.splitlines() == kept
    assert load(out)["area"](2, 3) == 6


def test_removed_functions_and_cut_docstrings():
    text = src('''
        import functools


        class Layer:
            """y = a x.

            Its backward: dx = a dy.
            """

            @functools.lru_cache()
            def backward(self, g, *, scale=2):
                """dx = a dy."""
                return g * scale


        def helper(x):
            return x + 1
    ''')
    out = transform_source(text, "demo.py", set(), MARKERS, remove_functions={"Layer.backward": "demo.whole"},
                           cut_docstrings={"Layer": None})
    assert "Its backward" not in out and "dx = a dy" not in out and "lru_cache" not in out
    ns = load(out)
    assert ns["Layer"].__doc__ == "y = a x."
    with pytest.raises(NotImplementedError, match="backward is removed from this student copy: it would show "
                                                  "the solution of demo.whole"):
        ns["Layer"]().backward(1, scale=3)  # the signature is kept
    assert ns["helper"](1) == 2
    with pytest.raises(MarkerError, match="no function nothing to remove"):
        transform_source(text, "demo.py", set(), MARKERS, remove_functions={"nothing": "demo.whole"})


def test_strip_notebook_removes_outputs_and_counts():
    nb = {"cells": [{"cell_type": "code", "execution_count": 3, "metadata": {"execution": {"x": 1}, "tags": ["a"]},
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": "secret\n"}],
                     "source": "print('secret')"},
                    {"cell_type": "markdown", "metadata": {}, "source": "hi"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    out = json.loads(strip_notebook(json.dumps(nb)))
    code = out["cells"][0]
    assert code["outputs"] == [] and code["execution_count"] is None and code["metadata"] == {"tags": ["a"]}
    assert out["cells"][1] == nb["cells"][1]


# ---------------------------------------------------------------- the registry against the tree

def test_every_registered_exercise_has_its_block_in_the_reference():
    if course.handed_out():
        pytest.skip("a student copy: its handed-out blocks are cut")
    found = course.scan(ROOT)
    assert sorted(found) == sorted(e.id for e in course.EXERCISES.values() if e.block)


def test_every_exercise_has_tests_and_a_handout():
    for a in course.ASSIGNMENTS:
        tests = (ROOT / a.tests).read_text()
        assert f"pytestmark = pytest.mark.{a.marker}" in tests, f"{a.tests} must mark its tests with {a.marker}"
        handout = (ROOT / a.handout).read_text()
        assert f"-m {a.marker}" in handout, f"{a.handout} must say how to run the tests"
        for e in a.exercises:
            count = tests.count(f'@pytest.mark.exercise("{e.id}"')
            assert count >= 1, f"{e.id} has no test in {a.tests}"
            assert e.id in handout, f"{a.handout} does not name exercise {e.id}"
        total = a.points + a.graded_by_hand
        assert f"{total} points" in handout, f"{a.handout} must state its {total} points"


def test_the_markers_are_registered_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    for name in ["exercise"] + [a.marker for a in course.ASSIGNMENTS]:
        assert re.search(rf'^\s*"{name}[(:]', text, re.M), f"marker {name} is not registered in pyproject.toml"


def test_the_reference_is_not_a_student_copy():
    assert not (ROOT / MANIFEST).exists() or course.handed_out()
    if not course.handed_out():
        assert course.student_copy() is None and not course.is_removed("kernels/numba_cpu.py")


def test_default_source_is_this_checkout():
    if course.handed_out():
        pytest.skip("a student copy")
    assert tree.default_source() == ROOT


def test_an_installed_package_is_not_a_source(monkeypatch, tmp_path):
    fake = tmp_path / "site-packages" / "minires" / "course" / "tree.py"
    fake.parent.mkdir(parents=True)
    monkeypatch.setattr(tree, "__file__", str(fake))
    with pytest.raises(RuntimeError, match=r"not in a source checkout .*pass --source"):
        tree.default_source()
    with pytest.raises(RuntimeError, match="not a minires source checkout"):
        course.make_student(tmp_path / "out", source=tmp_path, log=lambda *a: None)


def test_unknown_assignment_and_exercise_are_named():
    with pytest.raises(ValueError, match=r"no assignment '9'; choose one of 1 \(autograd\)"):
        course.select(["9"])
    with pytest.raises(ValueError, match="no exercise 'conv.nothing'"):
        course.select(exercises=["conv.nothing"])
    assert course.select(["conv"]) == [e.id for e in course.get_assignment(2).exercises]


def test_cli_list_and_errors(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "minires.cli", "exercises", *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=tmp_path)
    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    for e in course.EXERCISES:
        assert e in listed.stdout
    assert "graded by hand" in listed.stdout
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    busy = run("make-student", str(tmp_path / "full"))
    assert busy.returncode == 2 and "is not an empty folder" in busy.stderr, busy.stderr
    if course.handed_out():
        fresh = run("make-student", str(tmp_path / "new"))
        assert fresh.returncode == 2 and "is itself a student copy" in fresh.stderr, fresh.stderr
    missing = run("grade", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no folder" in missing.stderr


def _collect(*args):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "--co", "-p", "no:cacheprovider", "-o", "addopts=",
                           str(ROOT / "tests" / "exercises"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_one_exercise_is_selected_by_its_id():
    """``--exercise conv.im2col`` picks im2col's tests and nothing else (``-k im2col`` also picks col2im's)."""
    done = _collect("--exercise", "conv.im2col")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    chosen = [line for line in done.stdout.splitlines() if "::" in line]
    assert chosen and all("::test_im2col" in line for line in chosen), chosen
    k = _collect("-k", "im2col")
    assert any("col2im" in line for line in k.stdout.splitlines() if "::" in line)  # why the option exists
    both = _collect("--exercise", "conv.im2col,conv.col2im")
    assert len([line for line in both.stdout.splitlines() if "::" in line]) > len(chosen)
    unknown = _collect("--exercise", "conv.nope")
    assert unknown.returncode == 4 and "no exercise conv.nope" in unknown.stderr


# ---------------------------------------------------------------- answer spans (answers.py)

SPAN_MD = src('''
    Intro stays.

    <!-- ANSWER residual.add_backward: *(left out)* -->
    The add hands g to both inputs.
    <!-- END ANSWER -->

    <!-- ANSWER bn.backward -->
    dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat))
    <!-- END ANSWER -->
    Outro stays.
''')


def test_answer_spans_are_cut_when_handed_out_and_unmarked_otherwise():
    from minires.course import answers
    cut = answers.cut_text(SPAN_MD, "markdown", {"residual.add_backward"}, "demo.md")
    assert "*(left out)*" in cut and "hands g to both" not in cut
    assert "dx = scale * (dy - mean(dy)" in cut and "ANSWER" not in cut
    assert cut.startswith("Intro stays.") and cut.rstrip().endswith("Outro stays.")
    default = answers.cut_text(SPAN_MD, "markdown", {"bn.backward"}, "demo.md")
    assert "dx = scale" not in default and "exercise `bn.backward` asks for it" in default
    code = src('''
        def f(dy, y):
            # ANSWER residual.add_backward: g, _ = kernel(dy, y)
            g = dy * (y > 0)
            # END ANSWER
            return g
    ''')
    cut = answers.cut_text(code, "python", {"residual.add_backward"}, "demo.py")
    assert "    g, _ = kernel(dy, y)\n    return g" in cut and "(y > 0)" not in cut
    compile(cut, "demo.py", "exec")
    kept = answers.cut_text(code, "python", set(), "demo.py")
    assert "g = dy * (y > 0)" in kept and "ANSWER" not in kept


@pytest.mark.parametrize("text, words", [
    ("<!-- ANSWER residual.add_backward -->\nopen\n", ["line 1", "never closed"]),
    ("text\n<!-- END ANSWER -->\n", ["line 2", "without an ANSWER"]),
    ("<!-- ANSWER conv.nothing -->\nx\n<!-- END ANSWER -->\n", ["line 1", "conv.nothing", "no exercise"]),
    ("<!-- ANSWER bn.backward -->\n<!-- ANSWER bn.backward -->\n<!-- END ANSWER -->\n", ["line 2", "nest"]),
])
def test_malformed_answer_spans_name_the_file_and_line(text, words):
    from minires.course import answers
    with pytest.raises(MarkerError) as err:
        answers.spans(text, "markdown", "doc.md")
    for word in ["doc.md"] + words:
        assert word in str(err.value)


def test_answer_spans_in_notebooks_and_their_registration(tmp_path):
    from minires.course import answers
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": SPAN_MD.splitlines(True)}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    text = json.dumps(nb)
    cut = json.loads(answers.cut_file(text, "tutorials/x.ipynb", {"residual.add_backward", "bn.backward"}))
    body = "".join(cut["cells"][0]["source"])
    assert "hands g to both" not in body and "dx = scale" not in body and "Outro stays." in body
    (tmp_path / "x.ipynb").write_text(text)
    found = answers.scan(tmp_path, ["x.ipynb"])
    assert [e for e, _ in found["x.ipynb"]] == ["residual.add_backward", "bn.backward"]
    with pytest.raises(MarkerError, match="x.ipynb: an ANSWER span of bn.backward that ASSIGNMENTS does not register"):
        answers.check_registered(found)


@pytest.mark.skipif(bool(course.handed_out()), reason="a student copy: its answer spans are cut")
def test_the_reference_registers_exactly_its_answer_spans():
    from minires.course import answers
    found = answers.scan(ROOT, tree.source_files(ROOT))
    answers.check_registered(found)  # raises on a span not registered, or a registered file without one
    ids = {e for items in found.values() for e, _ in items}
    assert {"residual.add_backward", "bn.backward"} <= ids
    assert {"README.md", "tutorials/01_residual_learning.ipynb", "tutorials/residual_block_demo.py"} <= set(found)
