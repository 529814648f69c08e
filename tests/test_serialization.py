"""Weights as .npz: exact round trips, atomic writes, refusing bad files, converting PyTorch checkpoints."""
import os
import pickle

import numpy as np
import pytest

import minires
from minires import cli, serialization
from minires.models import resnet20


def _trained_state(model, rng):
    """Give every parameter and buffer distinctive values, so a round trip that drops or mixes any shows."""
    for name, t in model._state_items():
        if name.endswith("running_var"):
            t.data = rng.uniform(0.5, 2.0, t.shape).astype(t.data.dtype)
        elif t.data.dtype.kind == "f":
            t.data = rng.standard_normal(t.shape).astype(t.data.dtype)
        else:
            t.data = np.array(rng.integers(1, 1000), dtype=t.data.dtype)
    return model


def test_round_trip_is_bytes_identical(tmp_path, rng):
    model = _trained_state(resnet20(), rng)
    path = tmp_path / "w.npz"
    assert serialization.save(model, path) == os.fspath(path)
    loaded = serialization.load(path)
    state = model.state_dict()
    assert list(loaded) == list(state)  # every key, in the model's order
    for key, t in state.items():
        assert loaded[key].dtype == t.data.dtype, key
        assert loaded[key].shape == t.data.shape, key
        assert loaded[key].tobytes() == t.data.tobytes(), key
    assert loaded["bn1.num_batches_tracked"].dtype == np.int64
    assert loaded["bn1.num_batches_tracked"].shape == ()
    # a plain NumPy reader sees the same archive
    with np.load(path) as npz:
        assert npz.files == list(state)


def test_save_accepts_modules_tensor_dicts_and_array_dicts(tmp_path, rng):
    arrays = {"a": rng.standard_normal((2, 3)).astype(np.float32), "b.c": np.arange(4, dtype=np.int32),
              "optim/0/step": np.array(7, dtype=np.int64), "h": np.float16([1.5, -2])}
    for i, obj in enumerate((arrays, {k: minires.tensor(v) for k, v in arrays.items()})):
        serialization.save(obj, tmp_path / f"{i}.npz")
        loaded = serialization.load(tmp_path / f"{i}.npz")
        assert list(loaded) == list(arrays)
        for k, v in arrays.items():
            assert loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v)
    with pytest.raises(TypeError, match="numeric"):
        serialization.save({"x": np.array([object()])}, tmp_path / "obj.npz")
    with pytest.raises(ValueError, match="'file' cannot be a key"):
        serialization.save({"file": np.zeros(1)}, tmp_path / "reserved.npz")
    with pytest.raises(TypeError, match="Module or a mapping"):
        serialization.save([1, 2], tmp_path / "list.npz")


def test_load_state_dict_from_a_saved_file(tmp_path, rng):
    source = _trained_state(resnet20(), rng).eval()
    serialization.save(source, tmp_path / "w.npz")
    target = resnet20().eval()
    x = minires.randn(2, 3, 16, 16, rng=rng)
    assert not np.allclose(target(x).numpy(), source(x).numpy())
    target.load_state_dict(serialization.load(tmp_path / "w.npz"))
    np.testing.assert_array_equal(target(x).numpy(), source(x).numpy())
    assert target.bn1.num_batches_tracked.data.dtype == np.int64
    assert int(target.bn1.num_batches_tracked.data) == int(source.bn1.num_batches_tracked.data)
    # exported at the top level too
    assert minires.save is serialization.save and minires.load is serialization.load


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    serialization.save({"a": np.arange(3.0)}, path)
    before = path.read_bytes()
    real = np.lib.format.write_array
    calls = []

    def write_then_fail(f, array, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first member is already written: a half-finished archive
            raise OSError("disk full")
        return real(f, array, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        serialization.save({"a": np.zeros(1000), "b": np.ones(1000)}, path)
    assert len(calls) == 2
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    serialization.save({"a": np.arange(3.0)}, path)
    before = path.read_bytes()

    def refuse(src, dst):
        raise PermissionError("read-only")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        serialization.save({"a": np.zeros(5)}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]


def test_save_into_a_missing_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        serialization.save({"a": np.zeros(1)}, tmp_path / "nope" / "w.npz")


class _Payload:
    """Pickles to a call of os.mkdir: loading it with pickle allowed would create a folder."""

    def __init__(self, folder):
        self.folder = folder

    def __reduce__(self):
        return os.mkdir, (self.folder,)


def _bad_files(tmp_path):
    good = tmp_path / "good.npz"
    serialization.save({"a": np.arange(10_000.0)}, good)
    data = good.read_bytes()
    files = {
        "pickled.npz": pickle.dumps({"a": _Payload(str(tmp_path / "unpickled"))}),
        "garbage.npz": b"this is not an archive" * 10,
        "empty.npz": b"",
        "truncated.npz": data[: len(data) // 2],
    }
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF  # inside the array's bytes: the zip CRC check fails
    files["corrupt.npz"] = bytes(corrupt)
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    np.save(tmp_path / "single.npy", np.zeros(3))
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    return [*files, "single.npy", "objects.npz"]


def test_load_rejects_what_is_not_an_npz_of_arrays(tmp_path):
    for name in _bad_files(tmp_path):
        path = tmp_path / name
        with pytest.raises(serialization.SerializationError) as info:
            serialization.load(path)
        assert str(path) in str(info.value), name  # the message names the file
        assert ".npz" in str(info.value)
    assert not (tmp_path / "unpickled").exists()  # nothing was unpickled
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        serialization.load(tmp_path / "missing.npz")


# ---------------------------------------------------------------- PyTorch checkpoints

class NotAllowed:
    """An arbitrary class: ``torch.load(weights_only=True)`` must refuse to build it."""

def _torch_state(torch):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2))
    net[1].running_mean.normal_()
    net[1].num_batches_tracked.fill_(5)
    return net.state_dict()


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "dataparallel"])
def test_convert_torch_checkpoint(tmp_path, torch, wrap):
    state = _torch_state(torch)
    if wrap == "raw":
        saved = state
    elif wrap == "dataparallel":
        saved = {"module." + k: v for k, v in state.items()}
    else:
        saved = {wrap: state, "epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}}
    torch.save(saved, tmp_path / "w.pth")
    count = serialization.convert_torch_checkpoint(tmp_path / "w.pth", tmp_path / "w.npz")
    assert count == len(state) == 9  # conv 2, batch norm 5, linear 2
    loaded = serialization.load(tmp_path / "w.npz")
    assert list(loaded) == list(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.numpy().dtype, k
        assert loaded[k].tobytes() == v.numpy().tobytes(), k
    assert loaded["1.num_batches_tracked"].dtype == np.int64 and int(loaded["1.num_batches_tracked"]) == 5


def test_converted_checkpoint_loads_into_a_minires_model(tmp_path, torch, rng):
    ours = _trained_state(resnet20(), rng).eval()
    torch.save({k: torch.from_numpy(v.numpy().copy()) for k, v in ours.state_dict().items()},
               tmp_path / "w.pth")
    assert cli.main(["convert", str(tmp_path / "w.pth"), str(tmp_path / "w.npz")]) == 0
    fresh = resnet20().eval()
    fresh.load_state_dict(minires.load(tmp_path / "w.npz"))
    x = minires.randn(2, 3, 8, 8, rng=rng)
    np.testing.assert_array_equal(fresh(x).numpy(), ours(x).numpy())


def test_convert_refuses_bad_sources(tmp_path, torch, capsys):
    (tmp_path / "junk.pth").write_bytes(b"junk" * 20)
    with pytest.raises(serialization.SerializationError, match="junk.pth"):
        serialization.convert_torch_checkpoint(tmp_path / "junk.pth", tmp_path / "out.npz")
    torch.save({"w": torch.zeros(2), "obj": NotAllowed()}, tmp_path / "evil.pth")
    with pytest.raises(serialization.SerializationError, match="weights_only.*Unsupported global"):
        serialization.convert_torch_checkpoint(tmp_path / "evil.pth", tmp_path / "out.npz")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(serialization.SerializationError, match=r"no tensors \(its keys: 'epoch'\)"):
        serialization.convert_torch_checkpoint(tmp_path / "empty.pth", tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()
    # through the command line: a message and exit status 2, no traceback
    assert cli.main(["convert", str(tmp_path / "junk.pth"), str(tmp_path / "out.npz")]) == 2
    assert "junk.pth" in capsys.readouterr().err


def test_convert_without_torch_says_what_to_install(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(RuntimeError, match="pip install torch"):
        serialization.convert_torch_checkpoint(tmp_path / "w.pth", tmp_path / "w.npz")
