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
