"""Modules: registration, modes, state dicts, initialisation, errors labelled by layer."""
import numpy as np
import pytest

import minires
import minires.functional as F
from minires import nn


class Block(nn.Module):
    def __init__(self, cin=3, cout=4):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn1(self.conv1(x)))


def small_net():
    return nn.Sequential(Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


def test_registration_and_traversal():
    net = small_net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.conv1.weight", "0.bn1.weight", "0.bn1.bias", "3.weight", "3.bias"]
    assert [n for n, _ in net.named_buffers()] == [
        "0.bn1.running_mean", "0.bn1.running_var", "0.bn1.num_batches_tracked"]
    assert [type(m).__name__ for m in net.children()] == ["Block", "AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert [n for n, _ in net.named_modules()] == ["", "0", "0.conv1", "0.bn1", "0.relu", "1", "2", "3"]
    assert net.get_submodule("0.bn1") is net[0].bn1 and net.get_submodule("") is net
    with pytest.raises(AttributeError, match=r"0 \(Block\) has no submodule 'bn2'; it has conv1, bn1, relu"):
        net.get_submodule("0.bn2")
    assert net.num_parameters() == 4 * 3 * 9 + 4 + 4 + 5 * 4 + 5
    # a plain attribute is not a parameter, reassigning None removes one from the count
    net[0].scale = 3.0
    assert "scale" not in dict(net.named_parameters())
    net[3].bias = None
    assert "3.bias" not in dict(net.named_parameters())


def test_shared_parameter_is_counted_once():
    lin = nn.Linear(3, 3)
    net = nn.Sequential(lin, lin)
    assert len(list(net.parameters())) == 2


def test_train_eval_propagate():
    net = small_net()
    net.eval()
    assert all(not m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_batchnorm_module_updates_buffers_only_in_training():
    rng = np.random.default_rng(0)
    bn = nn.BatchNorm2d(3)
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32) * 2 + 1
    bn(minires.tensor(x))
    assert int(bn.num_batches_tracked.item()) == 1
    expected_mean = 0.1 * x.mean(axis=(0, 2, 3))
    expected_var = 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(bn.running_mean.numpy(), expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), expected_var, rtol=1e-5)
    bn.eval()
    y = bn(minires.tensor(x)).numpy()
    assert int(bn.num_batches_tracked.item()) == 1
    np.testing.assert_allclose(bn.running_mean.numpy(), expected_mean, rtol=1e-5, atol=1e-6)
    by_hand = (x - expected_mean[None, :, None, None]) / np.sqrt(expected_var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, by_hand, rtol=1e-4, atol=1e-5)


def test_state_dict_roundtrip_through_npz(tmp_path):
    minires.manual_seed(1)
    a = small_net()
    a(minires.randn(2, 3, 6, 6))  # move the running statistics away from their start
    minires.manual_seed(2)
    b = small_net()
    path = tmp_path / "weights.npz"
    np.savez(path, **{k: v.numpy() for k, v in a.state_dict().items()})
    result = b.load_state_dict(np.load(path))
    assert result.missing_keys == [] and result.unexpected_keys == []
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        assert va.dtype == vb.dtype
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    x = minires.randn(2, 3, 6, 6)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())


def test_state_dict_values_are_copied_on_load():
    a, b = small_net(), small_net()
    state = {k: v.numpy().copy() for k, v in a.state_dict().items()}
    b.load_state_dict(state)
    state["3.bias"][:] = 123.0
    assert not np.any(b[3].bias.numpy() == 123.0)


def _snapshot(net):
    return {k: v.numpy().copy() for k, v in net.state_dict().items()}


def test_load_state_dict_reports_every_problem_and_changes_nothing():
    net = small_net()
    before = _snapshot(net)
    bad = {k: np.zeros_like(v) for k, v in before.items()}
    bad["0.conv1.weight"] = np.zeros((4, 3, 1, 1), dtype=np.float32)  # wrong shape
    del bad["3.bias"]                                                  # missing
    bad["extra.weight"] = np.ones(2)                                    # unexpected
    with pytest.raises(nn.StateDictError) as info:
        net.load_state_dict(bad)
    message = str(info.value)
    assert "3.bias" in message and "extra.weight" in message
    assert "0.conv1.weight" in message and "(4, 3, 1, 1)" in message and "(4, 3, 3, 3)" in message
    after = _snapshot(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_load_state_dict_non_strict_reports_but_loads():
    net = small_net()
    state = {k: np.full(v.shape, 0.5, dtype=v.dtype) for k, v in _snapshot(net).items()}
    del state["3.bias"]
    state["extra"] = np.ones(1)
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["3.bias"] and result.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(net[3].weight.numpy(), 0.5)


def test_wrong_shape_fails_even_when_not_strict():
    net = small_net()
    before = _snapshot(net)
    state = dict(before)
    state["3.weight"] = np.zeros((5, 5), dtype=np.float32)
    with pytest.raises(nn.StateDictError):
        net.load_state_dict(state, strict=False)
    assert all(np.array_equal(before[k], v) for k, v in _snapshot(net).items())


def test_repr_reads_like_pytorch():
    text = repr(small_net())
    assert text.startswith("Sequential(\n  (0): Block(\n    (conv1): Conv2d(3, 4, kernel_size=(3, 3)")
    assert "bias=False" in text
    assert "(3): Linear(in_features=4, out_features=5, bias=True)" in text


def test_conv_init_is_kaiming_normal_fan_out():
    minires.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3)
    w = conv.weight.numpy()
    assert w.dtype == np.float32
    expected_std = np.sqrt(2.0 / (128 * 9))
    assert abs(w.std() - expected_std) / expected_std < 0.02
    assert abs(w.mean()) < 0.05 * expected_std * 10
    np.testing.assert_array_equal(conv.bias.numpy(), 0)


def test_linear_init_bounds_and_seed_reproducibility():
    minires.manual_seed(3)
    a = nn.Linear(100, 20)
    minires.manual_seed(3)
    b = nn.Linear(100, 20)
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    bound = 1 / np.sqrt(100)
    assert np.abs(a.weight.numpy()).max() <= bound and np.abs(a.weight.numpy()).max() > 0.9 * bound


def test_error_names_the_layer_and_its_path():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = nn.Sequential(Block(3, 4), Block(4, 4))

        def forward(self, x):
            return self.layer1(x)

    with pytest.raises(minires.ShapeError) as info:
        Net()(minires.randn(8, 1, 32, 32))
    assert str(info.value) == ("Conv2d(layer1.0.conv1): expected 3 input channels, got 1 "
                               "(input shape (8, 1, 32, 32), weight shape (4, 3, 3, 3))")
    with pytest.raises(minires.ShapeError, match=r"^BatchNorm2d\(bn\): expected 3 channels, got 4"):
        holder = nn.Module()
        holder.bn = nn.BatchNorm2d(3)
        holder.bn(minires.randn(2, 4, 3, 3))


def test_integer_input_to_a_layer_is_a_clear_error():
    with pytest.raises(minires.DTypeError, match="Conv2d.*floating-point.*int64"):
        nn.Conv2d(1, 1, 3)(minires.tensor(np.zeros((1, 1, 4, 4), dtype=np.int64)))


def test_module_gradcheck_in_double():
    minires.manual_seed(4)
    net = small_net().double()
    assert all(p.dtype == np.float64 for p in net.parameters())
    x = minires.tensor(np.random.default_rng(0).standard_normal((3, 3, 4, 4)), requires_grad=True)
    params = list(net.parameters())

    def run(x, *weights):
        return net(x)

    minires.gradcheck(run, [x] + params, atol=1e-6, rtol=1e-4)


def test_forward_hook_sees_output_and_can_be_removed():
    seen = []
    lin = nn.Linear(2, 2)
    handle = lin.register_forward_hook(lambda m, inputs, out: seen.append(out.shape))
    lin(minires.randn(3, 2))
    handle.remove()
    lin(minires.randn(3, 2))
    assert seen == [(3, 2)]


def test_sequential_indexing_and_slicing():
    net = small_net()
    assert isinstance(net[-1], nn.Linear)
    head = net[1:]
    assert len(head) == 3 and head[0] is net[1]


def test_modules_match_torch():
    torch = pytest.importorskip("torch")
    minires.manual_seed(5)
    ours = small_net()
    theirs = torch.nn.Sequential(
        torch.nn.Sequential(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5))
    theirs[0].conv1 = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    theirs[0].bn1 = torch.nn.BatchNorm2d(4)
    theirs[0].relu = torch.nn.ReLU()
    theirs.load_state_dict({k: torch.from_numpy(v.numpy().copy()) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((4, 3, 6, 6)).astype(np.float32)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(theirs, mode)()
        xo = minires.tensor(x, requires_grad=True)
        xt = torch.tensor(x, requires_grad=True)
        yo, yt = ours(xo), theirs(xt)
        np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), rtol=1e-4, atol=1e-5)
        r = np.random.default_rng(2).standard_normal(yo.shape).astype(np.float32)
        (yo * minires.tensor(r)).sum().backward()
        (yt * torch.tensor(r)).sum().backward()
        np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
        for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
            p.grad, q.grad = None, None
    their_state = theirs.state_dict()
    for k, v in ours.state_dict().items():
        np.testing.assert_allclose(v.numpy(), their_state[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
