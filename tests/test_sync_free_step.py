"""A training step never waits for the GPU: no value of a device array is read on the host inside a step.

Reading a GPU array (``.item()``, ``int()``, ``float()``, ``bool()``, a copy to
the host) makes the host wait until the GPU has finished everything queued.
Four such reads per step used to be there: two in ``cross_entropy``'s label
check, ``loss.item()`` and ``int(correct)`` in the training loop. Without a GPU
this is tested with ``DeviceArray``: NumPy arithmetic behind the array
protocols, which logs every host read and where it happened. The loop runs
epochs of 2 and of 7 steps on a linear model: the reads must not grow with the
steps, and come only from the loop's once-an-epoch read (``_read``), the
label check it triggers (``check_labels``) and the end-of-epoch weight check.
"""
import sys
import types

import numpy as np
import pytest

import minires
import minires.functional as F

from minires import nn, optim
from minires.train import loop

tensor_module = sys.modules["minires.tensor"]  # (minires.tensor is also the function that makes one)

READS = []  # (what, the function that asked) for every host read of a DeviceArray


def _unwrap(v):
    if isinstance(v, DeviceArray):
        return v.a
    if isinstance(v, (tuple, list)):
        return type(v)(_unwrap(x) for x in v)
    if isinstance(v, dict):
        return {k: _unwrap(x) for k, x in v.items()}
    return v


def _wrap(v):
    if isinstance(v, (np.ndarray, np.generic)):
        return DeviceArray(np.asarray(v))
    if isinstance(v, tuple):
        return tuple(_wrap(x) for x in v)
    return v


class DeviceArray(np.lib.mixins.NDArrayOperatorsMixin):
    """A NumPy array posing as a GPU array: arithmetic stays "on the device"; each host read is logged."""

    def __init__(self, a):
        self.a = np.asarray(a)

    def _read(self, what):
        READS.append((what, sys._getframe(2).f_code.co_name))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        if out:
            kwargs["out"] = _unwrap(out)
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        return out[0] if out and len(out) == 1 else _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __array__(self, dtype=None, copy=None):
        self._read("np.asarray")
        return self.a if dtype is None else self.a.astype(dtype)

    shape = property(lambda self: self.a.shape)
    dtype = property(lambda self: self.a.dtype)
    size = property(lambda self: self.a.size)
    ndim = property(lambda self: self.a.ndim)
    T = property(lambda self: DeviceArray(self.a.T))
    base = None

    def __len__(self):
        return len(self.a)

    def __getitem__(self, index):
        return _wrap(self.a[_unwrap(index)])

    def __setitem__(self, index, value):
        self.a[_unwrap(index)] = _unwrap(value)

    def __getattr__(self, name):  # methods: sum, max, argmax, astype, reshape, copy ...
        attr = getattr(self.a, name)
        return (lambda *a, **k: _wrap(attr(*_unwrap(a), **_unwrap(k)))) if callable(attr) else attr

    def item(self):
        self._read("item")
        return self.a.item()

    def __float__(self):
        self._read("float")
        return float(self.a)

    def __int__(self):
        self._read("int")
        return int(self.a)

    def __bool__(self):
        self._read("bool")
        return bool(self.a)

    def __index__(self):
        self._read("index")
        return int(self.a)

    def tolist(self):
        self._read("tolist")
        return self.a.tolist()


@pytest.fixture
def device_arrays(monkeypatch):
    """Tensors keep DeviceArrays as they are (a real Tensor would copy anything but NumPy or CuPy)."""
    real = tensor_module._as_array
    monkeypatch.setattr(tensor_module, "_as_array",
                        lambda data, dtype=None, op="tensor": data if isinstance(data, DeviceArray) and dtype is None
                        else real(data, dtype, op))
    real_is_array = tensor_module._is_array
    monkeypatch.setattr(tensor_module, "_is_array", lambda data: isinstance(data, DeviceArray) or real_is_array(data))
    READS.clear()
    yield READS
    F._pending_labels.clear()


def _batches(rng, steps, classes=3, bad_step=None):
    batches = []
    for step in range(1, steps + 1):
        labels = rng.integers(0, classes, 8)
        if step == bad_step:
            labels[3] = classes + 4
        batches.append((minires.Tensor(DeviceArray(rng.standard_normal((8, 5)).astype(np.float32))),
                        minires.Tensor(DeviceArray(labels))))
    return batches


def _run(batches, momentum=0.9):
    """A loop.Run around a linear model whose weights are DeviceArrays, without data, folder or ranks."""
    minires.manual_seed(0)
    model = nn.Linear(5, 3)
    for p in model.parameters():
        p.data = DeviceArray(p.data.copy())
    run = loop.Run.__new__(loop.Run)
    run.model, run.ddp, run.world, run.rank, run.progress, run.epoch = model, None, 1, 0, False, 0
    run.train_loader, run.folder = batches, "nowhere"
    run.config = types.SimpleNamespace(epochs=1, lr=0.1, weight_decay=1e-4)
    run.optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=1e-4, nesterov=True)
    run.scheduler = optim.CosineAnnealingLR(run.optimizer, T_max=10)
    return run


def test_cross_entropy_reads_nothing_from_device_labels(device_arrays):
    rng = np.random.default_rng(0)
    logits = minires.Tensor(DeviceArray(rng.standard_normal((6, 4)).astype(np.float32)), requires_grad=True)
    labels = DeviceArray(np.array([0, 3, 1, 2, 2, 0]))
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    assert device_arrays == [], f"host reads inside cross_entropy: {device_arrays}"
    F.check_labels()  # reads the pending check: fine
    assert device_arrays and {where for _, where in device_arrays} == {"check_labels"}
    want = F.cross_entropy(minires.tensor(logits.data.a), minires.tensor(labels.a))
    assert float(loss.data.a) == pytest.approx(want.item())


def test_device_labels_out_of_range_poison_the_loss_and_raise_when_checked(device_arrays):
    logits = minires.Tensor(DeviceArray(np.zeros((3, 4), np.float32)), requires_grad=True)
    loss = F.cross_entropy(logits, DeviceArray(np.array([0, 9, 1])))
    loss.backward()
    assert np.isnan(loss.data.a) and np.isnan(logits.grad.data.a).all()  # never a wrapped-around label
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got min 0 and max 9"):
        F.check_labels()
    F.check_labels()  # read once: nothing is left pending


def test_host_labels_are_still_checked_at_once():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got min -1 and max 2"):
        F.cross_entropy(minires.zeros(3, 4), np.array([0, -1, 2]))
    assert not F._pending_labels


def test_a_training_epoch_reads_the_device_once_not_once_a_step(device_arrays):
    rng = np.random.default_rng(1)
    counts = []
    for steps in (2, 7):
        device_arrays.clear()
        run = _run(_batches(rng, steps))
        loss, accuracy, _ = run._train_epoch()
        assert 0 < loss < 10 and 0 <= accuracy <= 1
        counts.append(len(device_arrays))
        places = {where for _, where in device_arrays}
        assert places <= {"_read", "check_labels", "non_finite"}, f"host reads inside a step: {device_arrays}"
    assert counts[0] == counts[1], f"host reads grow with the steps: {counts}"


def test_the_epochs_numbers_equal_those_of_host_arrays(device_arrays):
    rng = np.random.default_rng(2)
    batches = _batches(rng, 4)
    on_device = _run(batches)._train_epoch()
    host = [(minires.tensor(x.data.a), minires.tensor(y.data.a)) for x, y in batches]
    run = _run(host)
    for p in run.model.parameters():
        p.data = p.data.a.copy()
    on_host = run._train_epoch()
    assert on_device[:2] == pytest.approx(on_host[:2], rel=1e-6)


def test_bad_device_labels_stop_the_epoch_at_its_read(device_arrays):
    run = _run(_batches(np.random.default_rng(3), 5, bad_step=2))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got min 0 and max 7"):
        run._train_epoch()
