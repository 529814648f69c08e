"""Tensors, models, checkpoints and training on a GPU, for real: every test here needs CuPy and a GPU.

Without one the whole module skips (``minires.cuda.is_available()`` is False); the
kernels' own GPU tests are in ``test_kernels.py`` (CuPy and Numba CUDA on a GPU)
and ``test_kernels_cudasim.py`` (Numba CUDA under the simulator). What is checked
here is what the kernel tests cannot see: moving tensors and modules between
devices, gradients across a move, the mixed-device error, a whole network's
forward and backward on each GPU backend against the NumPy reference on the
host, checkpoints written from the GPU, and ``minires train --device cuda``.
"""
import csv
import os

import numpy as np
import pytest

import minires
import minires.functional as F
from minires import cli, kernels, models

pytestmark = pytest.mark.skipif(not minires.cuda.is_available(), reason="needs CuPy and a GPU")

GPU_BACKENDS = ["cupy", "numba-cuda"]


@pytest.fixture(params=GPU_BACKENDS)
def gpu_backend(request):
    if not kernels.available(request.param):
        pytest.skip(f"kernel backend {request.param!r} is not available here")
    kernels.use(request.param)
    yield request.param
    kernels.reset()


def test_to_cuda_and_back_keeps_values_dtype_and_shape():
    import cupy
    host = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    x = minires.tensor(host)
    on_gpu = x.to("cuda")
    assert on_gpu.device == "cuda" and isinstance(on_gpu.data, cupy.ndarray)
    assert on_gpu.shape == x.shape and on_gpu.dtype == np.float32
    back = on_gpu.to("cpu")
    assert back.device == "cpu" and isinstance(back.data, np.ndarray)
    np.testing.assert_array_equal(back.numpy(), host)
    assert "device='cuda'" in repr(on_gpu)


def test_gradient_flows_back_across_a_move():
    rng = np.random.default_rng(1)
    a, r = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    x = minires.tensor(a, requires_grad=True)
    y = (x.to("cuda") * 3.0).to("cpu")
    (y * minires.tensor(r)).sum().backward()
    assert x.grad.device == "cpu"
    np.testing.assert_allclose(x.grad.numpy(), 3.0 * r, rtol=1e-6)


def test_mixed_devices_are_refused_with_both_shapes():
    x = minires.randn(2, 3, 8, 8)
    w = minires.randn(4, 3, 3, 3).to("cuda")
    with pytest.raises(RuntimeError, match="different devices") as info:
        F.conv2d(x, w, padding=1)
    assert "(2, 3, 8, 8)" in str(info.value) and "(4, 3, 3, 3)" in str(info.value)


def _every_op(x, w, e, labels):
    """A scalar through most of the ops the engine has (not the convolutions: the resnet test covers those)."""
    h = (x ** e).sqrt().log().exp() / 3.0 - x.mean(axis=1, keepdims=True)
    h = h[:, 4:].reshape(4, 3, 2, 2).permute(0, 2, 3, 1).flatten(1)
    h = F.concat([h, (h * 2.0).max(axis=1, keepdims=True)], dim=1)
    logits = F.relu(h) @ w
    pooled = F.max_pool2d(x.reshape(4, 1, 4, 4) + 1.0, 2).sum() + F.avg_pool2d(x.reshape(4, 1, 4, 4), 2).sum()
    return F.cross_entropy(logits, labels) + F.softmax(logits, dim=1).sum() * 0.1 + pooled * 0.01


def test_the_ops_on_the_gpu_match_the_host():
    """Values and gradients of _every_op on both devices; the labels reach the GPU as a bare CuPy array."""
    import cupy
    rng = np.random.default_rng(4)
    arrays = {"x": rng.uniform(0.5, 2.0, (4, 16)), "w": rng.standard_normal((13, 5)),
              "e": rng.uniform(0.5, 1.5, (1, 16))}
    labels = rng.integers(0, 5, 4)
    results = {}
    for device in ("cpu", "cuda"):
        leaves = {k: minires.tensor(a.astype(np.float32)).to(device).detach().requires_grad_()
                  for k, a in arrays.items()}
        target = cupy.asarray(labels) if device == "cuda" else labels
        loss = _every_op(leaves["x"], leaves["w"], leaves["e"], target)
        loss.backward()
        assert loss.device == device and all(t.grad.device == device for t in leaves.values())
        results[device] = (loss.item(), {k: t.grad.numpy() for k, t in leaves.items()})
    (host_loss, host_grads), (gpu_loss, gpu_grads) = results["cpu"], results["cuda"]
    assert gpu_loss == pytest.approx(host_loss, rel=1e-5)
    for k in arrays:
        np.testing.assert_allclose(gpu_grads[k], host_grads[k], rtol=1e-4, atol=1e-5, err_msg=f"gradient of {k}")


def _resnet_step(model, x, labels):
    loss = F.cross_entropy(model(x), labels)
    model.zero_grad()
    loss.backward()
    return float(loss.item()), {name: p.grad.numpy() for name, p in model.named_parameters()}


def test_a_resnet_step_on_the_gpu_matches_the_host(gpu_backend):
    """resnet20's loss and every parameter gradient on the GPU backend equal the NumPy reference's on the host."""
    rng = np.random.default_rng(2)
    images = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    classes = rng.integers(0, 10, 8)
    minires.manual_seed(0)
    host_model = models.get("resnet20")
    gpu_model = models.get("resnet20")
    gpu_model.load_state_dict(host_model.state_dict())
    gpu_model.to("cuda")
    assert all(p.device == "cuda" for p in gpu_model.parameters())

    host_loss, host_grads = _resnet_step(host_model, minires.tensor(images), minires.tensor(classes))
    gpu_loss, gpu_grads = _resnet_step(gpu_model, minires.tensor(images).to("cuda"),
                                       minires.tensor(classes).to("cuda"))
    assert gpu_loss == pytest.approx(host_loss, rel=1e-4)
    assert gpu_grads.keys() == host_grads.keys()
    for name in host_grads:
        scale = np.abs(host_grads[name]).max() + 1e-12
        np.testing.assert_allclose(gpu_grads[name] / scale, host_grads[name] / scale, rtol=0, atol=1e-3,
                                   err_msg=f"{gpu_backend}: gradient of {name}")
    # the running statistics moved the same way on both devices
    for (name, a), (_, b) in zip(host_model.state_dict().items(), gpu_model.state_dict().items()):
        if "running" in name:
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_checkpoint_written_from_the_gpu_holds_host_arrays_and_loads_on_either_device(tmp_path):
    minires.manual_seed(3)
    gpu_model = models.get("resnet20").to("cuda")
    path = minires.save(gpu_model, str(tmp_path / "model.npz"))
    saved = minires.load(path)
    assert all(isinstance(a, np.ndarray) for a in saved.values())
    on_host = models.get("resnet20")
    on_host.load_state_dict(saved)
    on_gpu = models.get("resnet20").to("cuda")
    on_gpu.load_state_dict(saved)
    for (name, a), (_, b), (_, c) in zip(gpu_model.state_dict().items(), on_host.state_dict().items(),
                                         on_gpu.state_dict().items()):
        assert b.device == "cpu" and c.device == "cuda", name
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=name)
        np.testing.assert_array_equal(c.numpy(), a.numpy(), err_msg=name)


def test_minires_train_on_the_gpu_learns_the_digits(tmp_path):
    assert cli.main(["train", "--device", "cuda", "--epochs", "3", "--out", str(tmp_path), "--quiet"]) == 0
    (folder,) = [tmp_path / d for d in os.listdir(tmp_path)]
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["test_acc"]) > 0.5, "three epochs of resnet20 should be far above chance (10%)"
    # the checkpoint it wrote from the GPU resumes on the host
    host_model = models.get("resnet20", in_channels=1, num_classes=10)
    host_model.load_state_dict(minires.load(str(folder / "model.npz")))
