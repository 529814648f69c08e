"""The training loop, its run folder, checkpoints (atomic, refused when damaged), resume, and the CLI."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import minires
from minires import cli, models, train
from minires.models import CifarResNet

TINY = "tiny_resnet8"
models.register(lambda **kw: CifarResNet(1, **kw), TINY)  # 6*1+2 = 8 layers: quick to train in a test


def _config(tmp_path, **kw):
    base = dict(model=TINY, data="digits", epochs=2, batch_size=128, lr=0.1, seed=3, out=str(tmp_path))
    base.update(kw)
    return train.TrainConfig(**base)


def _quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    return train.train(_config(folder), progress=False, log=_quiet)


def test_run_folder_holds_metrics_curves_and_checkpoints(finished_run):
    folder = finished_run.folder
    assert sorted(os.listdir(folder)) == ["checkpoint.npz", "config.json", "curves.png", "gradient_flow.png",
                                          "metrics.csv", "metrics.json", "model.npz"]
    with open(os.path.join(folder, "gradient_flow.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(folder, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s"}
    with open(os.path.join(folder, "metrics.json")) as f:
        assert json.load(f)[1]["test_acc"] == pytest.approx(float(rows[1]["test_acc"]))
    with open(os.path.join(folder, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # it learned something: far better than chance (10%) on the held-out digits
    assert float(rows[-1]["test_acc"]) > 0.5


def test_model_npz_loads_into_a_fresh_model(finished_run):
    fresh = models.get(TINY, in_channels=1, num_classes=10)
    fresh.load_state_dict(minires.load(os.path.join(finished_run.folder, "model.npz")))
    for (k, a), (_, b) in zip(fresh.state_dict().items(), finished_run.model.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tmp_path, finished_run):
    first = train.Run(_config(tmp_path), progress=False)
    first.fit(log=_quiet, until=1)  # as if the run had been stopped after its first epoch
    assert "model.npz" not in os.listdir(first.folder)
    resumed = train.train(resume=first.folder, progress=False, log=_quiet)
    assert resumed.folder == first.folder
    strip = [{k: v for k, v in r.items() if k != "images_per_s"} for r in resumed.history]
    expected = [{k: v for k, v in r.items() if k != "images_per_s"} for r in finished_run.history]
    assert strip == expected
    for (k, a), (_, b) in zip(resumed.model.state_dict().items(), finished_run.model.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)


def _snapshot(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _huge_claim():
    """A zip whose one member's .npy header claims 4 TiB of float32: reading it must not try to allocate."""
    import io
    import zipfile
    header, out = io.BytesIO(), io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2 ** 40,)})
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("model/conv1.weight.npy", header.getvalue() + b"\0" * 8)
    return out.getvalue()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "huge"])
def test_damaged_checkpoint_is_refused_and_changes_nothing(tmp_path, finished_run, damage):
    source = os.path.join(finished_run.folder, "checkpoint.npz")
    bad = tmp_path / "checkpoint.npz"
    data = open(source, "rb").read()
    bad.write_bytes({"truncate": lambda: data[: len(data) // 2], "garbage": lambda: b"not a zip file" * 50,
                     "empty": lambda: b"", "huge": _huge_claim}[damage]())
    run = train.Run(_config(tmp_path), folder=str(tmp_path), progress=False)
    before = _snapshot(run.model)
    with pytest.raises(train.CheckpointError, match="checkpoint.npz"):
        run.load_checkpoint(str(bad))
    assert all(np.array_equal(before[k], v) for k, v in _snapshot(run.model).items())


def test_checkpoint_of_another_architecture_is_refused(tmp_path, finished_run):
    run = train.Run(_config(tmp_path, model="resnet20"), folder=str(tmp_path), progress=False)
    before = _snapshot(run.model)
    with pytest.raises(train.CheckpointError, match="tiny_resnet8"):
        run.load_checkpoint(os.path.join(finished_run.folder, "checkpoint.npz"))
    assert all(np.array_equal(before[k], v) for k, v in _snapshot(run.model).items())


def test_checkpoint_write_is_atomic(tmp_path, finished_run, monkeypatch):
    run = train.Run(_config(tmp_path), folder=str(tmp_path), progress=False)
    run.save_checkpoint()
    path = tmp_path / "checkpoint.npz"
    good = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", crash)
    run.epoch = 7
    with pytest.raises(OSError, match="simulated"):
        run.save_checkpoint()
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def _cli(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_eval_prints_loss_and_accuracy(finished_run, capsys):
    code, out, _ = _cli(["eval", finished_run.folder], capsys)
    acc = finished_run.history[-1]["test_acc"]
    assert code == 0 and f"accuracy {100 * acc:.2f}%" in out and out.startswith("digits test set")


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "resnet21"], "unknown model 'resnet21'"),
    (["train", "--data", "imagenet"], "unknown dataset 'imagenet'"),
    (["eval", "/nonexistent/run"], "no checkpoint at /nonexistent/run"),
])
def test_cli_bad_input_is_one_clear_line(args, message, capsys):
    code, out, err = _cli(args, capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_missing_data_folder(tmp_path, capsys):
    """A download that fails (no network here) is a failure, exit status 1, with its whole message."""
    code, _, err = _cli(["train", "--data", "mnist", "--data-root", str(tmp_path / "nowhere"), "--quiet",
                         "--out", str(tmp_path / "runs")], capsys)
    assert code == 1 and "nowhere" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_unwritable_output_folder_message(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "makedirs", refuse)
    with pytest.raises(OSError, match="cannot write the run folder .*Permission denied"):
        train.Run(_config(tmp_path), progress=False)


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "minires.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("train", "eval", "experiment", "summary", "models", "convert", "bench", "exercises"):
        assert command in out.stdout


# ---------------------------------------------------------------- nothing is lost


def test_divergence_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run = train.Run(_config(tmp_path, epochs=3), progress=False)
    run.fit(log=_quiet, until=1)
    checkpoint = (tmp_path / os.path.basename(run.folder) / "checkpoint.npz").read_bytes()
    metrics = open(os.path.join(run.folder, "metrics.csv")).read()
    for group in run.optimizer.param_groups:  # as if --lr had been far too high from epoch 2 on
        group["initial_lr"] = 1e8
    with pytest.raises(train.TrainingDiverged, match=r"in epoch 2, step \d+ of 12: .*--lr.*after epoch 1"):
        run.fit(log=_quiet)
    assert open(os.path.join(run.folder, "checkpoint.npz"), "rb").read() == checkpoint
    assert open(os.path.join(run.folder, "metrics.csv")).read() == metrics
    assert "model.npz" not in os.listdir(run.folder) and run.epoch == 1


def test_non_finite_weights_are_never_written(tmp_path, finished_run):
    run = train.Run(_config(tmp_path), folder=str(tmp_path), progress=False)
    run.save_checkpoint()
    good = (tmp_path / "checkpoint.npz").read_bytes()
    run.model.fc.weight.data[0, 0] = np.nan
    with pytest.raises(train.TrainingDiverged, match="fc.weight"):
        run.save_checkpoint()
    assert (tmp_path / "checkpoint.npz").read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_a_malformed_history_entry_leaves_the_metrics_as_they_were(tmp_path, finished_run):
    folder = tmp_path / "run"
    shutil.copytree(finished_run.folder, folder)
    run = train.Run(_config(tmp_path), folder=str(folder), progress=False)
    run.load_checkpoint(str(folder / "checkpoint.npz"))
    before = {name: (folder / name).read_bytes() for name in ("metrics.csv", "metrics.json", "curves.png")}
    run.history.append({"epoch": 3, "train_loss": 0.1, "bogus": 1.0})
    with pytest.raises(ValueError):
        run.write_metrics()
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert [p.name for p in folder.iterdir() if p.name.startswith(".tmp")] == []


def test_resume_removes_what_a_crash_left_half_written(tmp_path):
    first = train.Run(_config(tmp_path), progress=False)
    first.fit(log=_quiet, until=1)
    leftovers = [".tmp-checkpoint.npz-k2j4h1", ".tmp-metrics.csv-x8", ".tmp-model.npz-0", "curves.png.tmp"]
    for name in leftovers + ["notes.txt", ".tmp-not-ours"]:
        open(os.path.join(first.folder, name), "w").write("partial")
    train.train(resume=first.folder, progress=False, log=_quiet)
    left = set(os.listdir(first.folder))
    assert not left & set(leftovers) and {"notes.txt", ".tmp-not-ours", "model.npz"} <= left


def test_resume_accepts_the_options_the_run_already_has(tmp_path):
    first = train.Run(_config(tmp_path), progress=False)
    first.fit(log=_quiet, until=1)
    run = train.train(resume=first.folder, progress=False, log=_quiet, lr=0.1, batch_size=128, epochs=2)
    assert run.epoch == 2 and json.load(open(os.path.join(first.folder, "config.json")))["epochs"] == 2


FLAT = "tiny_1x1_bn"  # its batch norm sees 1x1 features: a batch of one image cannot be normalised in training
models.register(lambda in_channels=1, num_classes=10: minires.nn.Sequential(
    minires.nn.Conv2d(in_channels, 4, 8), minires.nn.BatchNorm2d(4), minires.nn.ReLU(), minires.nn.Flatten(),
    minires.nn.Linear(4, num_classes)), FLAT)


def test_the_training_loader_never_hands_batch_norm_a_batch_of_one(tmp_path):
    # 1,437 training digits = 2 x 718 + 1: without drop_last the third batch holds one image
    model = models.get(FLAT)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(minires.randn(1, 1, 8, 8))
    run = train.train(_config(tmp_path, model=FLAT, batch_size=718, epochs=1), progress=False, log=_quiet)
    assert run.train_loader.drop_last and len(run.train_loader) == 2
    default = train.Run(_config(tmp_path, batch_size=64), folder=str(tmp_path / "default"), progress=False)
    assert not default.train_loader.drop_last and len(default.train_loader) == 23  # 22 x 64 + 29: all kept
