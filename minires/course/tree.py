"""The reference source tree: where it is, the files a student copy starts from, which may hold exercises."""
import os
import shutil
import subprocess
from pathlib import Path

SOURCE_DIRS = ("minires", "kernels")  # where exercise blocks may live
COURSE_DIR = "minires/course/"  # this tooling: never an exercise, copied as it is

_SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".hypothesis", ".ipynb_checkpoints", ".mypy_cache",
              ".ruff_cache", "runs", "build", "dist", ".tox", ".nox", "node_modules"}


def default_source():
    """The repository minires was installed from (an editable install or a checkout)."""
    package = Path(__file__).resolve().parent.parent
    root = package.parent
    if (root / "pyproject.toml").is_file() and (root / "kernels").is_dir() and (root / "tests").is_dir():
        return root
    raise RuntimeError(f"minires is installed at {package}, not in a source checkout (no pyproject.toml, "
                       "kernels/ and tests/ beside it); pass --source with the repository root")


def source_files(root):
    """Repo-relative paths of the files a student copy starts from: git's tracked files, else a walk."""
    root = Path(root)
    if (root / ".git").exists() and shutil.which("git"):
        proc = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True)
        if proc.returncode == 0:
            names = [n for n in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if n]
            return sorted(n for n in names if (root / n).is_file())
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")
                             and not (here / d / "pyvenv.cfg").exists())
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")) or name in (".DS_Store", "grade.json"):
                continue
            files.append((here / name).relative_to(root).as_posix())
    return files


def is_exercise_source(rel):
    """True for a repo-relative path whose exercise markers count: library and kernel sources, not this tooling."""
    return rel.endswith(".py") and rel.split("/")[0] in SOURCE_DIRS and not rel.startswith(COURSE_DIR)
