"""Bad input at every option of the command line and at the train, optim and loader API.

Each case asserts three things: the kind of failure (the exception type, or the
exit status: 2 for a usage error or an unusable input, 1 for a failure while
working, such as a download or a diverged run), that the message names the
culprit (the option, the file or the hyper-parameter), and that nothing changed
(every file under the working folder, or the run folder, byte for byte and by
modification time). Training is kept cheap: an 8-layer ResNet on the bundled
digits, one epoch; most cases stop at the option check and train nothing.
"""
import contextlib
import hashlib
import io
import json
import math
import os
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minires
from minires import cli, models, nn, optim, train
from minires.data import ArrayDataset, DataLoader, DownloadError
from minires.models import CifarResNet

TINY = "tiny_resnet8"
models.register(lambda **kw: CifarResNet(1, **kw), TINY)


def _snapshot(folder):
    """{relative path: (size, mtime, sha256)} of every file under ``folder``, hidden ones included."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            data = open(path, "rb").read()
            files[os.path.relpath(path, folder)] = (len(data), os.stat(path).st_mtime_ns,
                                                    hashlib.sha256(data).hexdigest())
    return files


def _main(args):
    """(exit status, stdout, stderr) of ``minires ARGS``, run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A one-epoch run folder of the tiny model; tests copy it before they touch it."""
    out = tmp_path_factory.mktemp("finished")
    config = train.TrainConfig(model=TINY, epochs=1, batch_size=128, seed=3, out=str(out))
    return train.train(config, progress=False, log=lambda line: None).folder


@pytest.fixture
def run_copy(finished, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    return str(folder)


# ---------------------------------------------------------------- usage errors: exit status 2, nothing written

USAGE = [
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "-3"], "--epochs"),
    (["train", "--epochs", "two"], "--epochs"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--batch-size", "1"], "--batch-size"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--lr=-0.1"], "--lr"),
    (["train", "--momentum", "1.5"], "--momentum"),
    (["train", "--momentum", "nan"], "--momentum"),
    (["train", "--momentum", "0"], "--no-nesterov"),
    (["train", "--weight-decay", "nan"], "--weight-decay"),
    (["train", "--weight-decay=-1e-4"], "--weight-decay"),
    (["train", "--warmup-epochs", "-1"], "--warmup-epochs"),
    (["train", "--epochs", "2", "--warmup-epochs", "3"], "--warmup-epochs"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--model", "resnet21"], "--model"),
    (["train", "--data", "imagenet"], "--data"),
    (["train", "--schedule", "step"], "--schedule"),
    (["train", "--kernels", "fortran"], "--kernels"),
    (["train", "--kernels", "cupy"], "--kernels"),
    (["train", "--device", "tpu"], "--device"),
    (["train", "--no-such-option"], "--no-such-option"),
    (["train", "--resume", "{tmp}/nowhere"], "nowhere"),
    (["eval", "{tmp}/nowhere"], "nowhere"),
    (["eval", "{run}", "--data", "imagenet"], "--data"),
    (["summary", "resnet20", "--input-size", "0"], "--input-size"),
    (["summary", "resnet20", "--in-channels", "0"], "--in-channels"),
    (["summary", "resnet20", "--num-classes", "0"], "--num-classes"),
    (["summary", "resnet20", "--depth", "-1"], "--depth"),
    (["summary", "resnet7"], "resnet7"),
    (["experiment", "degradation", "--depths", "8,x"], "--depths"),
    (["experiment", "degradation", "--depths", "9"], "plain9"),
    (["experiment", "degradation", "--depths", "8,8"], "depths"),
    (["experiment", "degradation", "--epochs", "0"], "--epochs"),
    (["experiment", "degradation", "--lr", "nan"], "--lr"),
    (["experiment", "degradation", "--batch-size", "0"], "--batch-size"),
    (["experiment", "degradation", "--warmup-epochs", "-1"], "--warmup-epochs"),
    (["experiment", "degradation", "--seed", "-2"], "--seed"),
    (["experiment", "degradation", "--data", "imagenet"], "imagenet"),
    (["convert", "{tmp}/nowhere.pth", "{tmp}/out.npz"], "nowhere.pth"),
    (["convert", "{run}/model.npz", "{tmp}/no/such/folder/out.npz"], "folder"),
    (["convert", "{run}/model.npz", "{run}/model.npz"], "source"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--repeat", "0"], "--repeat"),
    (["bench", "--warmup", "-1"], "--warmup"),
    (["bench", "--batch-size", "0"], "--batch-size"),
    (["bench", "--rounds", "0"], "--rounds"),
    (["bench", "--workloads", "resnet21_train"], "resnet21_train"),
    (["bench", "--backend", "fortran"], "fortran"),
    (["exercises", "make-student", "{tmp}/copy", "--assignment", "99"], "99"),
    (["exercises", "make-student", "{tmp}/copy", "--exercise", "conv.nothing"], "conv.nothing"),
    (["exercises", "make-student", "{run}"], "{run}"),
    (["exercises", "grade", "{tmp}/nowhere"], "nowhere"),
    (["exercises", "grade", "{run}", "--timeout", "0"], "--timeout"),
    (["exercises", "grade", "{run}", "--assignment", "99"], "99"),
]


@pytest.mark.parametrize("args, culprit", USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_usage_error_exits_2_names_the_option_and_writes_nothing(args, culprit, run_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run folder written by mistake would land here (./runs) and show
    args = [a.format(tmp=tmp_path, run=run_copy) for a in args]
    before = _snapshot(tmp_path)
    code, out, err = _main(args)
    assert code == 2, err
    assert culprit.format(run=run_copy) in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before


BAD_FLOATS = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]),
                       st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False))


@given(flag=st.sampled_from(["--lr", "--weight-decay", "--momentum"]), value=BAD_FLOATS)
def test_cli_refuses_any_bad_hyperparameter(flag, value, tmp_path_factory):
    out = tmp_path_factory.mktemp("hyp")
    code, _, err = _main(["train", f"{flag}={value!r}", "--out", str(out), "--quiet"])
    assert code == 2 and flag in err and os.listdir(out) == []


@given(flag=st.sampled_from(["--epochs", "--batch-size", "--warmup-epochs", "--seed"]),
       value=st.integers(max_value=-1))
def test_cli_refuses_any_negative_count(flag, value, tmp_path_factory):
    out = tmp_path_factory.mktemp("hyp")
    code, _, err = _main(["train", f"{flag}={value}", "--out", str(out), "--quiet"])
    assert code == 2 and flag in err and os.listdir(out) == []


# ---------------------------------------------------------------- failures and damaged files: the whole message

def test_divergence_exits_1_names_epoch_and_step_and_writes_no_weights(tmp_path):
    code, out, err = _main(["train", "--model", TINY, "--lr", "1e6", "--epochs", "2", "--quiet",
                            "--out", str(tmp_path)])
    assert code == 1 and "done" not in out
    assert "diverged in epoch 1, step" in err and "--lr" in err and "Traceback" not in err
    (folder,) = os.listdir(tmp_path)
    assert os.listdir(tmp_path / folder) == ["config.json"], "no checkpoint.npz or model.npz of NaNs"


def test_a_failed_download_reaches_the_user_whole(tmp_path, monkeypatch):
    import minires.train.loop

    message = ("could not download train-images-idx3-ubyte.gz (nothing was saved):\n"
               "  https://example.invalid/train-images-idx3-ubyte.gz: no network\n"
               "Without a network, copy train-images-idx3-ubyte.gz into the folder by hand")

    def offline(*args, **kwargs):
        raise DownloadError(message)

    monkeypatch.setattr(minires.train.loop, "get_dataset", offline)
    code, _, err = _main(["train", "--data", "mnist", "--quiet", "--out", str(tmp_path)])
    assert code == 1 and message in err and os.listdir(tmp_path) == []


def test_a_checkpoint_that_does_not_fit_lists_every_key(run_copy):
    path = os.path.join(run_copy, "checkpoint.npz")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    del arrays["model/fc.weight"], arrays["model/fc.bias"]
    np.savez(path, **arrays)
    before = _snapshot(run_copy)
    code, _, err = _main(["train", "--resume", run_copy, "--quiet", "--epochs", "2"])
    assert code == 2 and "fc.weight" in err and "fc.bias" in err and "missing keys" in err
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize("how", ["quiet", "--debug", "MINIRES_DEBUG"])
def test_a_bug_is_one_line_and_the_traceback_only_on_request(how, monkeypatch):
    def broken(args):
        return [][1]

    import minires.cli
    monkeypatch.setattr(minires.cli, "_models", broken)
    if how == "MINIRES_DEBUG":
        monkeypatch.setenv("MINIRES_DEBUG", "1")
    code, _, err = _main(["models"] + (["--debug"] if how == "--debug" else []))
    assert code == 1 and "IndexError: list index out of range" in err
    if how == "quiet":
        assert len(err.strip().splitlines()) == 1 and "--debug" in err and "Traceback" not in err
    else:
        assert "Traceback" in err and "in broken" in err


def test_interrupt_exits_130(monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    import minires.cli
    monkeypatch.setattr(minires.cli, "_models", interrupted)
    code, _, err = _main(["models"])
    assert code == 130 and "interrupted" in err


# ---------------------------------------------------------------- resume: all or nothing


def _rewrite(folder, change):
    """Write the folder's checkpoint again with ``change(meta, arrays)`` applied."""
    path = os.path.join(folder, "checkpoint.npz")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop(train.folder.META_KEY).tobytes().decode())
    change(meta, arrays)
    arrays[train.folder.META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def _set(key, value):
    return lambda meta, arrays: meta.__setitem__(key, value)


def _nan_in(prefix):
    def change(meta, arrays):
        name = next(k for k in arrays if k.startswith(prefix) and arrays[k].dtype.kind == "f")
        arrays[name] = np.full_like(arrays[name], np.nan)
    return change


DAMAGE = {
    "random state garbled": (_set("rng", {"bit_generator": "PCG64", "state": "garbage"}), "random state"),
    "random state missing": (lambda meta, arrays: meta.pop("rng"), "rng"),
    "random state of another generator": (_set("rng", {"bit_generator": "MT19937"}), "random state"),
    "loader state garbled": (_set("loader", {"epoch": "one"}), "loader state"),
    "scheduler state negative": (_set("scheduler", {"last_epoch": -4}), "last_epoch"),
    "history entry malformed": (_set("history", [{"epoch": 1}]), "history"),
    "history entry NaN": (lambda meta, arrays: meta["history"][0].__setitem__("test_loss", math.nan), "history"),
    "epoch beyond the history": (_set("epoch", 3), "history"),
    "learning rate NaN": (lambda meta, arrays: meta["optim_groups"][0].__setitem__("lr", math.nan), "lr"),
    "options invalid": (lambda meta, arrays: meta["config"].__setitem__("batch_size", 0), "--batch-size"),
    "weights NaN": (_nan_in("model/"), "NaN"),
    "momentum buffer NaN": (_nan_in("optim/"), "NaN"),
    "an array misnamed": (lambda meta, arrays: arrays.__setitem__("optim/x/momentum_buffer", np.zeros(2)),
                          "optim/x/momentum_buffer"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_changes_neither_the_folder_nor_the_run(damage, run_copy):
    change, culprit = DAMAGE[damage]
    _rewrite(run_copy, change)
    before = _snapshot(run_copy)
    code, out, err = _main(["train", "--resume", run_copy, "--epochs", "2", "--quiet"])
    assert code == 2 and culprit in err and "checkpoint.npz" in err and "Traceback" not in err
    assert _snapshot(run_copy) == before

    # the same through the API: the model, the optimiser, the random state and the history stay as they were
    config = train.TrainConfig(model=TINY, epochs=2, batch_size=128, seed=3, out=os.path.dirname(run_copy))
    run = train.Run(config, folder=run_copy, progress=False)
    model = {k: v.numpy().copy() for k, v in run.model.state_dict().items()}
    state = (run.optimizer.state_dict(), run.scheduler.state_dict(), run.train_loader.state_dict(),
             minires.rng.generator().bit_generator.state)
    with pytest.raises(train.CheckpointError, match="checkpoint.npz"):
        run.load_checkpoint(os.path.join(run_copy, "checkpoint.npz"))
    assert all(np.array_equal(model[k], v.numpy()) for k, v in run.model.state_dict().items())
    assert (run.optimizer.state_dict(), run.scheduler.state_dict(), run.train_loader.state_dict(),
            minires.rng.generator().bit_generator.state) == state
    assert (run.epoch, run.history) == (0, [])
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize("args, culprits", [
    (["--lr", "0.05"], ["--lr", "0.05", "0.1"]),
    (["--batch-size", "32", "--no-augment", "--seed", "9"], ["--batch-size", "--no-augment", "--seed"]),
    (["--model", "resnet20"], ["--model"]),
    (["--out", "elsewhere"], ["--out"]),
    (["--epochs", "0"], ["--epochs"]),
])
def test_resume_refuses_options_that_conflict_with_the_run(args, culprits, run_copy):
    before = _snapshot(run_copy)
    code, _, err = _main(["train", "--resume", run_copy, "--quiet", *args])
    assert code == 2 and all(c in err for c in culprits), err
    assert _snapshot(run_copy) == before


def test_resume_refuses_fewer_epochs_than_done(finished, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    train.train(resume=str(folder), progress=False, log=lambda line: None, epochs=2)
    before = _snapshot(folder)
    code, _, err = _main(["train", "--resume", str(folder), "--epochs", "1", "--quiet"])
    assert code == 2 and "--epochs" in err and "2 epochs" in err
    assert _snapshot(folder) == before
    with pytest.raises(train.ConfigError, match="--epochs"):
        train.train(resume=str(folder), epochs=1, progress=False, log=lambda line: None)
    with pytest.raises(train.ConfigError, match="lr"):
        train.train(resume=str(folder), lr=0.5, progress=False, log=lambda line: None)
    assert _snapshot(folder) == before


# ---------------------------------------------------------------- the API: TrainConfig, optimisers, loader

NUMBERS = {"lr": (0, math.inf), "momentum": (0, 1), "weight_decay": (0, math.inf)}
COUNTS = {"epochs": 1, "batch_size": 2, "warmup_epochs": 0, "seed": 0}


@given(name=st.sampled_from(sorted(NUMBERS)), value=st.floats(allow_nan=True, allow_infinity=True))
def test_trainconfig_takes_exactly_the_finite_values_in_range(name, value):
    low, high = NUMBERS[name]
    good = math.isfinite(value) and low <= value and (value < high or high == math.inf)
    good = good and not (name == "momentum" and value == 0)  # Nesterov (the default) needs momentum
    if good:
        assert getattr(train.TrainConfig(**{name: value}), name) == value
    else:
        with pytest.raises(train.ConfigError, match=f"--{name.replace('_', '-')}"):
            train.TrainConfig(**{name: value})


@given(name=st.sampled_from(sorted(COUNTS)), value=st.integers(-10**6, 1))
def test_trainconfig_counts_have_a_floor(name, value):
    if value >= COUNTS[name]:
        assert getattr(train.TrainConfig(**{name: value}), name) == value
    else:
        with pytest.raises(train.ConfigError, match=f"--{name.replace('_', '-')}"):
            train.TrainConfig(**{name: value})


@pytest.mark.parametrize("name, value", [("epochs", 2.5), ("epochs", "3"), ("lr", "0.1"), ("lr", None),
                                         ("seed", True), ("nesterov", "yes"), ("model", 20), ("out", None)])
def test_trainconfig_refuses_the_wrong_type(name, value):
    with pytest.raises(TypeError, match=name):
        train.TrainConfig(**{name: value})


def test_trainconfig_is_checked_again_when_changed_and_when_overridden(tmp_path):
    config = train.TrainConfig(model=TINY, out=str(tmp_path))
    config.lr = math.nan
    with pytest.raises(train.ConfigError, match="--lr"):
        train.Run(config, progress=False)
    with pytest.raises(train.ConfigError, match="unknown option"):
        train.train(train.TrainConfig(out=str(tmp_path)), learning_rate=0.1)
    with pytest.raises(train.ConfigError, match="--epochs"):
        train.train(train.TrainConfig(out=str(tmp_path)), epochs=0)
    assert os.listdir(tmp_path) == []


HYPER = [("SGD", "lr"), ("SGD", "momentum"), ("SGD", "dampening"), ("SGD", "weight_decay"),
         ("Adam", "lr"), ("Adam", "eps"), ("Adam", "weight_decay"), ("AdamW", "lr"), ("AdamW", "weight_decay")]


@given(which=st.sampled_from(HYPER), value=BAD_FLOATS)
def test_optimisers_refuse_non_finite_and_negative_hyperparameters(which, value):
    name, hyper = which
    p = nn.Parameter(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=hyper):
        getattr(optim, name)([p], **{hyper: value})
    with pytest.raises(ValueError, match=hyper):  # in a parameter group too
        getattr(optim, name)([{"params": [p], hyper: value}])


@given(beta=st.one_of(BAD_FLOATS, st.floats(min_value=1, allow_infinity=False)), index=st.integers(0, 1))
def test_adam_refuses_betas_outside_0_1(beta, index):
    betas = [0.9, 0.999]
    betas[index] = beta
    with pytest.raises(ValueError, match=rf"betas\[{index}\]"):
        optim.Adam([nn.Parameter(np.zeros(2, np.float32))], betas=betas)


def _sgd():
    return optim.SGD([nn.Parameter(np.zeros(2, np.float32))], lr=0.1)


@pytest.mark.parametrize("build, error, culprit", [
    (lambda: optim.MultiStepLR(_sgd(), [3, -1]), ValueError, "milestone"),
    (lambda: optim.MultiStepLR(_sgd(), [2.5]), TypeError, "milestone"),
    (lambda: optim.MultiStepLR(_sgd(), [2], gamma=math.nan), ValueError, "gamma"),
    (lambda: optim.MultiStepLR(_sgd(), 5), TypeError, "milestones"),
    (lambda: optim.CosineAnnealingLR(_sgd(), 0), ValueError, "T_max"),
    (lambda: optim.CosineAnnealingLR(_sgd(), 10, eta_min=math.inf), ValueError, "eta_min"),
    (lambda: optim.LinearWarmup(_sgd(), -1), ValueError, "warmup"),
    (lambda: optim.LinearWarmup(_sgd(), 1.5), TypeError, "warmup"),
    (lambda: optim.LinearWarmup(_sgd(), 4, start_factor=0), ValueError, "start_factor"),
    (lambda: optim.LinearWarmup(_sgd(), 4, start_factor=math.nan), ValueError, "start_factor"),
    (lambda: optim.LinearWarmup(_sgd(), 4, after="cosine"), TypeError, "after"),
    (lambda: optim.CosineAnnealingLR("sgd", 10), TypeError, "Optimizer"),
    (lambda: optim.SGD(nn.Parameter(np.zeros(2, np.float32))), TypeError, "iterable"),
    (lambda: optim.SGD([np.zeros(2)]), TypeError, "Parameters"),
    (lambda: optim.SGD([{"lr": 0.1}]), ValueError, "params"),
    (lambda: optim.SGD([nn.Parameter(np.zeros(2, np.float32))] * 2), ValueError, "twice"),
    (lambda: optim.SGD([nn.Parameter(np.zeros(2, np.float32))], lr="0.1"), TypeError, "lr"),
    (lambda: optim.SGD([nn.Parameter(np.zeros(2, np.float32))], momentum=0.9, nesterov="yes"), TypeError,
     "nesterov"),
])
def test_schedules_and_optimisers_refuse_bad_arguments(build, error, culprit):
    with pytest.raises(error, match=culprit):
        build()


def test_scheduler_and_optimiser_load_state_dict_refuse_and_change_nothing():
    opt = _sgd()
    sched = optim.CosineAnnealingLR(opt, 10)
    sched.step()
    lr = opt.lr
    for bad in ({"last_epoch": -1}, {"last_epoch": 2.5}, {}, None):
        with pytest.raises((ValueError, TypeError), match="last_epoch"):
            sched.load_state_dict(bad)
        assert (sched.last_epoch, opt.lr) == (1, lr)
    saved = opt.state_dict()
    saved["param_groups"][0]["lr"] = math.nan
    with pytest.raises(ValueError, match="lr"):
        opt.load_state_dict(saved)
    assert opt.lr == lr
    with pytest.raises(ValueError, match="param_groups"):
        opt.load_state_dict({"state": {}})


def _dataset(n=10):
    return ArrayDataset(np.zeros((n, 1, 2, 2), np.float32), np.zeros(n, np.int64))


@pytest.mark.parametrize("kwargs, error, culprit", [
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size="4"), ValueError, "batch_size"),
    (dict(batch_size=None), ValueError, "batch_size"),
    (dict(batch_size=4, shuffle="yes"), ValueError, "shuffle"),
    (dict(batch_size=4, drop_last=1), ValueError, "drop_last"),
    (dict(batch_size=4, drop_last=None), ValueError, "drop_last"),
    (dict(batch_size=4, seed=-1), ValueError, "seed"),
    (dict(batch_size=4, seed="abc"), ValueError, "seed"),
    (dict(batch_size=4, device="tpu"), ValueError, "device"),
])
def test_loader_refuses_bad_arguments(kwargs, error, culprit):
    with pytest.raises(error, match=culprit):
        DataLoader(_dataset(), **kwargs)


def test_loader_refuses_what_is_not_a_dataset_and_a_damaged_state():
    with pytest.raises(TypeError, match="DataLoader"):
        DataLoader(42, batch_size=2)
    loader = DataLoader(_dataset(), 4, shuffle=True, seed=0)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="damaged"):
        loader.load_state_dict({"epoch": 1, "bit_generator": {"bit_generator": "PCG64", "state": {"state": 1}}})
    assert loader.state_dict() == state


def test_evaluating_nothing_is_an_error_not_a_division_by_zero(run_copy):
    config = train.TrainConfig(model=TINY, epochs=1, batch_size=128, out=os.path.dirname(run_copy))
    run = train.Run(config, folder=run_copy, progress=False)
    empty = DataLoader(_dataset(3), batch_size=8, drop_last=True)
    assert len(empty) == 0
    with pytest.raises(ValueError, match="nothing to evaluate"):
        run.evaluate(empty)
