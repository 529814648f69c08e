"""Every Python sample in README.md runs as written, and the two set-up commands are the ones CI runs."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def test_readme_python_samples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # samples may write files (plot_model)
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 4
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "resnet20.png").exists()


def test_ci_runs_the_readme_commands():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    train_cmd, test_cmd = re.findall(r"```bash\n(python3 -m venv .*?)\n```", README)[:2]
    assert "pip install -e ." in train_cmd and train_cmd.endswith("minires train")
    extras = re.search(r"pip install -e '(\.\[[^\]]*\])'", test_cmd).group(1)
    assert f"pip\" install --quiet -e '{extras}'" in ci
    assert test_cmd.endswith("python -m pytest") and "-m pytest" in ci and "minires\" train" in ci


def test_the_course_has_one_install_recipe():
    """README, the assignments' README, every handout and make-student give the same student commands."""
    from minires.course.assignments import ASSIGNMENTS, get_assignment, student_recipe
    docs = {"README.md": README}
    for name in ("README.md",) + tuple(os.path.basename(a.handout) for a in ASSIGNMENTS):
        with open(os.path.join(ROOT, "tutorials", "assignments", name), encoding="utf-8") as f:
            docs["tutorials/assignments/" + name] = f.read()
    conv = student_recipe([get_assignment(2)])
    assert conv == ["python3 -m venv .venv && .venv/bin/pip install -e '.[test]'",
                    ".venv/bin/python -m pytest tests/exercises -m conv"]  # assignments 1-4 need only [test]
    for doc in ("README.md", "tutorials/assignments/README.md"):
        for line in conv:
            assert line in docs[doc], f"{doc} does not give the students' command {line!r}"
    for a in ASSIGNMENTS:
        text = docs["tutorials/assignments/" + os.path.basename(a.handout)]
        for line in student_recipe([a]):
            assert line in text, f"{a.handout} does not give the command {line!r}"
    install = student_recipe([get_assignment(5)])[0]
    assert install.endswith("'.[test,numba]'") and install.startswith(conv[0].split("'")[0])
    installs = tuple(student_recipe([a])[0] for a in ASSIGNMENTS)  # the same line, with each one's extras
    for doc, text in docs.items():
        if doc == "README.md":  # its first lines set up a developer's checkout; its course section is checked
            text = text[text.index("## Course assignments"):]
        for line in re.findall(r".*pip install -e.*", text):
            assert line.split("#")[0].strip().startswith(installs), \
                f"{doc} installs a student copy another way: {line.strip()!r}"
