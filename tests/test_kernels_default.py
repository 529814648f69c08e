"""The default kernels ("auto"): numba when it is installed and loads, else numpy; numpy in a student copy.

The rest of the suite runs on the reference (``MINIRES_KERNELS=numpy``, set in
``conftest.py``); these tests start processes without it, or set the
registry's state by hand, to see what a user who sets nothing gets: in
``minires train`` (whose header and config.json say which kernels ran),
``minires eval`` and the Python API. MINIRES_KERNELS, ``use_kernels`` and
``--kernels`` choose over "auto"; a missing Numba is no error, a broken one
one warning.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minires
from minires import cli, course, kernels, train
from minires.course import grading
from minires.course.manifest import MANIFEST

ROOT = Path(__file__).resolve().parent.parent
NUMBA_HERE = importlib.util.find_spec("numba") is not None and kernels.available("numba")
STUDENT_COPY = course.student_copy() is not None
# what "auto" must give in this checkout, worked out without the registry's own test of it
EXPECTED = "numba" if NUMBA_HERE and not STUDENT_COPY else "numpy"
PROBE = """
import warnings
warnings.simplefilter("default")
import minires, minires.functional as F
from minires import kernels
x = minires.randn(2, 3, 8, 8, requires_grad=True)
F.conv2d(x, minires.randn(4, 3, 3, 3), padding=1).sum().backward()
F.conv2d(x, minires.randn(4, 3, 3, 3), padding=1).sum().backward()
print("active:", kernels.active("cpu"))
print("served by:", kernels.for_array(x.data).__name__)
print("why:", kernels.why("cpu"))
"""


def _env(**extra):
    """This process's environment without the suite's MINIRES_KERNELS pin (nor a PYTHONPATH), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("MINIRES_KERNELS", "PYTHONPATH")}
    env.update(extra)
    return env


def _python(code, cwd=ROOT, **env):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=_env(**env),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture
def registry(monkeypatch):
    """The registry's state, put back afterwards: nothing forced, no MINIRES_KERNELS, no choice made yet."""
    for name, value in (("_forced", {"cpu": None, "cuda": None}), ("_default", {"cpu": None, "cuda": None}),
                        ("_auto", {})):
        monkeypatch.setattr(kernels, name, value)
    return kernels


# ---------------------------------------------------------------- what a process that sets nothing gets

def test_a_process_that_sets_nothing_runs_the_fastest_kernels_installed():
    out = _python(PROBE).stdout
    assert f"active: {EXPECTED}" in out
    assert f"served by: minires.kernels.{kernels.BACKENDS[EXPECTED][0]}" in out
    if EXPECTED == "numba":
        assert "why: auto: the fastest kernels installed" in out


def test_without_numba_auto_is_numpy_and_says_what_to_install():
    """No ImportError, no warning: the reason, with the install command, is what ``why`` (and the header) says."""
    done = _python("import sys; sys.modules['numba'] = None\n" + PROBE)
    assert "active: numpy" in done.stdout and "served by: minires.kernels.numpy_ref" in done.stdout
    if not STUDENT_COPY:
        assert "Numba is not installed; pip install 'minires[numba]'" in done.stdout
    assert "Warning" not in done.stderr, done.stderr


def test_a_broken_numba_gives_one_warning_and_numpy(tmp_path):
    """Numba installed but failing to import (a stand-in that raises) -> numpy, and one warning naming the way out."""
    if STUDENT_COPY:
        pytest.skip("a student copy runs numpy without trying Numba")
    (tmp_path / "numba").mkdir()
    (tmp_path / "numba" / "__init__.py").write_text("raise RuntimeError('simulated: built for another NumPy')\n")
    done = _python(f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + PROBE)
    assert "active: numpy" in done.stdout and "why: auto: Numba is installed but does not load" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "Warning" in line]
    assert len(warnings) == 1, done.stderr
    assert "simulated: built for another NumPy" in warnings[0] and "MINIRES_KERNELS=numpy" in warnings[0]
    assert "--kernels numpy" in warnings[0]


@pytest.mark.skipif(STUDENT_COPY, reason="a student copy: student copies are made from the reference")
def test_a_student_copy_runs_the_reference_even_with_its_numba_modules(tmp_path):
    """Assignment 1's copy (solved, so its backward runs) keeps kernels/numba_*.py; "auto" still gives numpy there."""
    copy, stage = tmp_path / "copy", tmp_path / "stage"
    made = subprocess.run([sys.executable, "-m", "minires.cli", "exercises", "make-student", str(copy),
                           "--assignment", "1", "--solved", "--source", str(ROOT)], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    assert (copy / "kernels" / "numba_cpu.py").is_file(), "assignment 1's copy was expected to keep the Numba kernels"
    stage.mkdir()
    grading.import_root(copy, stage)
    done = _python(PROBE + "print('numba loads:', kernels.available('numba'))\n"
                   "print('copy:', minires.__file__)\n", cwd=tmp_path, PYTHONPATH=str(stage))
    assert f"copy: {stage / 'minires' / '__init__.py'}" in done.stdout
    assert "active: numpy" in done.stdout and "why: auto: a student copy runs the NumPy reference" in done.stdout
    assert f"numba loads: {NUMBA_HERE}" in done.stdout  # so it is the copy, not a missing Numba, that chose


def test_the_registry_looks_for_the_manifest_where_make_student_writes_it():
    assert os.path.join("minires", kernels.STUDENT_COPY_MARK) == os.path.normpath(MANIFEST)
    assert kernels.student_copy() == STUDENT_COPY


def test_numba_modules_removed_means_numpy(registry, monkeypatch):
    monkeypatch.setitem(kernels.BACKENDS, "numba", ("numba_removed_here", "cpu", "numba"))
    assert registry.active("cpu") == "numpy"
    assert "not in this copy" in registry.why("cpu") or STUDENT_COPY


# ---------------------------------------------------------------- who chooses over "auto"

def test_minires_kernels_then_use_choose_over_auto(registry, monkeypatch):
    monkeypatch.setitem(kernels._auto, "cpu", ("numba", "the fastest kernels installed"))  # without loading Numba,
    monkeypatch.setitem(kernels._loaded, "numba", kernels.load("numpy"))  # which a student copy may not have
    assert registry.active("cpu") == "numba" and registry.why("cpu").startswith("auto: ")
    monkeypatch.setenv("MINIRES_KERNELS", "numpy")
    registry._read_environment()
    assert registry.active("cpu") == "numpy" and registry.why("cpu") == "MINIRES_KERNELS=numpy"
    registry.use("numpy")
    assert registry.why("cpu") == "forced with use('numpy')"
    registry.reset()  # back to the process's default, MINIRES_KERNELS
    assert registry.active("cpu") == "numpy" and registry.why("cpu") == "MINIRES_KERNELS=numpy"
    registry._default["cpu"] = None
    minires.use_kernels("numpy")
    assert registry.active("cpu") == "numpy"
    registry.use("auto")  # un-forces the CPU's choice
    assert registry.active("cpu") == "numba"


def test_an_unknown_name_lists_auto_among_the_choices(registry):
    with pytest.raises(ValueError, match="choose one of auto, numpy, numba"):
        registry.use("fortran")


# ---------------------------------------------------------------- minires train and eval

TINY_TRAIN = ["train", "--model", "resnet8", "--epochs", "1", "--batch-size", "256", "--quiet"]


def test_train_and_eval_run_the_default_kernels_and_say_so(tmp_path):
    """A user who sets nothing: the header and config.json name what ran; eval prints it, and --kernels numpy."""
    code = "import sys\nfrom minires.cli import main\nsys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, *TINY_TRAIN, "--out", str(tmp_path)], capture_output=True,
                          text=True, cwd=tmp_path, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    header = done.stdout.splitlines()[0]
    assert header.startswith("training resnet8 on digits: 1 epoch of batch 256 on cpu, kernels ")
    assert f"kernels {EXPECTED} (auto: " in header
    (folder,) = tmp_path.glob("resnet8-digits-*")
    assert json.loads((folder / "config.json").read_text())["kernels"] == EXPECTED
    for extra, ran, why in (([], EXPECTED, "auto: "), (["--kernels", "numpy"], "numpy", "--kernels numpy")):
        done = subprocess.run([sys.executable, "-c", code, "eval", str(folder), *extra], capture_output=True,
                              text=True, cwd=tmp_path, env=_env(), timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.startswith(f"digits test set (kernels {ran}, {why}")
        assert f"the run trained with {EXPECTED}): loss " in done.stdout


def test_the_config_records_the_kernels_that_ran(tmp_path, registry, monkeypatch):
    """TrainConfig's default is "auto"; the run resolves it, writes it, and names it in its header."""
    monkeypatch.setitem(kernels._auto, "cpu", ("numpy", "test's choice"))
    config = train.TrainConfig(model="resnet8", epochs=1, batch_size=256, out=str(tmp_path))
    assert config.kernels == "auto"
    lines = []
    run = train.train(config, progress=False, log=lines.append)
    assert run.config.kernels == "numpy" and config.kernels == "auto"  # the caller's config is left as it was
    assert lines[0].endswith("kernels numpy (auto: test's choice)")
    assert json.loads(Path(run.folder, "config.json").read_text())["kernels"] == "numpy"
    forced = train.train(resume=run.folder, epochs=1, progress=False, log=lines.append)
    assert forced.config.kernels == "numpy" and "(--kernels numpy)" in lines[-2]


def test_an_old_run_recorded_with_numpy_resumes_on_numpy(tmp_path, registry, monkeypatch):
    """A config.json of before "auto" says "numpy": the run continues on it, whatever the default is now."""
    monkeypatch.setitem(kernels._auto, "cpu", ("numpy", "test's choice"))
    run = train.train(train.TrainConfig(model="resnet8", epochs=1, batch_size=256, out=str(tmp_path)),
                      progress=False, log=lambda line: None)
    from minires.train.options import resumed_config
    meta = {"config": dict(run.config.to_json(), kernels="numpy"), "epoch": 1}
    monkeypatch.setitem(kernels._auto, "cpu", ("numba", "pretend"))
    assert resumed_config("x", meta, {"epochs": 2}).kernels == "numpy"
    assert resumed_config("x", meta, {"epochs": 2, "kernels": "auto"}).kernels == "auto"
    moved = dict(meta, config=dict(meta["config"], device="cuda", kernels="cupy"))
    assert resumed_config("x", moved, {"device": "cpu"}).kernels == "auto"  # its kernels ran on the other device


def test_a_recorded_backend_missing_here_names_kernels(tmp_path, registry, monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.delitem(sys.modules, "minires.kernels.numba_cpu", raising=False)
    monkeypatch.setattr(kernels, "_loaded", {"numpy": kernels.load("numpy")})
    with pytest.raises(kernels.BackendUnavailable, match=r"kernels \(--kernels\) 'numba'.*--kernels numpy"):
        train.Run(train.TrainConfig(model="resnet8", kernels="numba", out=str(tmp_path)), progress=False)


def test_eval_refuses_a_gpu_backend_naming_the_option(capsys):
    assert cli.main(["eval", "/nonexistent", "--kernels", "cupy"]) == 2
    err = capsys.readouterr().err
    assert "--kernels 'cupy'" in err and "auto, numpy, numba" in err and len(err.strip().splitlines()) == 1


def test_the_suite_itself_runs_on_the_reference():
    """conftest.py pins the reference for every test that does not choose (and the children they start)."""
    assert os.environ["MINIRES_KERNELS"] == "numpy"
    kernels.reset()
    assert kernels.for_array(np.zeros(3)) is kernels.load("numpy")
